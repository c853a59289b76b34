"""What our two text-to-image diffusion models share around their own networks.

A frozen text encoder built or read beside the trainable part, a checkpoint folder read strictly
(``config.json`` + ``model.safetensors``), and classifier-free-guided sampling of one batch of prompts with one
CPU generator seeded by ``seed``. :mod:`mmdemo.models.diffusion.pixel` and :mod:`~mmdemo.models.diffusion.latent`
subclass :class:`TextToImageModel` with what differs: the denoising network, the sample's shape, and how a
clean sample becomes pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from mmdemo.interfaces import PreviewCallback, ProgressCallback
from mmdemo.models.diffusion.sampling import guided_sample, make_scheduler, to_pil
from mmdemo.models.diffusion.text import build_text_encoder, encode_text, load_text_encoder
from mmdemo.previews import emit_preview

MODEL_FILE = "model.safetensors"


class Sampled(NamedTuple):
    images: list[Any]
    truncated: list[bool]


class TextToImageModel(nn.Module):
    """Frozen text encoder (``self.text_encoder``) + the family's trainable networks, built by the subclass.

    Class attributes: ``config_class``; ``text_kind`` ("bert" or "clip", see :mod:`mmdemo.models.diffusion.text`);
    ``model_id`` (the registry id, named in messages); ``denoiser_name``; ``clip_sample`` (the scheduler clips x0 to [-1, 1]);
    ``reads_text_mask`` (the denoiser receives the prompt's attention mask); ``legacy_defaults`` (config values
    of checkpoints written before a field existed).
    """

    config_class: ClassVar[type]
    text_kind: ClassVar[str]
    model_id: ClassVar[str]
    clip_sample: ClassVar[bool]
    reads_text_mask: ClassVar[bool]
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any, text_encoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.text_encoder = (
            text_encoder
            if text_encoder is not None
            else build_text_encoder(self.text_kind, config.text_encoder_config)
        )

    # ---- what a family provides

    denoiser_name: ClassVar[str]  # the attribute holding the network that predicts the noise

    def sample_shape(self, batch: int) -> tuple[int, ...]:
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: Any) -> torch.Tensor:
        raise NotImplementedError

    def to_pixels(self, sample: torch.Tensor, model_name: str) -> torch.Tensor:
        """A clean sample -> images in [-1, 1]."""
        return sample

    def preview_pixels(self, clean: torch.Tensor) -> torch.Tensor:
        """A predicted clean sample mid-way -> images (about [-1, 1]) for a preview; may hold NaN (then skipped)."""
        return clean

    def load_trainable(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Load the checkpoint's trainable weights (read from ``source``), every key matched."""
        raise NotImplementedError

    # ---- shared

    @classmethod
    def read(cls, own: Path, text_dir: Path) -> TextToImageModel:
        """The model in checkpoint folder ``own`` with the frozen text encoder in ``text_dir``, read strictly."""
        from mmdemo.weights import load_state_dict, read_config

        values = {**cls.legacy_defaults, **read_config(own)}
        model = cls(cls.config_class.from_dict(values), load_text_encoder(cls.text_kind, text_dir))
        model.load_trainable(
            {k: v.float() for k, v in load_state_dict(own / MODEL_FILE).items()}, own / MODEL_FILE
        )
        return model


@torch.no_grad()
def sample_images(
    model: TextToImageModel,
    tokenizer: Any,
    prompts: list[str],
    negative_prompt: str = "",
    *,
    seed: int,
    steps: int,
    guidance: float,
    preset: str,
    progress: ProgressCallback | None = None,
    preview: PreviewCallback | None = None,
    model_name: str | None = None,
) -> Sampled:
    """Images for ``prompts`` (one batch, one generator seeded with ``seed``). Used by the adapters and training.

    Raises :class:`~mmdemo.models.guards.NonFiniteOutput` rather than return a picture made from NaN.
    ``preview`` receives pictures of the first prompt's predicted clean image at a few steps (a non-finite one
    is skipped); the images are the same with or without it.
    """
    config = model.config
    name = model_name or model.model_id
    # Sampling runs where the noise-predicting network is.
    device = next(getattr(model, model.denoiser_name).parameters()).device
    cond = encode_text(tokenizer, model.text_encoder, prompts, config.text_max_length, device)
    uncond = encode_text(
        tokenizer, model.text_encoder, [negative_prompt] * len(prompts), config.text_max_length, device
    )
    scheduler = make_scheduler(preset, config, clip_sample=model.clip_sample)
    generator = torch.Generator().manual_seed(int(seed))
    masks = (
        dict(cond_mask=cond.attention_mask, uncond_mask=uncond.attention_mask)
        if model.reads_text_mask
        else {}
    )
    on_clean = None
    if preview is not None:

        def on_clean(done: int, total: int, clean: torch.Tensor) -> None:
            pixels = model.preview_pixels(clean[:1])[0]
            emit_preview(preview, done, total, pixels, (pixels.shape[-1], pixels.shape[-2]))

    sample = guided_sample(
        model.denoise, scheduler, model.sample_shape(len(prompts)), cond.hidden, uncond.hidden, steps=steps,
        guidance=guidance, generator=generator, progress=progress, preview=on_clean, model_name=name, **masks,
    )  # fmt: skip
    return Sampled(to_pil(model.to_pixels(sample, name)), cond.truncated)
