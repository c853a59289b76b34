"""What a pixel budget costs Infinity: tokens, KV-cache memory of the 2B model, and measured time of the tiny one.

For each budget (square template) it prints the number of scales and tokens, the self-attention KV cache
Infinity-2B holds after the last scale (computed: 2 tensors x 32 blocks x 2 sequences for guidance x tokens x
2048 x 2 bytes in bf16), and the measured CPU time of sampling with the tiny demo transformer on the same
token grids (the official schedules; the demo weights when shipped, else random tiny weights: the time does
not depend on the values). Ratios are against the 0.06M budget measured in the same run; a second table
compares sampling with and without the KV cache::

    MMDEMO_NUM_THREADS=1 python bench/infinity_budget.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from mmdemo.models.infinity import Infinity, InfinityConfig, InfinityFamilyConfig, SamplingOptions
from mmdemo.models.infinity.sampler import kv_cache_bytes, sample_codes
from mmdemo.models.infinity.schedules import OFFICIAL_BUDGET_SCALES, PIXEL_BUDGETS, get_schedule
from mmdemo.registry import get_spec

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo" / "infinity-2b"


def tiny_transformer() -> tuple[Infinity, str]:
    import json

    config = get_spec("infinity-2b").tiny_config
    source = "random tiny weights"
    if (DEMO / "config.json").is_file():
        config = json.loads((DEMO / "config.json").read_text())
        source = "shipped demo weights"
    family = InfinityFamilyConfig(**{k: v for k, v in config.items()})
    model = Infinity(InfinityConfig(**family.transformer)).eval()
    if source.startswith("shipped"):
        from safetensors.torch import load_file

        from mmdemo.models.infinity import load_strict

        state = {k: v.float() for k, v in load_file(str(DEMO / "transformer.safetensors")).items()}
        load_strict(model, state, what="demo transformer")
    return model, source


def time_sampling(model: Infinity, scales, use_cache: bool, repeats: int) -> float:
    text = torch.randn(1, 12, model.config.text_channels)
    mask = torch.ones(1, 12, dtype=torch.bool)
    best = float("inf")
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        sample_codes(model, text, mask, scales, SamplingOptions(use_cache=use_cache), g)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (the best is kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("MMDEMO_NUM_THREADS", "1")))
    full = InfinityConfig(**get_spec("infinity-2b").full_config["transformer"])
    model, source = tiny_transformer()
    print(
        f"tiny transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters ({source}), "
        f"{torch.get_num_threads()} thread(s); 2B KV cache in bf16 with guidance (batch 2)\n"
    )
    header = (
        f"{'budget':>7} {'size':>10} {'scales':>6} {'tokens':>7} {'ratio':>6} {'2B KV cache':>12} "
        f"{'tiny CPU s':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    base_tokens = base_time = None
    for budget in PIXEL_BUDGETS:
        schedule = get_schedule(1.0, budget, OFFICIAL_BUDGET_SCALES)
        tokens = schedule.num_tokens
        seconds = time_sampling(model, list(schedule.scales), True, args.repeats)
        base_tokens = base_tokens or tokens
        base_time = base_time or seconds
        cache = kv_cache_bytes(full.depth, full.width, tokens) / 2**30
        h, w = schedule.image_size
        print(
            f"{budget:>7} {f'{w}x{h}':>10} {len(schedule.scales):>6} {tokens:>7} {tokens / base_tokens:>6.1f} "
            f"{cache:>9.2f} GiB {seconds:>10.3f} {seconds / base_time:>6.1f}"
        )
    print("\nKV cache vs recomputing every earlier scale (same tiny model, same seed):")
    for budget in ("0.06M", "0.25M"):
        scales = list(get_schedule(1.0, budget, OFFICIAL_BUDGET_SCALES).scales)
        cached = time_sampling(model, scales, True, args.repeats)
        full_recompute = time_sampling(model, scales, False, max(1, args.repeats - 1))
        print(
            f"{budget:>7}: cached {cached:.3f} s, uncached {full_recompute:.3f} s, "
            f"speed-up x{full_recompute / cached:.1f}"
        )


if __name__ == "__main__":
    main()
