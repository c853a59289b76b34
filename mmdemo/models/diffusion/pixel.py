"""Our pixel-space diffusion model ("our diffusion" in the report): config, network, checkpoint reader, sampler.

The network: a diffusers ``UNet2DConditionModel`` on 128x128 RGB pixels (the report trained and sampled at
128 px; the ``sample_size=64`` in its UNet listing is metadata only) with the report's exact configuration
(blocks 64/128/256/256, two layers each, cross-attention in the two high-resolution
blocks, cross-attention width 512), conditioned on a frozen ``bert-base-uncased`` through a trainable
Linear(768, 512) -> GELU -> LayerNorm projection; DDPM with 1000 linear-beta steps and epsilon prediction.

Checkpoint layout (``config.json`` is :class:`PixelDiffusionConfig` as JSON)::

    <folder>/config.json
    <folder>/model.safetensors          the trainable part: ``text_proj.*`` and ``unet.*``
    <folder>/text_encoder/              demo only: the tiny frozen BERT (``from_pretrained`` layout)
    <folder>/tokenizer/                 demo only: its tokenizer

With the full profile the text encoder and tokenizer come from the ``bert-base-uncased`` snapshot instead.
The registry adapter is :mod:`mmdemo.generators.pixel_diffusion`; training is ``train/train_pixel_diffusion.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdemo.models.config import DictConfig
from mmdemo.models.diffusion.text_to_image import TextToImageModel


@dataclass
class PixelDiffusionConfig(DictConfig):
    """Architecture and noise schedule of the pixel diffusion model (defaults: the report's full size).

    Args:
        sample_size: image side in pixels the UNet is trained at.
        block_out_channels / layers_per_block / down_block_types / up_block_types: the diffusers UNet.
        cross_attention_dim: width of the projected text states the UNet attends to.
        attention_head_dim: diffusers' (historically misnamed) number of attention heads.
        norm_num_groups: GroupNorm groups in the UNet (must divide every block width).
        text_encoder: Hub id of the frozen encoder, or the name of a tiny one trained on Shapes.
        text_encoder_config: ``BertConfig`` kwargs of a tiny encoder; None for the Hub model's own config.
        text_max_length: tokens per prompt (padded or truncated).
        cross_attention_mask: hide the padding positions of the prompt from cross-attention. The report's UNet
            attends to all ``text_max_length`` states, padding included (False); our demo masks them (True).
        num_train_timesteps / beta_schedule / beta_start / beta_end / prediction_type: the DDPM schedule.
    """

    sample_size: int = 128  # report: trained and sampled at 128x128
    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    cross_attention_dim: int = 512  # report: BERT 768 -> 512 projection
    attention_head_dim: int = 8  # diffusers default
    norm_num_groups: int = 32
    text_encoder: str = "google-bert/bert-base-uncased"
    text_encoder_config: dict[str, Any] | None = None
    text_max_length: int = 24  # report: text max length 24
    cross_attention_mask: bool = False  # report: no mask on the padded prompt
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # report: linear betas, epsilon prediction
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        if not len(self.block_out_channels) == len(self.down_block_types) == len(self.up_block_types):
            raise ValueError(
                "block_out_channels, down_block_types and up_block_types must have the same length"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups {self.norm_num_groups} must divide every block width {self.block_out_channels}"
            )


class PixelDenoiser(nn.Module):
    """The trainable part: text projection + UNet. (The unit ``accelerate`` wraps for DDP.)"""

    def __init__(self, config: PixelDiffusionConfig, text_hidden: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        dim = config.cross_attention_dim
        self.use_mask = config.cross_attention_mask
        self.text_proj = nn.Sequential(nn.Linear(text_hidden, dim), nn.GELU(), nn.LayerNorm(dim))
        self.unet = UNet2DConditionModel(
            sample_size=config.sample_size,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            layers_per_block=config.layers_per_block,
            block_out_channels=config.block_out_channels,
            down_block_types=config.down_block_types,
            up_block_types=config.up_block_types,
            cross_attention_dim=dim,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
        )

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        states = self.text_proj(text_hidden)  # (B, L, cross_attention_dim)
        return self.unet(
            sample,
            timesteps,
            encoder_hidden_states=states,
            encoder_attention_mask=text_mask if self.use_mask else None,
        ).sample


class PixelDiffusionModel(TextToImageModel):
    """Frozen BERT + :class:`PixelDenoiser`."""

    config_class = PixelDiffusionConfig
    text_kind = "bert"
    model_id = "pixel-diffusion"
    clip_sample = True
    reads_text_mask = True
    denoiser_name = "denoiser"
    # Checkpoints written before the field existed were all trained with the padding masked.
    legacy_defaults = {"cross_attention_mask": True}

    def __init__(self, config: PixelDiffusionConfig, text_encoder: nn.Module | None = None):
        super().__init__(config, text_encoder)
        self.denoiser = PixelDenoiser(config, int(self.text_encoder.config.hidden_size))

    def sample_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.config.in_channels, self.config.sample_size, self.config.sample_size)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: Any) -> torch.Tensor:
        return self.denoiser(x, t, states, mask)

    def load_trainable(self, state: dict[str, torch.Tensor], source: Path) -> None:
        self.denoiser.load_state_dict(state, strict=True)
