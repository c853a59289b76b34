"""What diffusers does not ship for training a VQ-VAE: the PatchGAN discriminator, the VQ losses, LPIPS.

* :class:`PatchDiscriminator`: the pix2pix / taming-transformers "NLayer" PatchGAN (Isola et al., 2017):
  stride-2 4x4 convolutions with BatchNorm and LeakyReLU, one logit per overlapping patch;
  :func:`report_discriminator` is the report's shallower variant of it.
* :func:`hinge_d_loss` / :func:`lsgan_loss` / :func:`generator_adversarial_loss`: the two GAN objectives.
* :func:`quantize`: nearest-codebook lookup done here (not inside ``VQModel``) so the commitment weight is ours
  (the report: 0.2; diffusers' quantiser hard-codes 0.25) and the code indices are at hand for usage stats.
* :func:`perceptual_loss_or_none`: LPIPS when the ``lpips`` package *and* its VGG weights are available,
  otherwise a loud warning and ``None`` (the loss is then off; nothing is silently substituted).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 convs from ``width`` channels, doubling up to 8x, then a 1-channel map.

    Args:
        in_channels: image channels.
        width: channels of the first convolution.
        n_layers: BatchNorm layers after the first convolution (3 gives 70x70 receptive fields, pix2pix's default).
        last_stride: stride of the last of them (pix2pix: 1, it keeps the resolution).
        final_bias: whether the logit convolution has a bias.
        pix2pix_init: N(0, 0.02) convolutions and N(1, 0.02) BatchNorm scales; False keeps torch's defaults.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        n_layers: int = 3,
        *,
        last_stride: int = 1,
        final_bias: bool = True,
        pix2pix_init: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else last_stride
            layers += [
                nn.Conv2d(channels, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1, bias=final_bias))
        self.net = nn.Sequential(*layers)
        if pix2pix_init:
            self.apply(_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, 1, h, w) patch logits


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def report_discriminator(in_channels: int = 3, width: int = 64) -> PatchDiscriminator:
    """The report's PatchGAN: conv(3 -> 64, stride 2) + LeakyReLU, two stride-2 convs 128/256 with BatchNorm and
    LeakyReLU, a bias-free 4x4 conv to one logit per patch; torch's default initialisation."""
    return PatchDiscriminator(in_channels, width, n_layers=2, last_stride=2, final_bias=False, pix2pix_init=False)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def lsgan_loss(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Least squares towards ``target`` (1: real, 0: fake): mean (D(x) - target)^2."""
    return F.mse_loss(logits, torch.full_like(logits, target))


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The autoencoder's adversarial term: ``-D(fake)`` (hinge) or ``(D(fake) - 1)^2`` (LSGAN)."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "lsgan":
        return lsgan_loss(fake_logits, 1.0)
    raise ValueError(f"disc loss must be 'hinge' or 'lsgan', got {kind!r}")


def quantize(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook vectors of ``z`` (B, C, H, W) -> (z_q (B, C, H, W), indices (B*H*W,))."""
    b, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c)
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)[None]
    indices = distances.argmin(1)
    z_q = codebook[indices].view(b, h, w, c).permute(0, 3, 1, 2)
    return z_q, indices


def vq_losses(z: torch.Tensor, z_q: torch.Tensor, commitment: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook loss, weighted commitment loss) of VQ-VAE (van den Oord et al., 2017)."""
    codebook_loss = F.mse_loss(z_q, z.detach())
    commitment_loss = commitment * F.mse_loss(z, z_q.detach())
    return codebook_loss, commitment_loss


def codebook_usage(counts: torch.Tensor) -> dict[str, float]:
    """Perplexity (effective number of codes used) and dead codes (never used) from per-code counts."""
    total = counts.sum()
    if total == 0:
        return {"perplexity": 0.0, "dead_codes": float(len(counts))}
    probs = counts.float() / total
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "dead_codes": float((counts == 0).sum())}


def perceptual_loss_or_none(device: Any) -> nn.Module | None:
    """LPIPS (VGG) if the package and its weights load without a download, else a loud warning and None."""
    try:
        import lpips  # type: ignore[import-not-found]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="vgg", verbose=False)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.to(device).eval()
    except Exception as err:  # noqa: BLE001 - missing package, missing VGG weights, no network: all mean "off"
        message = (
            "LPIPS PERCEPTUAL LOSS IS OFF: the `lpips` package or its VGG weights are not available "
            f"({type(err).__name__}: {err}). The VQ-VAE trains with MSE + VQ (+ PatchGAN) losses only. "
            "To enable it: `pip install -r requirements.txt` (lpips) and let torchvision download its VGG16 "
            "ImageNet weights once, or copy vgg16-397923af.pth into $TORCH_HOME/hub/checkpoints/."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning("!" * 20 + " " + message)
        return None
