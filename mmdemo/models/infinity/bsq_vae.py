"""The BSQ-VAE of Infinity: a convolutional autoencoder whose latent is quantised scale by scale into bits.

Read top to bottom: the two thin wrappers that give the official parameter names, the residual and
resampling blocks, encoder, decoder, the binary spherical quantiser (BSQ) with its multi-scale residual
loop, and the whole autoencoder last.

Names follow the official checkpoint ``infinity_vae_d32reg.pth`` (weights under its ``"vae"`` key): every
convolution sits one level down in a ``.conv`` attribute and every GroupNorm in a ``.norm`` attribute
(``decoder.up.4.upsample.conv.conv.weight``, ``decoder.mid.block_1.norm1.norm.weight``). The d32 model:
base 128 channels, multipliers (1, 2, 4, 4, 4), 2 residual blocks per level, no attention, 16x downsampling,
32-bit codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BSQVAEConfig:
    """Architecture of the BSQ-VAE.

    Args:
        codebook_dim: bits per latent token (also the latent channels); 32 for ``d32``.
        base_channels: channels of the first level.
        channel_mult: per-level channel multipliers; the number of levels.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        patch_size: pixels per latent token along a side (power of two): the number of 2x resamplings.
        norm_groups: GroupNorm groups (upstream: 32).
        in_channels: image channels.
    """

    codebook_dim: int = 32  # d32: 2**32 implicit codes
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    patch_size: int = 16  # 1024 px -> 64 tokens
    norm_groups: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        downs = int(math.log2(self.patch_size))
        if 2**downs != self.patch_size or downs > len(self.channel_mult) - 1:
            raise ValueError(
                f"patch_size {self.patch_size} must be a power of two <= 2**{len(self.channel_mult) - 1} "
                "(one level more than resamplings)"
            )

    @property
    def num_resamplings(self) -> int:
        return int(math.log2(self.patch_size))


class Conv(nn.Module):
    """A Conv2d one attribute deeper, so names read ``<layer>.conv.weight`` as in the official file."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """GroupNorm (eps 1e-6) one attribute deeper: ``<layer>.norm.weight``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.norm1 = Normalize(in_ch, groups)
        self.conv1 = Conv(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch, groups)
        self.conv2 = Conv(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = Conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right and bottom only, so a stride-2 3x3 conv halves the size exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """One resolution level: ``block`` (residual blocks), an empty ``attn`` list, optional resampler."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()  # upstream keeps an (unused) attention list per level


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: BSQVAEConfig):
        super().__init__()
        ch, mult, g = cfg.base_channels, cfg.channel_mult, cfg.norm_groups
        self.conv_in = Conv(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, g))
                block_in = ch * m
            stage = _Stage(blocks)
            if level < cfg.num_resamplings:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in, g)
        self.norm_out = Normalize(block_in, g)
        self.conv_out = Conv(block_in, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, d, H/p, W/p)
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: BSQVAEConfig):
        super().__init__()
        ch, mult, g = cfg.base_channels, cfg.channel_mult, cfg.norm_groups
        block_in = ch * mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in, 3, padding=1)
        self.mid = _Mid(block_in, g)
        stages: list[_Stage] = []
        for level in reversed(range(len(mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[level], g))
                block_in = ch * mult[level]
            stage = _Stage(blocks)
            # The upsamplers sit on levels 1..n (the encoder's downsamplers on 0..n-1).
            if 1 <= level <= cfg.num_resamplings:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)  # index = level, run from the deepest one
        self.norm_out = Normalize(block_in, g)
        self.conv_out = Conv(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, d, h, w) -> (B, 3, h*p, w*p)
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BSQ(nn.Module):
    """Binary spherical quantisation: l2-normalise, keep the sign, land on the sphere ({-1, 1}^d / sqrt(d)).

    ``mask`` (powers of two, most significant bit first) is the official buffer; it turns bit vectors into
    integer indices and back, and carries no learned values.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d, h, w) -> quantised (B, d, h, w) with straight-through gradients, bits (B, h, w, d)."""
        z = F.normalize(z.float(), dim=1)
        q = torch.where(z > 0, 1.0, -1.0) / math.sqrt(self.dim)
        q = z + (q - z).detach()
        return q, (q > 0).permute(0, 2, 3, 1).long()


def upsample_codes(codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Residual codes to another grid: bilinear (the official 'trilinear' on a depth-1 volume is the same)."""
    if tuple(codes.shape[-2:]) == tuple(size):
        return codes
    return F.interpolate(codes, size=size, mode="bilinear", align_corners=False)


class MultiScaleBSQ(nn.Module):
    """Residual quantisation over a schedule of grids, coarse to fine.

    At each scale the remaining residual is area-downsampled to the grid, quantised to bits, upsampled back
    and subtracted. The sum of the upsampled codes is the decoder's input.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.lfq = BSQ(dim)

    def forward(
        self, z: torch.Tensor, scales: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, d, H, W) -> summed codes (B, d, H, W), bits per scale [(B, h, w, d)]."""
        size = tuple(z.shape[-2:])
        residual = z.float()
        summed = torch.zeros_like(residual)
        bits: list[torch.Tensor] = []
        for h, w in scales:
            small = residual if (h, w) == size else F.interpolate(residual, size=(h, w), mode="area")
            q, b = self.lfq(small)
            q = upsample_codes(q, size)
            residual = residual - q.detach()
            summed = summed + q
            bits.append(b)
        return summed, bits


def teacher_forcing_inputs(bits: list[torch.Tensor], scales: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """The transformer's inputs for every scale after the first, from ground-truth bits.

    Mirrors sampling exactly: codes of each scale are upsampled to the final grid and summed; the input of
    scale k+1 is that running sum resampled to scale k+1's grid. Returns (B, sum_{k>=1} h_k w_k, d).
    """
    final = scales[-1]
    summed = None
    inputs = []
    for k, (b, _) in enumerate(zip(bits, scales)):
        codes = (b.float() * 2 - 1).permute(0, 3, 1, 2) / math.sqrt(dim)
        up = upsample_codes(codes, final)
        summed = up if summed is None else summed + up
        if k + 1 < len(scales):
            nxt = upsample_codes(summed, scales[k + 1])
            inputs.append(nxt.flatten(2).transpose(1, 2))
    return torch.cat(inputs, dim=1)


class BSQVAE(nn.Module):
    """Encoder + multi-scale BSQ + decoder; ``with_encoder=False`` builds the decoder side only."""

    def __init__(self, cfg: BSQVAEConfig, with_encoder: bool = True):
        super().__init__()
        self.config = cfg
        if with_encoder:
            self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleBSQ(cfg.codebook_dim)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def encode(
        self, images: torch.Tensor, scales: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images in [-1, 1] -> summed codes and bits per scale."""
        if not hasattr(self, "encoder"):
            raise RuntimeError("this BSQVAE was built without its encoder (with_encoder=False)")
        return self.quantizer(self.encoder(images), scales)

    def forward(
        self, images: torch.Tensor, scales: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training pass: reconstruction (not clamped) from the multi-scale codes, and the bits."""
        summed, bits = self.encode(images, scales)
        return self.decoder(summed), bits

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Summed codes (B, d, h, w) -> images in [-1, 1]."""
        return self.decoder(codes).clamp(-1, 1)


def vae_config_for(name: str) -> dict:
    """Registry shorthand for the official VAEs (``"d32reg"``) -> :class:`BSQVAEConfig` kwargs."""
    if name in ("d32reg", "d32"):
        return {}
    raise ValueError(f"unknown official BSQ-VAE {name!r}; known: d32reg")
