"""Pictures of a sample while it forms: when a generator draws them, and how a tensor becomes one.

A generator asked for previews (``GenerationRequest.preview``) draws a few pictures of its sample while it
samples: our diffusion models their predicted clean image (decoded, for the latent model), SDXL its predicted
clean latents (decoded for small pictures, through a linear latent-to-RGB map for large ones), Infinity the
codes of every finished scale, decoded at that scale's grid. Each family decides *what* a preview shows; this module
decides *when* (:func:`preview_steps`: a handful, evenly spread, never at the last step, whose picture is the
final one), fits the linear maps (:func:`fit_rgb_map`) and turns a tensor into a picture that is safe to show
(:func:`emit_preview`: a preview holding NaN or infinity is skipped, never shown). Previews only read the
sample: the final picture is the same with or without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mmdemo.interfaces import PreviewCallback

# Previews per model run, at most: enough to watch the picture form, few enough to cost little time
# (``bench/previews.py`` measures the cost).
PREVIEWS_PER_RUN = 4


def preview_steps(total: int, count: int = PREVIEWS_PER_RUN) -> frozenset[int]:
    """The steps (1-based) after which a preview is drawn: up to ``count``, evenly spread, before ``total``.

    20 steps: 4, 8, 12, 16; 25: 5, 10, 15, 20; 5 scales: 1, 2, 3, 4; one step: none.
    """
    if total < 2 or count < 1:
        return frozenset()
    every = -(-total // (count + 1))  # ceil, so there are never more than ``count``
    return frozenset(range(every, total, every))


def emit_preview(
    preview: PreviewCallback, done: int, total: int, pixels: torch.Tensor, size: tuple[int, int]
) -> bool:
    """Send ``pixels`` ((3, H, W) in [-1, 1]) to ``preview`` as an RGB picture of ``size`` (width, height).

    A preview at a lower resolution than the final picture is enlarged with nearest-neighbour resampling, so
    the panel keeps its size. Returns False, and sends nothing, when ``pixels`` hold NaN or infinity.
    """
    from PIL import Image

    pixels = pixels.detach().float()
    if not bool(torch.isfinite(pixels).all()):
        return False
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array, mode="RGB")
    if picture.size != tuple(size):
        picture = picture.resize(tuple(size), Image.Resampling.NEAREST)
    preview(done, total, picture)
    return True


def colour_fields(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """``count`` smooth random colour pictures (count, 3, side, side) in [-1, 1]: bicubic from 4x4 random colours,
    drawn from their own generator (so fitting a map never touches a sampler's random numbers)."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)


def fit_rgb_map(latents: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The least-squares linear map from each latent vector to the mean colour of the pixels it covers.

    ``latents`` (N, C, h, w) are the encodings of ``pixels`` (N, 3, H, W), H a multiple of h. Returns a
    (C + 1, 3) matrix, the RGB bias in its last row: what the well-known fixed "latent-to-RGB factors" of
    SDXL previews are, derived here for whichever autoencoder a model has.
    """
    import torch.nn.functional as F

    latents = latents.detach().float().cpu()
    colours = F.avg_pool2d(pixels.float().cpu(), pixels.shape[-1] // latents.shape[-1])
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    return torch.linalg.lstsq(inputs, colours.permute(0, 2, 3, 1).reshape(-1, 3)).solution


def apply_rgb_map(latents: torch.Tensor, rgb_map: torch.Tensor) -> torch.Tensor:
    """(C, h, w) latents -> (3, h, w) approximate pixels in about [-1, 1], through a :func:`fit_rgb_map` map."""
    flat = latents.detach().float().cpu().permute(1, 2, 0)
    return (flat @ rgb_map[:-1] + rgb_map[-1]).permute(2, 0, 1)
