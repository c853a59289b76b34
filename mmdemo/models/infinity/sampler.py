"""Sampling Infinity: scale after scale, every bit of every token, with guidance on the logits.

At scale k the transformer sees the tokens of scale k (its input is the running sum of all earlier codes,
resampled to scale k's grid); with the KV cache it attends to the cached keys and values of scales < k,
without it the whole sequence so far is recomputed under the block-causal mask (same result, used to test
the cache). Each token's ``2d`` logits are ``d`` independent two-way choices. Classifier-free guidance mixes
conditional and unconditional logits: ``cfg * cond + (1 - cfg) * uncond``, after dividing by ``tau``. Top-k
and top-p act on each bit's two logits. All randomness comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmdemo.models.guards import check_finite
from mmdemo.models.infinity.bsq_vae import upsample_codes
from mmdemo.models.infinity.schedules import full_size_rope_grid
from mmdemo.models.infinity.transformer import Infinity
from mmdemo.previews import preview_steps


@dataclass
class SamplingOptions:
    """How to draw the bits.

    Args:
        cfg: guidance scale on the logits; 1 disables guidance (no unconditional pass), 0 is unconditional.
        tau: temperature dividing the logits, > 0 (smaller: more deterministic).
        top_k: keep the k most likely values per bit; 0 disables (with two values only k=1 matters: greedy).
        top_p: nucleus sampling per bit; 0 or 1 disables.
        use_cache: reuse keys/values of earlier scales (the fast path).
    """

    cfg: float = 3.0
    tau: float = 0.5
    top_k: int = 0
    top_p: float = 0.97
    use_cache: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise ValueError(f"cfg must be a finite number >= 0, got {self.cfg!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau!r}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be between 0 and 1, got {self.top_p!r}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be a whole number >= 0, got {self.top_k!r}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set to -inf the values top-k / top-p exclude, along the last dimension (the most likely one stays)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)  # ascending
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1.0 - top_p
        tail[..., -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return logits


def sample_from_logits(
    logits: torch.Tensor, generator: torch.Generator | None, top_k: int = 0, top_p: float = 0.0
) -> torch.Tensor:
    """(..., V) logits -> (...) sampled indices."""
    probs = filter_logits(logits.float(), top_k, top_p).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _pad_text(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the token axis (dim 1) of two batches to the same length."""
    T = max(a.shape[1], b.shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = T - t.shape[1]
        if extra == 0:
            return t
        widths = [0, 0] * (t.dim() - 2) + [0, extra]
        return F.pad(t, widths)

    return pad(a), pad(b)


@torch.no_grad()
def sample_codes(
    model: Infinity,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    scales: list[tuple[int, int]],
    options: SamplingOptions,
    generator: torch.Generator | None,
    *,
    rope_grid: tuple[int, int] | None = None,
    negative: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    preview: Callable[[int, int, torch.Tensor], None] | None = None,
    model_name: str = "infinity-2b",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Draw one image's codes per prompt.

    Args:
        text / text_mask: T5 features (B, T, Ct) and their mask (B, T).
        scales: the (h, w) grids, coarse to fine, first (1, 1).
        rope_grid: grid the RoPE positions are spread over (default: the template's 1M grid, as upstream).
        negative: features and mask of a negative prompt (B, T', Ct), used instead of the learned empty
            prompt for the unconditional half of guidance.
        model_name: named in the :class:`~mmdemo.models.guards.NonFiniteOutput` raised when a scale's logits
            hold NaN or infinity (bits drawn from them would be meaningless).
        preview: ``preview(k, len(scales), codes)`` after every finished scale k but the last: the codes summed
            so far, area-resampled to scale k's own grid, which holds all their detail (decoding them there costs
            a fraction of the final decode). It only reads: the codes drawn are the same without it.
    Returns:
        summed codes (B, d, H, W) for the VAE decoder, and the sampled bits of each scale [(B, h, w, d)].
    """
    B = text.shape[0]
    d = model.config.codebook_dim
    guided = options.cfg != 1.0
    if guided:
        if negative is None:
            un_text, un_mask = model.uncond_text(text_mask).to(text.dtype), text_mask
        else:
            un_text, un_mask = negative
        text, un_text = _pad_text(text, un_text)
        text_mask, un_mask = _pad_text(text_mask, un_mask)
        text, text_mask = torch.cat((text, un_text)), torch.cat((text_mask, un_mask))
    cond, gss, ca_kv = model.encode_text(text, text_mask)
    device = cond.device
    cos, sin = model.rope_for(scales, rope_grid or full_size_rope_grid(scales), device)
    caches: list[dict[str, torch.Tensor]] | None = [{} for _ in model.blocks] if options.use_cache else None

    final = scales[-1]
    summed = torch.zeros(B, d, *final, device=device)
    x = model.start_tokens(cond)  # (bs, 1, C): the first scale's only token
    history: list[torch.Tensor] = []  # inputs of earlier scales (uncached path)
    all_bits: list[torch.Tensor] = []
    offset = 0
    preview_at = preview_steps(len(scales), count=len(scales) - 1)  # every finished scale
    for k, (h, w) in enumerate(scales):
        n = h * w
        if caches is not None:
            levels = torch.full((n,), k, device=device)
            rope = (cos[offset : offset + n], sin[offset : offset + n])
            out = model.run_blocks(model.add_level(x, levels), gss, ca_kv, text_mask, rope, None, caches)
        else:
            history.append(x)
            seq = torch.cat(history, dim=1)
            levels = torch.cat(
                [torch.full((a * b,), i, device=device) for i, (a, b) in enumerate(scales[: k + 1])]
            )
            mask = levels[:, None] >= levels[None, :]
            rope = (cos[: offset + n], sin[: offset + n])
            out = model.run_blocks(model.add_level(seq, levels), gss, ca_kv, text_mask, rope, mask)[:, -n:]
        logits = model.logits(out, cond) / options.tau  # (bs, n, 2d)
        if guided:
            logits = options.cfg * logits[:B] + (1.0 - options.cfg) * logits[B:]
        check_finite(logits, model=model_name, where=f"at scale {k + 1} of {len(scales)} ({h}x{w}, the logits)")
        bits = sample_from_logits(logits.view(B, n, d, 2), generator, options.top_k, options.top_p)
        bits = bits.view(B, h, w, d)
        all_bits.append(bits)
        codes = (bits.float() * 2 - 1).permute(0, 3, 1, 2) / math.sqrt(d)  # (B, d, h, w)
        summed = summed + upsample_codes(codes, final)
        if preview is not None and k + 1 in preview_at:
            preview(k + 1, len(scales), F.interpolate(summed, size=(h, w), mode="area"))
        if k + 1 < len(scales):
            nxt = upsample_codes(summed, scales[k + 1]).flatten(2).transpose(1, 2)  # (B, n', d)
            x = model.embed_scale_input(nxt)
            if guided:
                x = torch.cat((x, x))
        offset += n
        if progress is not None:
            progress(k + 1, len(scales))
    return summed, all_bits


def kv_cache_bytes(
    cfg_depth: int, width: int, num_tokens: int, batch: int = 2, bytes_per_value: int = 2
) -> int:
    """Size of the self-attention KV cache after the last scale: keys + values of every block.

    ``batch`` 2 = one image with classifier-free guidance; bf16 = 2 bytes per value.
    """
    return 2 * cfg_depth * batch * num_tokens * width * bytes_per_value
