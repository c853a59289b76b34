"""Two decoding claims of the Transformer-decoder captioners, measured on one model in one run.

1. KV cache: greedy decoding of 20 tokens keeping keys/values (the earlier tokens' self-attention ones, and
   the image's cross-attention ones computed once) vs re-running the whole decoder over the prefix and the image
   tokens at every step (``use_cache=False``, what decoding with ``nn.TransformerDecoder`` does), same features,
   same batch. Target >= 5x. Also printed: the share of the two caches (cross-attention keys/values kept,
   self-attention re-run over the prefix).
2. Batching: captioning 16 images in one batch vs one image at a time (preprocess + encoder + decoder,
   the app's path through ``Captioner.caption``). Target >= 3x.

    python bench/captioner_decoding.py                          # the shipped demo resnet18-xattn
    python bench/captioner_decoding.py --model clipb32-xattn
    python bench/captioner_decoding.py --random full            # full-size network, random weights

Prints one JSON line with the timings and ratios. Run it alone on the machine (nothing else using the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18-xattn", choices=("resnet18-xattn", "clipb32-xattn"))
    parser.add_argument(
        "--random",
        choices=("tiny", "full"),
        default=None,
        help="a randomly initialised network of this size instead of the demo checkpoint",
    )
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.batch < 2 or args.repeats < 1:
        raise ValueError("--tokens and --batch must be >= 2, --repeats >= 1")
    return args


def best_of(repeats: int, fn: Any) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times) if repeats < 3 else statistics.median(times)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from PIL import Image

    import mmdemo
    from mmdemo.captioners.base import TrainingInit
    from mmdemo.captioners.vocab import SOS_ID, Vocabulary
    from mmdemo.registry import get_spec
    from mmdemo.weights import ResolvedWeights

    torch.set_num_threads(int(os.environ.get("MMDEMO_NUM_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    spec = get_spec(args.model)
    cls = mmdemo.adapter_class(spec)
    if args.random:
        config = spec.tiny_config if args.random == "tiny" else spec.full_config
        words = [f"w{i}" for i in range(60)]
        network = cls.network_class.for_training(config, TrainingInit(train_captions=[" ".join(words)] * 2))
        captioner = cls(spec, ResolvedWeights.demo(spec, Path("random")), network, "cpu")
        source = f"random {args.random}"
    else:
        captioner = mmdemo.load_captioner(args.model, "demo", device="cpu")
        source = "demo checkpoint"
    network = captioner.network.eval()
    assert isinstance(network.vocab, Vocabulary)
    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(64, 64, 3, generator=generator) * 255).byte().numpy())
        for _ in range(args.batch)
    ]
    with torch.inference_mode():
        features = network.encode_images(network.preprocess(images))

        def decode(use_cache: bool) -> None:
            network.generate_ids(features, max_new_tokens=args.tokens, use_cache=use_cache, ignore_eos=True)

        def decode_image_cache_only() -> None:  # greedy, the image's keys/values kept, the prefix re-run
            memory_kv = network.memory(features)
            tokens = torch.full((len(features), 1), SOS_ID, dtype=torch.long)
            for _ in range(args.tokens):
                next_ids = network.decode(tokens, memory_kv)[:, -1].argmax(-1)
                tokens = torch.cat([tokens, next_ids[:, None]], dim=1)

        decode(True), decode(False), decode_image_cache_only()  # warm-up
        cached = best_of(args.repeats, lambda: decode(True))
        naive = best_of(args.repeats, lambda: decode(False))
        image_cache_only = best_of(args.repeats, decode_image_cache_only)
        same = torch.equal(
            network.generate_ids(features, max_new_tokens=args.tokens, use_cache=True, ignore_eos=True),
            network.generate_ids(features, max_new_tokens=args.tokens, use_cache=False, ignore_eos=True),
        )
    captioner.caption(images[:2], batch_size=2)  # warm-up
    batched = best_of(args.repeats, lambda: captioner.caption(images, batch_size=args.batch))
    one_by_one = best_of(args.repeats, lambda: [captioner.caption([image], batch_size=1) for image in images])
    result = {
        "model": args.model,
        "weights": source,
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "batch": args.batch,
        "kv_cached_s": round(cached, 4),
        "naive_s": round(naive, 4),
        "kv_cache_speedup": round(naive / cached, 2),
        "image_kv_only_s": round(image_cache_only, 4),
        "self_attention_cache_speedup": round(image_cache_only / cached, 2),
        "kv_cache_same_tokens": same,
        "batched_s": round(batched, 4),
        "one_by_one_s": round(one_by_one, 4),
        "batching_speedup": round(one_by_one / batched, 2),
        "targets": {"kv_cache_speedup": 5.0, "batching_speedup": 3.0},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
