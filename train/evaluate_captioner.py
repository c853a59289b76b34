"""Caption a dataset split with any captioner and score it: the report's BLEU and the COCO metrics.

    python train/evaluate_captioner.py --model resnet18-xattn --data runs/shapes_val --profile demo --split all
    python train/evaluate_captioner.py --model clipb32-xattn --data /data/flickr8k --profile full --split val

Prints JSON ``{"bleu1".."bleu4", "meteor", "rouge_l", "cider", "intervals", "n", "seconds_per_image", ...}``
(:func:`mmdemo.eval.captions.caption_metrics`: the report's BLEU as ``python -m mmdemo.eval.bleu`` computes
it, METEOR / ROUGE-L / CIDEr-D from pycocoevalcap, all 0-100, each with a 95 % bootstrap interval over
images), and writes into the run's folder ``--out-dir`` (default ``runs/eval/<model>-<dataset>``) the
generated captions (``captions.csv``, ``image,caption``) and the same JSON (``eval_<dataset>.json``;
``<dataset>`` is ``shapes`` when the folder has ``scenes.jsonl``, else its name). The record carries the
command that made it, the bootstrap seed and n.

The app's About tab reads the records shipped next to the weights (``checkpoints/demo/<id>/eval_*.json``);
an evaluation replaces one only when asked to, with ``--update-shipped``.

``--split val`` is the report's validation split (last 20 % of images); ``all`` uses every image (a fresh
Shapes set generated with an unused seed); ``train`` the first 80 %. ``--checkpoint DIR`` evaluates a
training output folder directly instead of the registry's weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from mmdemo.training import (
    add_data_argument,
    check_at_least_one,
    check_captions_folder,
    script_parser,
    set_threads,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmdemo.registry import CAPTIONER_IDS

    parser = script_parser(__doc__)
    parser.add_argument("--model", required=True, choices=CAPTIONER_IDS)
    add_data_argument(parser)
    parser.add_argument("--profile", choices=("demo", "full", "auto"), default="demo")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a training output folder to evaluate instead"
    )
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the split only")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="the run's folder (default runs/eval/<model>-<dataset>)"
    )
    parser.add_argument("--out", type=Path, default=None, help="captions CSV (default OUT_DIR/captions.csv)")
    parser.add_argument(
        "--json-out", type=Path, default=None, help="results JSON (default OUT_DIR/eval_<dataset>.json)"
    )
    parser.add_argument("--no-json-out", action="store_true", help="do not write the results JSON")
    parser.add_argument(
        "--update-shipped",
        action="store_true",
        help="also write the results JSON next to the weights (checkpoints/.../<id>/eval_<dataset>.json), "
        "replacing the record the About tab and README show",
    )
    parser.add_argument(
        "--metrics",
        default="bleu,meteor,rouge_l,cider",
        help="comma-separated: bleu (the report's), meteor, rouge_l, cider (the last three need Java)",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seeds the bootstrap intervals")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the results as the command
    from mmdemo.eval.captions import parse_metrics

    args.metrics = parse_metrics(args.metrics)
    check_captions_folder(args.data)
    check_at_least_one(args, ("limit", "batch_size"))
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        raise ValueError(
            f"--checkpoint {args.checkpoint} has no config.json (a train_captioner.py --out folder)"
        )
    return args


def split_images(corpus: Any, split: str) -> list[str]:
    from mmdemo.data.flickr8k import captioning_split

    if split == "all":
        return list(corpus.images)
    train, val = captioning_split(corpus)
    return [p.image for p in (train if split == "train" else val)]


def dataset_name(folder: Path) -> str:
    return "shapes" if (folder / "scenes.jsonl").is_file() else folder.resolve().name.lower()


def load(args: argparse.Namespace) -> Any:
    import mmdemo
    from mmdemo.registry import get_spec
    from mmdemo.weights import ResolvedWeights

    if args.checkpoint is None:
        return mmdemo.load_captioner(args.model, args.profile, device=args.device)
    spec = get_spec(args.model, "captioner")
    weights = ResolvedWeights.demo(spec, args.checkpoint, "--checkpoint")
    return mmdemo.adapter_class(spec).load(spec, weights, device=args.device)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mmdemo.data.flickr8k import load_flickr8k
    from mmdemo.eval.captions import caption_metrics

    set_threads()
    corpus = load_flickr8k(args.data)
    names = split_images(corpus, args.split)[: args.limit]
    captioner = load(args)
    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if args.num_beams is not None:
        options["num_beams"] = args.num_beams
    hypotheses: list[str] = []
    seconds = 0.0
    for start in range(0, len(names), args.batch_size):
        images = [
            corpus.open_image(n) for n in names[start : start + args.batch_size]
        ]  # reading is not timed
        began = time.perf_counter()
        hypotheses.extend(result.caption for result in captioner.caption(images, **options))
        seconds += time.perf_counter() - began
    scores = caption_metrics(
        hypotheses,
        [corpus.captions[n] for n in names],
        args.metrics,
        resamples=args.resamples,
        seed=args.seed,
    )
    folder = args.checkpoint or captioner.weights["captioner"]
    dataset = dataset_name(args.data)
    metric_keys = [
        k for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider") if k in scores
    ]
    result = {
        **{k: round(float(scores[k]), 2) for k in metric_keys},
        "intervals": scores["intervals"],
        "n": int(scores["n"]),
        "seconds_per_image": round(seconds / len(names), 5),
        "model": args.model,
        "profile": captioner.weights.profile,
        "weights": str(folder),
        "data": str(args.data),
        "dataset": dataset,
        "split": args.split,
        "options": options,
        "seed": args.seed,
        "bootstrap": scores["bootstrap"],
        "command": " ".join(["python", "train/evaluate_captioner.py", *args.argv]),
        "device": str(getattr(captioner, "device", "cpu")),
        "threads": torch.get_num_threads(),
    }
    out_dir = args.out_dir or Path("runs") / "eval" / f"{args.model}-{dataset}"
    captions_csv = args.out or out_dir / "captions.csv"
    captions_csv.parent.mkdir(parents=True, exist_ok=True)
    with captions_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(zip(names, hypotheses))
    targets = [] if args.no_json_out else [args.json_out or out_dir / f"eval_{dataset}.json"]
    if args.update_shipped:
        targets.append(Path(folder) / f"eval_{dataset}.json")
    for json_out in targets:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=1) + "\n")
        except OSError as err:
            print(f"warning: could not write {json_out}: {err}; pass --json-out", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
