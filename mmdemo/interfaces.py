"""The two uniform interfaces every model implements, so the app and the scripts treat them alike.

A captioner turns a batch of RGB images into captions; a generator turns one prompt and one seed
into one image. Each family module subclasses one of these and is named in the registry; the app
never imports a family module directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from mmdemo.registry import ModelSpec
    from mmdemo.weights import ResolvedWeights

Preset = Literal["fast", "report"]
PRESETS: tuple[str, ...] = ("fast", "report")
# Called by generators as sampling advances: (steps done, steps in all).
ProgressCallback = Callable[[int, int], None]


class ModelFamily:
    """What every adapter shares: how to build its network from a registry config without weights.

    ``build_network(config, device="meta")`` lets ``python -m mmdemo.params`` count parameters and list
    state-dict names of the full-size model without downloading anything; frozen parts must have
    ``requires_grad=False`` so "trainable" is read off the module itself. ``param_note`` explains how our
    count compares with the report's.
    """

    param_note: str = ""

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> torch.nn.Module:
        raise NotImplementedError(f"{cls.__name__} does not build a network from a config")


class Captioner(ModelFamily, ABC):
    """Image -> text. Subclasses build from a spec plus resolved weights and keep their own device."""

    spec: ModelSpec
    weights: ResolvedWeights

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None) -> Captioner:
        """Build the model and fill it from ``weights`` (strictly: every parameter, every key)."""

    @abstractmethod
    def caption(self, images: list[Image.Image], **options: Any) -> list[str]:
        """One caption per image (RGB PIL images of any size). Options are decoding settings."""

    def to(self, device: str) -> Captioner:
        """Move to ``device`` (used by the model manager to offload); a no-op by default."""
        return self


@dataclass
class GenerationRequest:
    """One text-to-image call, already validated (see :mod:`mmdemo.inputs`)."""

    prompt: str
    seed: int
    steps: int | None = None  # None: the preset's default for this model
    guidance: float | None = None
    negative_prompt: str = ""
    preset: Preset = "fast"
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # model-specific options (e.g. Infinity's pixel budget)


class Generator(ModelFamily, ABC):
    """Text -> image with one uniform call signature for every generator."""

    spec: ModelSpec
    weights: ResolvedWeights

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None) -> Generator:
        """Build the model and fill it from ``weights``."""

    @abstractmethod
    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str = "",
        preset: Preset = "fast",
        width: int | None = None,
        height: int | None = None,
        progress: ProgressCallback | None = None,
        **extra: Any,
    ) -> Image.Image:
        """One image for ``prompt``; the same seed gives the same image (a fresh ``torch.Generator`` per call).

        Notices for the user (a truncated prompt, a clamped value) go into ``image.info["mmdemo_notices"]``.
        """

    def to(self, device: str) -> Generator:
        return self
