"""What our two diffusion generators share: checkpoint folders, device moves and the ``generate`` call.

``pixel-diffusion`` and ``latent-diffusion`` differ in their network and sampler only. Both keep a frozen
text encoder + tokenizer (demo: inside the checkpoint folder; full: the third-party source first) next to
their own weights, and answer ``generate`` the same way: shared input checks, one batch of one prompt,
a notice when the prompt was cut. A subclass provides ``from_folder`` (read its checkpoint strictly),
``native_size`` (the training resolution) and ``sample`` (run its sampler).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmdemo.interfaces import Generator, ProgressCallback
from mmdemo.models.diffusion.sampling import ResolvedRequest, resolve_request, with_notices
from mmdemo.models.diffusion.text import truncation_notice

if TYPE_CHECKING:
    from PIL import Image

    from mmdemo.registry import ModelSpec
    from mmdemo.weights import ResolvedWeights

TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"


class TextDiffusionGenerator(Generator):
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
        raise NotImplementedError

    def native_size(self) -> int:
        """The image side the model was trained at (other sizes are ignored with a notice)."""
        raise NotImplementedError

    def sample(
        self, request: ResolvedRequest, progress: ProgressCallback | None
    ) -> tuple[list[Any], list[bool]]:
        """(images, whether each prompt was truncated) for ``request.prompt``."""
        raise NotImplementedError

    def to(self, device: str) -> TextDiffusionGenerator:
        self.model.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str = "",
        preset: str = "fast",
        width: int | None = None,
        height: int | None = None,
        progress: ProgressCallback | None = None,
        **extra: Any,
    ) -> Image.Image:
        config = self.model.config
        request = resolve_request(
            self.spec.defaults,
            prompt=prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            negative_prompt=negative_prompt,
            preset=preset,
            width=width,
            height=height,
            native_size=self.native_size(),
            max_steps=config.num_train_timesteps,
            model_name=self.spec.display_name,
        )
        images, truncated = self.sample(request, progress)
        notices = list(request.notices)
        if truncated[0]:
            notices.append(truncation_notice(config.text_max_length))
        return with_notices(
            images[0], notices, seed=request.seed, steps=request.steps, guidance=request.guidance,
            preset=request.preset, weights=self.weights.label,
        )  # fmt: skip
