"""The Infinity transformer (arXiv 2412.04431): bitwise next-scale prediction conditioned on T5 features.

Read top to bottom: norms, 2D rotary positions, self-attention (cosine, KV cache), cross-attention (also
used, with a learned query, to pool the prompt into one vector), feed-forward, the block, the head's adaptive
norm, the config, and the model last.

Every parameter and buffer name equals the one in the official ``infinity_2b_reg.pth`` (e.g.
``block_chunks.3.module.1.sa.mat_qkv.weight``, ``text_proj_for_sos.ca.mat_q``), so the file loads without a
renaming map. Attention is PyTorch's ``scaled_dot_product_attention`` on any device.

Shapes: B batch, L tokens, C width, H heads, c head width, T text tokens, d bits per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.models.infinity.schedules import full_size_rope_grid


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


# ------------------------------------------------------------------------------------------ 2D RoPE


def rope_angles(
    scales: list[tuple[int, int]], rope_grid: tuple[int, int], head_dim: int, base: float = 10000.0
) -> torch.Tensor:
    """Rotation angles (L, head_dim / 2) of every token of ``scales``, in sequence order.

    Half of each head's rotated pairs encode the row, half the column. A scale's (h, w) grid is spread over
    the final grid ``rope_grid`` (row i sits at round(i * H / h)), so a coarse scale and the matching patch of
    a fine scale share positions.

    Everything is computed as the official model computes it, in float32. That decides ties: the position
    ``i * (H / h)`` is rounded half to even, and in float32 27 * (111 / 54) is exactly 55.5 and rounds to 56,
    where float64 gives 55.4999... and 55 (a different position for 18 tokens of the 3:1 and 1:3 templates).
    The angles are float32 products of the position and a float32 frequency, as upstream's table holds them.
    """
    quarter = head_dim // 4
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    big_h, big_w = rope_grid
    rows, cols = [], []
    for h, w in scales:
        # The Python double H / h is rounded to float32 when it multiplies a float32 tensor, as upstream's does.
        ys = (torch.arange(h, dtype=torch.float32) * (big_h / h)).round()
        xs = (torch.arange(w, dtype=torch.float32) * (big_w / w)).round()
        rows.append(ys[:, None].expand(h, w).reshape(-1))
        cols.append(xs[None, :].expand(h, w).reshape(-1))
    ys, xs = torch.cat(rows), torch.cat(cols)
    assert inv_freq.numel() == quarter
    return torch.cat([ys[:, None] * inv_freq, xs[:, None] * inv_freq], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of (B, H, L, c) by the angles whose cos/sin are (L, c/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


# ------------------------------------------------------------------------------------------ attention


class SelfAttention(nn.Module):
    """Cosine attention: q and k are l2-normalised and q scaled by a learned per-head factor (<= 100)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))  # k has no bias; kept as the official buffer
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100.0)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        gain = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q.float(), dim=-1) * gain
        k = F.normalize(k.float(), dim=-1)
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        if cache is not None:
            # Sampling: earlier scales' keys and values are kept, the new scale's tokens see all of them.
            if "k" in cache:
                k = torch.cat((cache["k"], k), dim=2)
                v = torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class CrossAttention(nn.Module):
    """Queries from the image tokens (or one learned query per head when pooling), keys/values from text."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, for_attn_pool: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.for_attn_pool = for_attn_pool
        if for_attn_pool:
            self.mat_q = nn.Parameter(torch.randn(1, num_heads, self.head_dim) * math.sqrt(1 / dim / 3))
        else:
            self.mat_q = nn.Linear(dim, dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor | None, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) or None (pooling); text (B, T, kv_dim); text_mask (B, T) True where a token is real."""
        B, T, _ = text.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = F.linear(text, self.mat_kv.weight, bias).view(B, T, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, c)
        if self.for_attn_pool:
            q = self.mat_q.to(k.dtype).unsqueeze(2).expand(B, -1, 1, -1)  # (B, H, 1, c)
        else:
            q = self.mat_q(x).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        mask = text_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], -1))


class TextAttentivePool(nn.Module):
    """Prompt -> one vector (the start token and the adaLN condition) by attention from a learned query."""

    def __init__(self, text_dim: int, dim: int, head_dim: int):
        super().__init__()
        self.ca = CrossAttention(dim, text_dim, num_heads=text_dim // head_dim, for_attn_pool=True)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:  # -> (B, C)
        return self.ca(None, text, text_mask).squeeze(1)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttnBlock(nn.Module):
    """Pre-norm block: adaLN self-attention, cross-attention to text, adaLN feed-forward.

    The adaLN gains come from one projection shared by all blocks plus this block's own offset ``ada_gss``
    (the paper's "shared adaLN"): (gamma1, gamma2, scale1, scale2, shift1, shift2).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.sa = SelfAttention(dim, num_heads)
        self.ca = CrossAttention(dim, dim, num_heads)
        self.ffn = FFN(dim, mlp_hidden)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ca_norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, L, C); cond (B, 1, 6, C) from the shared adaLN projection."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + cond).unbind(2)  # each (B, 1, C)
        h = self.ln_wo_grad(x.float()) * (scale1 + 1) + shift1
        x = x + self.sa(h.to(x.dtype), rope, mask, cache) * gamma1
        x = x + self.ca(self.ca_norm(x), text, text_mask)
        h = self.ln_wo_grad(x.float()) * (scale2 + 1) + shift2
        return x + self.ffn(h.to(x.dtype)) * gamma2


class BlockChunk(nn.Module):
    """A group of consecutive blocks; the official checkpoint stores blocks as ``block_chunks.i.module.j``."""

    def __init__(self, blocks: list[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, cond_dim: int, eps: float):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x) * (scale + 1) + shift


class SharedAdaLin(nn.Linear):
    """The one adaLN projection all blocks share: (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


# ------------------------------------------------------------------------------------------ model


@dataclass
class InfinityConfig:
    """Architecture of the Infinity transformer (defaults: Infinity-2B).

    Args:
        depth: number of blocks.
        width: model width C (also the condition width D).
        num_heads: attention heads.
        mlp_ratio: feed-forward hidden = round(width * mlp_ratio / 256) * 256, as upstream.
        block_chunks: blocks are stored in this many chunks (only changes parameter names).
        text_channels: width of the text encoder's features (flan-t5-xl: 2048).
        text_maxlen: rows of the learned unconditional text ``cfg_uncond`` (longest prompt in tokens).
        codebook_dim: bits per token d of the VAE; the head predicts 2 logits per bit.
        pool_head_dim: head width of the prompt-pooling attention (heads = text_channels / pool_head_dim).
        num_levels: rows of the scale embedding ``lvl_embed`` (one per scale index).
        norm_eps: LayerNorm / RMSNorm epsilon.
        rope_base: RoPE frequency base.
        cond_drop_rate: training only: probability of replacing a prompt by ``cfg_uncond``.
    """

    depth: int = 32
    width: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    block_chunks: int = 8
    text_channels: int = 2048
    text_maxlen: int = 512
    codebook_dim: int = 32
    pool_head_dim: int = 128
    num_levels: int = 15
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    cond_drop_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.width % self.num_heads or (self.width // self.num_heads) % 4:
            raise ValueError("width / num_heads must be a multiple of 4 (2D RoPE rotates pairs per axis)")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible into {self.block_chunks} block chunks")
        if self.text_channels % self.pool_head_dim or self.width % (self.text_channels // self.pool_head_dim):
            raise ValueError("text_channels / pool_head_dim heads must divide both text_channels and width")

    @property
    def mlp_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256 or int(self.width * self.mlp_ratio)


class Infinity(nn.Module):
    """The transformer. ``forward`` is the teacher-forced training pass; sampling lives in ``sampler.py``."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.config = cfg
        C, Ct = cfg.width, cfg.text_channels
        uncond = torch.empty(cfg.text_maxlen, Ct)
        nn.init.trunc_normal_(uncond, std=1.2)
        self.cfg_uncond = nn.Parameter(uncond / Ct**0.5)
        self.text_norm = RMSNorm(Ct, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(Ct, C, cfg.pool_head_dim)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        init_std = math.sqrt(1 / C / 3)
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * init_std)
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)
        self.word_embed = nn.Linear(cfg.codebook_dim, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C))
        per_chunk = cfg.depth // cfg.block_chunks
        self.block_chunks = nn.ModuleList(
            BlockChunk(
                [CrossAttnBlock(C, cfg.num_heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(per_chunk)]
            )
            for _ in range(cfg.block_chunks)
        )
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, 2 * cfg.codebook_dim)

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [block for chunk in self.block_chunks for block in chunk.module]

    @property
    def head_dim(self) -> int:
        return self.config.width // self.config.num_heads

    # -------------------------------------------------------------- pieces shared by training and sampling

    def encode_text(
        self, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T5 features (B, T, Ct) -> start token / condition (B, C), adaLN gains (B, 1, 6, C), keys (B, T, C)."""
        text = self.text_norm(text)
        cond = self.text_proj_for_sos(text, text_mask).float()
        return cond, self.shared_ada_lin(cond), self.text_proj_for_ca(text)

    def uncond_text(self, text_mask: torch.Tensor) -> torch.Tensor:
        """The learned "empty prompt": the first rows of ``cfg_uncond``, as many as each prompt has tokens."""
        T = text_mask.shape[1]
        if T > self.config.text_maxlen:
            raise ValueError(
                f"prompt has {T} tokens; the model was trained with at most {self.config.text_maxlen}"
            )
        rows = self.cfg_uncond[:T].unsqueeze(0).expand(text_mask.shape[0], -1, -1)
        return rows * text_mask[..., None].to(rows.dtype)

    def start_tokens(self, cond: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, 1, C)
        return cond.unsqueeze(1) + self.pos_start

    def embed_scale_input(self, codes_BLd: torch.Tensor) -> torch.Tensor:
        return self.word_embed(codes_BLd.to(self.word_embed.weight.dtype))

    def add_level(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Add the scale embedding; ``levels`` (L,) holds each token's scale index."""
        return x + self.lvl_embed(levels).to(x.dtype)

    def run_blocks(
        self,
        x: torch.Tensor,
        gss: torch.Tensor,
        ca_kv: torch.Tensor,
        text_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        caches: list[dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, gss, ca_kv, text_mask, rope, mask, None if caches is None else caches[i])
        return x

    def logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, 2d) in float32: for each bit, the logits of 0 and 1."""
        return self.head(self.head_nm(x.float(), cond.float()))

    def rope_for(
        self, scales: list[tuple[int, int]], rope_grid: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = rope_angles(scales, rope_grid, self.head_dim, self.config.rope_base).to(device)
        return angles.cos(), angles.sin()

    # -------------------------------------------------------------- training

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        scale_inputs: torch.Tensor,
        scales: list[tuple[int, int]],
        rope_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits for every scale at once.

        Args:
            text: T5 features (B, T, text_channels); text_mask: (B, T) bool.
            scale_inputs: (B, sum_{k>=1} h_k w_k, d) the summed codes of scales < k resampled to scale k
                (see :func:`mmdemo.models.infinity.bsq_vae.teacher_forcing_inputs`).
            scales: the schedule, first scale (1, 1).
            rope_grid: grid the RoPE positions are spread over (default: the template's 1M grid, the last of
                its 13 scales, as the official model always uses; see :func:`full_size_rope_grid`).
        Returns:
            (B, L, 2d) logits, L = sum of h_k w_k.
        """
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(text.shape[0], device=text.device) < self.config.cond_drop_rate
            text = torch.where(drop[:, None, None], self.uncond_text(text_mask).to(text.dtype), text)
        cond, gss, ca_kv = self.encode_text(text, text_mask)
        x = torch.cat((self.start_tokens(cond), self.embed_scale_input(scale_inputs)), dim=1)
        levels = torch.cat([torch.full((h * w,), k, device=x.device) for k, (h, w) in enumerate(scales)])
        x = self.add_level(x, levels)
        # Block-causal: a token sees every token of its own and of coarser scales.
        mask = levels[:, None] >= levels[None, :]
        rope = self.rope_for(scales, rope_grid or full_size_rope_grid(scales), x.device)
        x = self.run_blocks(x, gss, ca_kv, text_mask, rope, mask)
        return self.logits(x, cond)
