"""``pixel-diffusion``'s adapter; config, network: mmdemo.models.diffusion.pixel; sampler: .text_to_image."""

from __future__ import annotations

from mmdemo.generators.text_diffusion import TextDiffusionGenerator
from mmdemo.models.diffusion.pixel import PixelDiffusionModel


class PixelDiffusionGenerator(TextDiffusionGenerator):
    """``pixel-diffusion``: text -> 128x128 (demo: 32x32) image with the "report" (DDPM) or "fast" preset."""

    param_note = (
        "the report's UNet2DConditionModel config exactly (trained at 128 px, as the report did) + frozen "
        "bert-base-uncased (without its unused pooler) + trainable Linear(768,512)/GELU/LayerNorm; the report "
        "states no parameter count"
    )
    model_class = PixelDiffusionModel
