"""Our VQ-VAE latent diffusion model: config, VQ-VAE, latent UNet, checkpoint reader, sampler.

The network, at full size the report's own (:mod:`mmdemo.models.diffusion.report_nets`): a VQ-VAE
(codebook 8192 x 4, downsampling 8: 256x256x3 -> 32x32x4; conv 3->64, down stages 64/128/256/256 with 2
residual layers and a 4x4 stride-2 conv each, a mid block with two 4-head self-attentions, a mirrored decoder
with transposed convolutions; 22.0M parameters), a frozen CLIP ViT-B/16 text tower (77 x 512 states) and a
latent UNet with widths 256/384/512/768, mid 768 -> 512, self- and cross-attention in every layer, 16 heads
(118.5M parameters); DDPM T=1000 with scaled-linear betas (0.00085-0.012). ``architecture="diffusers"``
builds our own structure instead, diffusers' ``VQModel`` + ``UNet2DConditionModel`` (the demo checkpoint
uses it at tiny size).

Training is two-stage (``train/train_vqvae.py``, then ``train/train_latent_diffusion.py`` on cached
latents); sampling denoises latents, snaps them to the codebook and decodes.

Checkpoint layout (``config.json`` is :class:`LatentDiffusionConfig` as JSON)::

    <folder>/config.json
    <folder>/model.safetensors          ``vqvae.*`` (stage 1) and ``unet.*`` (stage 2)
    <folder>/text_encoder/, tokenizer/  demo only: the tiny frozen CLIP text tower and its BPE tokenizer

With the full profile the text encoder and tokenizer come from the ``openai/clip-vit-base-patch16`` snapshot.
The registry adapter is :mod:`mmdemo.generators.latent_diffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdemo.models.config import DictConfig
from mmdemo.models.diffusion.text_to_image import TextToImageModel
from mmdemo.models.guards import check_finite

ARCHITECTURES = ("report", "diffusers")


@dataclass
class LatentDiffusionConfig(DictConfig):
    """Architecture and schedule of the latent diffusion model (defaults: the report's full size).

    Args:
        image_size: pixels per side; latents are ``image_size // downsample`` per side.
        num_vq_embeddings / latent_channels: the VQ codebook (entries x width).
        downsample: VQ-VAE downsampling factor; must be ``2 ** (len(vq_block_out_channels) - 1)``.
        architecture: ``"report"`` (the report's hand-written VQ-VAE and UNet, rebuilt in
            :mod:`mmdemo.models.diffusion.report_nets`) or ``"diffusers"`` (ours: ``VQModel`` +
            ``UNet2DConditionModel``; the demo checkpoint).
        vq_block_out_channels / vq_layers_per_block / vq_norm_num_groups: widths, residual layers per stage
            and GroupNorm groups of the VQ-VAE.
        vq_num_heads: heads of the VQ-VAE's mid-block self-attention (report structure only).
        commitment_cost: weight of the VQ commitment loss (report: 0.2).
        unet_block_out_channels / unet_layers_per_block / unet_norm_num_groups: the latent UNet's widths,
            layers per stage and GroupNorm groups.
        unet_attention_head_dim: number of attention heads (diffusers' historical name for it).
        unet_time_embedding_dim / unet_conv_out_channels: the report structure's time embedding width and the
            width before its output convolution (its mid block narrows from the last width to the one before).
        cross_attention_dim: width of the text states, i.e. the text encoder's hidden size (CLIP B/16: 512).
        text_encoder / text_encoder_config / text_max_length: as in the pixel model (CLIP: 77 tokens).
        latent_scale: multiplies VQ latents before diffusion: 1 under the report's recipe (its latents are
            unscaled), 1/std of the training latents under ours (unit variance).
    """

    image_size: int = 256
    architecture: str = "report"
    num_vq_embeddings: int = 8192  # report: codebook 8192 x 4
    latent_channels: int = 4
    downsample: int = 8  # report: 256x256x3 -> 32x32x4
    vq_block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    vq_layers_per_block: int = 2
    vq_norm_num_groups: int = 32
    vq_num_heads: int = 4
    commitment_cost: float = 0.2
    unet_block_out_channels: tuple[int, ...] = (256, 384, 512, 768)
    unet_layers_per_block: int = 2
    unet_attention_head_dim: int = 16
    unet_norm_num_groups: int = 32
    unet_time_embedding_dim: int = 512
    unet_conv_out_channels: int = 128
    cross_attention_dim: int = 512
    text_encoder: str = "openai/clip-vit-base-patch16"
    text_encoder_config: dict[str, Any] | None = None
    text_max_length: int = 77
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    latent_scale: float = 1.0

    def __post_init__(self) -> None:
        self.vq_block_out_channels = tuple(self.vq_block_out_channels)
        self.unet_block_out_channels = tuple(self.unet_block_out_channels)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        expected = 2 ** (len(self.vq_block_out_channels) - 1)
        if self.downsample != expected:
            raise ValueError(
                f"downsample {self.downsample} does not match {len(self.vq_block_out_channels)} VQ blocks "
                f"(which downsample by {expected})"
            )
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of downsample {self.downsample}"
            )

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample


def build_vqvae(config: LatentDiffusionConfig) -> nn.Module:
    """The stage-1 autoencoder of ``config.architecture``."""
    if config.architecture == "report":
        from mmdemo.models.diffusion.report_nets import ReportVQVAE

        return ReportVQVAE(
            block_out_channels=config.vq_block_out_channels,
            layers_per_block=config.vq_layers_per_block,
            mid_layers=config.vq_layers_per_block,
            num_heads=config.vq_num_heads,
            norm_num_groups=config.vq_norm_num_groups,
            latent_channels=config.latent_channels,
            num_embeddings=config.num_vq_embeddings,
        )
    from diffusers import VQModel

    n = len(config.vq_block_out_channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vq_block_out_channels,
        layers_per_block=config.vq_layers_per_block,
        latent_channels=config.latent_channels,
        sample_size=config.image_size,
        num_vq_embeddings=config.num_vq_embeddings,
        vq_embed_dim=config.latent_channels,
        norm_num_groups=config.vq_norm_num_groups,
        mid_block_add_attention=True,
    )


def build_latent_unet(config: LatentDiffusionConfig) -> nn.Module:
    """The stage-2 denoiser of ``config.architecture``."""
    if config.architecture == "report":
        from mmdemo.models.diffusion.report_nets import ReportUNet

        return ReportUNet(
            in_channels=config.latent_channels,
            block_out_channels=config.unet_block_out_channels,
            layers_per_block=config.unet_layers_per_block,
            mid_layers=config.unet_layers_per_block,
            num_heads=config.unet_attention_head_dim,
            norm_num_groups=config.unet_norm_num_groups,
            time_embedding_dim=config.unet_time_embedding_dim,
            conv_out_channels=config.unet_conv_out_channels,
            cross_attention_dim=config.cross_attention_dim,
        )
    from diffusers import UNet2DConditionModel

    n = len(config.unet_block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=config.unet_layers_per_block,
        block_out_channels=config.unet_block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,  # cross-attention in every block
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.unet_attention_head_dim,
        norm_num_groups=config.unet_norm_num_groups,
    )


class LatentDiffusionModel(TextToImageModel):
    """Frozen CLIP text tower + VQ-VAE + latent UNet."""

    config_class = LatentDiffusionConfig
    text_kind = "clip"
    model_id = "latent-diffusion"
    clip_sample = False
    # Like Stable Diffusion, the UNet attends to every CLIP position (padding included): no mask.
    reads_text_mask = False
    denoiser_name = "unet"
    # Checkpoints written before the report structure existed were all VQModel + UNet2DConditionModel.
    legacy_defaults = {"architecture": "diffusers"}

    def __init__(self, config: LatentDiffusionConfig, text_encoder: nn.Module | None = None):
        super().__init__(config, text_encoder)
        hidden = int(self.text_encoder.config.hidden_size)
        if hidden != config.cross_attention_dim:
            raise ValueError(
                f"text encoder width {hidden} != cross_attention_dim {config.cross_attention_dim}"
            )
        self.vqvae = build_vqvae(config)
        self.unet = build_latent_unet(config)

    def sample_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.config.latent_channels, self.config.latent_size, self.config.latent_size)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: Any) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=states).sample

    def to_pixels(self, sample: torch.Tensor, model_name: str) -> torch.Tensor:
        return check_finite(self.decode(sample), model=model_name, where="in the VQ-VAE decoder's pixels")

    def preview_pixels(self, clean: torch.Tensor) -> torch.Tensor:
        # A decode: the small VQ-VAE decoder costs less than a denoising step (bench/previews.py).
        return self.decode(clean)

    def load_trainable(self, state: dict[str, torch.Tensor], source: Path) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{source} does not match the config: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        self.load_state_dict({**self.state_dict(), **state}, strict=True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text_encoder.")}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion latents -> images in [-1, 1]: undo the scale, snap to the codebook, decode."""
        return self.vqvae.decode(latents / self.config.latent_scale, force_not_quantize=False).sample
