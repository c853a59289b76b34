"""The report's own VQ-VAE and latent UNet, layer for layer, built from diffusers and torch blocks.

The report's latent diffusion code does not use diffusers' ``VQModel`` or ``UNet2DConditionModel``; its
networks differ from them in ways that change the model, so they are rebuilt here:

* every layer of the latent UNet (down, mid and up) has a residual block, a self-attention **and** a
  cross-attention, 16 heads, at widths 256/384/512/768 (mid 768 -> 512, output convolution from 128 channels):
  118.5M parameters where a diffusers UNet of similar width has 168M;
* attention is ``GroupNorm`` -> ``nn.MultiheadAttention`` (biased in/out projections) -> residual, and a
  cross-attention first projects the text states to the layer's width with its own ``Linear``;
* every residual block has a 1x1 shortcut convolution, even where the width does not change;
* downsampling is a 4x4 stride-2 convolution, upsampling a 4x4 stride-2 transposed convolution;
* the VQ-VAE (22.0M parameters) has three down stages 64 -> 128 -> 256 -> 256 without attention, one mid
  block per side with three residual blocks and two 4-head self-attentions, and a decoder that mirrors the
  encoder without skip connections.

What diffusers expresses exactly is taken from it: ``ResnetBlock2D`` (GroupNorm/SiLU/conv twice, SiLU+Linear
time projection, ``use_in_shortcut``), ``Downsample2D`` / ``Upsample2D`` with 4x4 kernels, and the sinusoidal
``Timesteps`` (sin first, frequencies ``10000 ** (-i / (d/2))``) + ``TimestepEmbedding`` (Linear/SiLU/Linear).
GroupNorm keeps torch's epsilon 1e-5 throughout, as the report's ``nn.GroupNorm`` does.

Both classes answer the calls the training scripts and the sampler make of ``VQModel`` /
``UNet2DConditionModel`` (``encode(x).latents``, ``decode(z, force_not_quantize=...).sample``,
``quantize.embedding``, ``unet(x, t, encoder_hidden_states=...).sample``), so either structure plugs in.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import nn

GROUP_NORM_EPS = 1e-5  # torch's nn.GroupNorm default, which the report's blocks use


def _resnet(in_channels: int, out_channels: int, temb_channels: int | None, groups: int) -> nn.Module:
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D(
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=temb_channels,
        groups=groups,
        eps=GROUP_NORM_EPS,
        use_in_shortcut=True,  # the report adds a 1x1 shortcut conv to every block
    )


class NormAttention(nn.Module):
    """GroupNorm -> multi-head attention -> residual; with ``context_dim``, cross-attention to projected text.

    The keys and values of the cross-attention are ``Linear(context_dim, channels)`` of the text states, so the
    attention itself is square (``channels`` wide), as in the report.
    """

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)
        self.context_proj = nn.Linear(context_dim, channels) if context_dim is not None else None
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.norm(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.context_proj is None:
            key = query
        else:
            if context is None:
                raise ValueError("a cross-attention layer needs the text states (encoder_hidden_states)")
            key = self.context_proj(context)
        out, _ = self.attention(query, key, key, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class ReportLayer(nn.Module):
    """One layer of a down or up stage: residual block, then self-attention, then cross-attention (each optional)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temb_channels: int | None,
        heads: int,
        groups: int,
        self_attention: bool,
        context_dim: int | None,
    ):
        super().__init__()
        self.resnet = _resnet(in_channels, out_channels, temb_channels, groups)
        self.self_attention = NormAttention(out_channels, heads, groups) if self_attention else None
        self.cross_attention = (
            NormAttention(out_channels, heads, groups, context_dim) if context_dim is not None else None
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None, context: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.resnet(x, temb)
        if self.self_attention is not None:
            x = self.self_attention(x)
        if self.cross_attention is not None:
            x = self.cross_attention(x, context)
        return x


def _layers(in_channels: int, out_channels: int, num_layers: int, **kwargs) -> nn.ModuleList:
    return nn.ModuleList(
        ReportLayer(in_channels if i == 0 else out_channels, out_channels, **kwargs) for i in range(num_layers)
    )


class DownStage(nn.Module):
    """``num_layers`` layers (``in`` -> ``out`` channels), then a 4x4 stride-2 convolution."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, **kwargs):
        super().__init__()
        from diffusers.models.downsampling import Downsample2D

        self.layers = _layers(in_channels, out_channels, num_layers, **kwargs)
        # name="op": diffusers registers the conv once (its default "conv" also aliases it as Conv2d_0).
        self.downsample = Downsample2D(out_channels, use_conv=True, kernel_size=4, padding=1, name="op")

    def forward(self, x: torch.Tensor, temb=None, context=None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, temb, context)
        return self.downsample(x)


class MidStage(nn.Module):
    """A residual block, then ``num_layers`` times: self-attention, cross-attention (optional), residual block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        temb_channels: int | None,
        heads: int,
        groups: int,
        context_dim: int | None,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups)
            for i in range(num_layers + 1)
        )
        self.attentions = nn.ModuleList(NormAttention(out_channels, heads, groups) for _ in range(num_layers))
        self.cross_attentions = (
            nn.ModuleList(NormAttention(out_channels, heads, groups, context_dim) for _ in range(num_layers))
            if context_dim is not None
            else None
        )

    def forward(self, x: torch.Tensor, temb=None, context=None) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for i, attention in enumerate(self.attentions):
            x = attention(x)
            if self.cross_attentions is not None:
                x = self.cross_attentions[i](x, context)
            x = self.resnets[i + 1](x, temb)
        return x


class UpStage(nn.Module):
    """A 4x4 stride-2 transposed convolution of ``upsample_channels``, the skip concatenated (UNet), then layers."""

    def __init__(self, upsample_channels: int, in_channels: int, out_channels: int, num_layers: int, **kwargs):
        super().__init__()
        from diffusers.models.upsampling import Upsample2D

        self.upsample = Upsample2D(upsample_channels, use_conv_transpose=True, kernel_size=4, padding=1)
        self.layers = _layers(in_channels, out_channels, num_layers, **kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, temb=None, context=None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        for layer in self.layers:
            x = layer(x, temb, context)
        return x


def _out_head(channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
    )


class ReportVQVAE(nn.Module):
    """The report's VQ-VAE: conv 3 -> C0, down stages C0 -> C1 -> ... (no attention), a mid block with
    ``num_heads``-head self-attention, GroupNorm/SiLU/conv to ``latent_channels``, a 1x1 pre-quantisation conv and
    an ``num_embeddings`` x ``latent_channels`` codebook; the decoder mirrors it with transposed convolutions.

    Quantisation itself (nearest code, straight-through, losses) is done by the caller
    (:func:`mmdemo.models.diffusion.patchgan.quantize`), as for ``VQModel``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        mid_layers: int = 2,
        num_heads: int = 4,
        norm_num_groups: int = 32,
        latent_channels: int = 4,
        num_embeddings: int = 8192,
    ):
        super().__init__()
        widths = list(block_out_channels)
        plain = dict(temb_channels=None, heads=num_heads, groups=norm_num_groups, self_attention=False, context_dim=None)
        mid = dict(temb_channels=None, heads=num_heads, groups=norm_num_groups, context_dim=None)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            DownStage(widths[i], widths[i + 1], layers_per_block, **plain) for i in range(len(widths) - 1)
        )
        self.encoder_mid = MidStage(widths[-1], widths[-1], mid_layers, **mid)
        self.encoder_out = _out_head(widths[-1], latent_channels, norm_num_groups)
        self.quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(num_embeddings, latent_channels)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.decoder_mid = MidStage(widths[-1], widths[-1], mid_layers, **mid)
        self.up = nn.ModuleList(
            UpStage(widths[i], widths[i], widths[i - 1], layers_per_block, **plain)
            for i in reversed(range(1, len(widths)))
        )
        self.decoder_out = _out_head(widths[0], in_channels, norm_num_groups)

    def encode(self, images: torch.Tensor) -> SimpleNamespace:
        """Continuous latents (after the 1x1 pre-quantisation conv), as ``.latents``."""
        x = self.conv_in(images)
        for stage in self.down:
            x = stage(x)
        x = self.encoder_out(self.encoder_mid(x))
        return SimpleNamespace(latents=self.quant_conv(x))

    def decode(self, latents: torch.Tensor, force_not_quantize: bool = True) -> SimpleNamespace:
        """Images (as ``.sample``) from latents; snapped to the codebook first unless ``force_not_quantize``."""
        if not force_not_quantize:
            from mmdemo.models.diffusion.patchgan import quantize

            latents = quantize(latents, self.quantize.embedding.weight)[0]
        x = self.decoder_mid(self.decoder_in(self.post_quant_conv(latents)))
        for stage in self.up:
            x = stage(x)
        return SimpleNamespace(sample=self.decoder_out(x))


class ReportUNet(nn.Module):
    """The report's text-conditioned latent UNet.

    Down stages ``C[i] -> C[i+1]`` (each ``layers_per_block`` layers of residual block + self-attention +
    cross-attention, then a stride-2 conv), one mid block ``C[-1] -> C[-2]``, up stages that
    upsample, concatenate the matching down stage's *input* and mirror the widths down to ``conv_out_channels``,
    then GroupNorm/SiLU/conv to the latent channels. The time embedding (sinusoidal, Linear/SiLU/Linear) is added
    in every residual block.
    """

    def __init__(
        self,
        *,
        in_channels: int = 4,
        block_out_channels: Sequence[int] = (256, 384, 512, 768),
        layers_per_block: int = 2,
        mid_layers: int = 2,
        num_heads: int = 16,
        norm_num_groups: int = 32,
        time_embedding_dim: int = 512,
        conv_out_channels: int = 128,
        cross_attention_dim: int = 512,
    ):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        widths = list(block_out_channels)
        if len(widths) < 2:
            raise ValueError(f"the UNet needs at least two widths, got {tuple(widths)}")
        common = dict(
            temb_channels=time_embedding_dim, heads=num_heads, groups=norm_num_groups, context_dim=cross_attention_dim
        )
        self.time_proj = Timesteps(time_embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(time_embedding_dim, time_embedding_dim)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            DownStage(widths[i], widths[i + 1], layers_per_block, self_attention=True, **common)
            for i in range(len(widths) - 1)
        )
        # The mid block narrows from the last width to the one before it (768 -> 512): the first up stage
        # concatenates a skip of that width.
        self.mid = MidStage(widths[-1], widths[-2], mid_layers, **common)
        # Up stage i takes the output of the stage below (width C[i]) and the skip (the input of down stage i,
        # also C[i]); the last one ends at conv_out_channels instead of a skip width.
        self.up = nn.ModuleList(
            UpStage(widths[i], 2 * widths[i], widths[i - 1] if i else conv_out_channels, layers_per_block,
                    self_attention=True, **common)  # fmt: skip
            for i in reversed(range(len(widths) - 1))
        )
        self.out = _out_head(conv_out_channels, in_channels, norm_num_groups)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
    ) -> SimpleNamespace:
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        x = self.conv_in(sample)
        skips = []
        for stage in self.down:
            skips.append(x)
            x = stage(x, temb, encoder_hidden_states)
        x = self.mid(x, temb, encoder_hidden_states)
        for stage in self.up:
            x = stage(x, skips.pop(), temb, encoder_hidden_states)
        return SimpleNamespace(sample=self.out(x))
