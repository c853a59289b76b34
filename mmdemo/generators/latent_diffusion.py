"""``latent-diffusion``'s adapter; config, networks: mmdemo.models.diffusion.latent; sampler: .text_to_image."""

from __future__ import annotations

from mmdemo.generators.text_diffusion import TextDiffusionGenerator
from mmdemo.models.diffusion.latent import LatentDiffusionModel


class LatentDiffusionGenerator(TextDiffusionGenerator):
    """``latent-diffusion``: text -> 256x256 (demo: 32x32) image with the "report" (DDPM) or "fast" preset."""

    param_note = (
        "the report's structure (its code's config; the report text states no count): VQ-VAE 22.0M (4x4 stride-2 "
        "convs, two 4-head mid attentions) + latent UNet 256/384/512/768, self+cross-attention in every layer, 16 "
        "heads, 118.5M + frozen CLIP ViT-B/16 text tower 63.2M"
    )
    model_class = LatentDiffusionModel
