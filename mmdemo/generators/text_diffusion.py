"""What our two diffusion generators share: checkpoint folders, device moves and the ``generate`` call.

``pixel-diffusion`` and ``latent-diffusion`` differ in their network and sampler only. Both keep a frozen
text encoder + tokenizer (demo: inside the checkpoint folder; full: the third-party source first) next to
their own weights, and sample a checked request the same way: one batch of one prompt, a notice when the
prompt was cut. A subclass names its family's model class (a
:class:`~mmdemo.models.diffusion.text_to_image.TextToImageModel`: :mod:`mmdemo.models.diffusion.pixel`,
:mod:`~mmdemo.models.diffusion.latent`), which has its config class, reads its checkpoint and samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mmdemo.interfaces import GenerationRequest, GenerationResult, Generator, ProgressCallback
from mmdemo.models.diffusion.text import load_tokenizer, truncation_notice
from mmdemo.models.diffusion.text_to_image import TextToImageModel, sample_images

if TYPE_CHECKING:
    from mmdemo.registry import ModelSpec
    from mmdemo.weights import ResolvedWeights

TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"


class TextDiffusionGenerator(Generator):
    model_class: ClassVar[type[TextToImageModel]]

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, model: Any, tokenizer: Any, device: str):
        self.spec = spec
        self.weights = weights
        self.model = model
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def load(
        cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None
    ) -> TextDiffusionGenerator:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls.from_folder(
            spec, weights, weights["model"], weights["text_encoder"], weights["tokenizer"], device=device
        )

    @classmethod
    def from_folder(
        cls,
        spec: ModelSpec,
        weights: ResolvedWeights,
        own: Path,
        text_dir: Path,
        tokenizer_dir: Path,
        *,
        device: str,
    ) -> TextDiffusionGenerator:
        model = cls.model_class.read(own, text_dir)
        tokenizer = load_tokenizer(tokenizer_dir, model.config.text_max_length)
        return cls(spec, weights, model.to(device).eval(), tokenizer, device)

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> torch.nn.Module:
        with torch.device(device):
            return cls.model_class(cls.model_class.config_class.from_dict(config))

    def draw(
        self, request: GenerationRequest, progress: ProgressCallback | None
    ) -> tuple[list[Any], list[bool]]:
        """(images, whether each prompt was truncated) for ``request.prompt``."""
        images, truncated = sample_images(
            self.model, self.tokenizer, [request.prompt], request.negative_prompt, seed=request.seed,
            steps=request["steps"], guidance=request["guidance"], preset=request.preset, progress=progress,
            preview=request.preview, model_name=self.spec.id,
        )  # fmt: skip
        return images, truncated

    def to(self, device: str) -> TextDiffusionGenerator:
        self.model.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def sample(self, request: GenerationRequest, progress: ProgressCallback | None) -> GenerationResult:
        images, truncated = self.draw(request, progress)
        notices = [truncation_notice(self.model.config.text_max_length)] if truncated[0] else []
        settings = {"steps": request["steps"], "guidance": request["guidance"]}
        return GenerationResult(images[0], settings, notices)
