"""What our two diffusion generators share: checkpoint folders, device moves and the ``generate`` call.

``pixel-diffusion`` and ``latent-diffusion`` differ in their network and sampler only. Both keep a frozen
text encoder + tokenizer (demo: inside the checkpoint folder; full: the third-party source first) next to
their own weights, and sample a checked request the same way: one batch of one prompt, a notice when the
prompt was cut. A subclass provides ``from_folder`` (read its checkpoint strictly) and ``draw`` (run its
sampler).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmdemo.interfaces import GenerationRequest, GenerationResult, Generator, ProgressCallback
from mmdemo.models.diffusion.text import truncation_notice

if TYPE_CHECKING:
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

    def draw(
        self, request: GenerationRequest, progress: ProgressCallback | None
    ) -> tuple[list[Any], list[bool]]:
        """(images, whether each prompt was truncated) for ``request.prompt``."""
        raise NotImplementedError

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
