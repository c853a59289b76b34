"""Evaluate any text-to-image generator on fresh single-object Shapes prompts with ShapesEval.

    python train/evaluate_generator.py --model pixel-diffusion --profile demo --preset fast --n 64 --seed 1234 \
        --out runs/eval/pixel-fast

Prompts come from ``mmdemo.data.shapes.sample_single_object_prompts(n, seed)`` (scenes drawn with ``--seed``,
so they are not the training pictures); image ``i`` is generated with seed ``--seed + i`` through the public
API (``mmdemo.load_generator``), so every registered generator is evaluated the same way. Prints JSON
``{"color_acc", "shape_acc", "position_acc", "seconds_per_image", "n", ...}``, writes ``OUT/<i>.png``,
``OUT/prompts.csv`` (``file,prompt``) and a results JSON (``--json-out``; for the demo profile by default
``<checkpoints>/demo/<id>/eval_shapes_<preset>.json``, which the app's About tab reads).

A long evaluation (the latent model's 1000-step report preset: half a minute per picture on one CPU thread)
can be split over processes or GPUs and joined afterwards; the parts are exactly the pictures one run makes::

    python train/evaluate_generator.py --model latent-diffusion --preset report --n 32 --start 0 --out D --json-out a.json
    python train/evaluate_generator.py --model latent-diffusion --preset report --n 32 --start 32 --out D --json-out b.json
    python train/evaluate_generator.py --merge a.json b.json --json-out report.json --out D
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

from mmdemo.data.shapes import sample_single_object_prompts
from mmdemo.eval.shapes_eval import accuracies, judge
from mmdemo.interfaces import PRESETS
from mmdemo.registry import GENERATOR_IDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"generator id: {', '.join(GENERATOR_IDS)}")
    p.add_argument("--profile", choices=("demo", "full", "auto"), default="demo")
    p.add_argument("--preset", choices=PRESETS, default="fast")
    p.add_argument("--n", type=int, default=64, help="number of prompts")
    p.add_argument("--seed", type=int, default=1234, help="seeds the prompts and (as seed + i) each image")
    p.add_argument(
        "--start", type=int, default=0, help="first prompt index: evaluate prompts start .. start + n - 1"
    )
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--guidance", type=float, default=None, help="override the model's guidance")
    p.add_argument("--out", type=Path, help="folder for <i>.png and prompts.csv")
    p.add_argument("--json-out", type=Path, default=None, help="results JSON (default: see above)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, metavar="PART_JSON",
        help="join the results files of one evaluation split with --start into --json-out (and OUT/prompts.csv "
        "when --out is given); generates nothing",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.merge:
        if args.json_out is None:
            raise ValueError("--merge needs --json-out for the joined results")
        return args
    if args.model is None or args.out is None:
        raise ValueError("--model and --out are required (unless --merge)")
    if args.model not in GENERATOR_IDS:
        raise ValueError(f"unknown generator id {args.model!r}; valid ids: {', '.join(GENERATOR_IDS)}")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.start < 0:
        raise ValueError(f"--start must be >= 0, got {args.start}")
    if args.start > 0 and args.json_out is None:  # a part must not replace the whole run's results file
        raise ValueError("--start needs --json-out (join the parts with --merge)")
    return args


def default_json_out(args: argparse.Namespace, profile: str) -> Path:
    if profile == "demo":
        from mmdemo.weights import demo_dir

        return demo_dir(args.model) / f"eval_shapes_{args.preset}.json"
    return args.out / f"eval_shapes_{args.preset}.json"


def write_prompts_csv(out: Path, rows: list[dict]) -> None:
    with (out / "prompts.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "prompt"])
        writer.writerows([(r["file"], r["prompt"]) for r in rows])


def merge_parts(paths: list[Path]) -> dict:
    """One results dict from the parts of a split evaluation: same settings, pictures 0..N-1 exactly once."""
    parts = [json.loads(Path(path).read_text()) for path in paths]
    settings = ("model", "profile", "preset", "steps", "guidance", "seed")
    for path, part in zip(paths, parts):
        if any(part.get(key) != parts[0].get(key) for key in settings):
            raise ValueError(f"{path} was made with other settings than {paths[0]} ({', '.join(settings)})")
    rows = sorted((row for part in parts for row in part["images"]), key=lambda row: row["index"])
    if [row["index"] for row in rows] != list(range(len(rows))):
        raise ValueError(
            f"the parts must cover pictures 0..N-1 exactly once; got {[r['index'] for r in rows]}"
        )
    n = len(rows)
    return {
        **{f"{key}_acc": sum(row[f"{key}_ok"] for row in rows) / n for key in ("color", "shape", "position")},
        "n": n,
        "seconds_per_image": round(sum(row["seconds"] for row in rows) / n, 4),
        **{key: parts[0][key] for key in (*settings, "device", "machine")},
        "command": " ".join(["python", "train/evaluate_generator.py", *sys.argv[1:]]),
        "parts": [part["command"] for part in parts],
        "images": rows,
    }


def main(args: argparse.Namespace) -> dict:
    import mmdemo
    from mmdemo.runtime import default_device

    if args.merge:
        merged = merge_parts(args.merge)
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(merged, indent=1))
        if args.out is not None:  # the folder the parts wrote their pictures to: one prompts.csv for all
            write_prompts_csv(args.out, merged["images"])
        summary = {k: v for k, v in merged.items() if k != "images"}
        print(json.dumps(summary))
        return summary
    device = args.device or default_device()
    generator = mmdemo.load_generator(args.model, profile=args.profile, device=device)
    profile = generator.weights.profile
    args.out.mkdir(parents=True, exist_ok=True)
    # The prompt sequence is the same whatever --start: a split evaluation makes exactly one run's pictures.
    pairs = sample_single_object_prompts(args.start + args.n, args.seed)[args.start :]
    options = dict(steps=args.steps, guidance=args.guidance, preset=args.preset)
    generator.generate(pairs[0][0], seed=args.seed, **{**options, "steps": 1})  # warm-up, not timed
    judgements, rows, seconds = [], [], []
    for i, (prompt, _scene) in enumerate(pairs, start=args.start):
        started = time.perf_counter()
        image = generator.generate(prompt, seed=args.seed + i, **options)
        seconds.append(time.perf_counter() - started)
        name = f"{i}.png"
        image.save(args.out / name)
        judgement = judge(image, prompt)
        judgements.append(judgement)
        rows.append({"index": i, "file": name, "prompt": prompt, "color_ok": judgement.color_ok, "shape_ok": judgement.shape_ok,
                     "position_ok": judgement.position_ok, "read": [judgement.reading.color, judgement.reading.shape,
                     judgement.reading.position], "seconds": round(seconds[-1], 4)})  # fmt: skip
    write_prompts_csv(args.out, rows)
    summary = {
        **accuracies(judgements),
        "seconds_per_image": round(sum(seconds) / len(seconds), 4),
        "model": args.model,
        "profile": profile,
        "preset": args.preset,
        "steps": image.info.get("mmdemo_steps", args.steps),
        "guidance": image.info.get("mmdemo_guidance", args.guidance),
        "seed": args.seed,
        "start": args.start,
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "command": " ".join(["python", "train/evaluate_generator.py", *sys.argv[1:]]),
    }
    json_out = args.json_out or default_json_out(args, profile)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps({**summary, "images": rows}, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_args())
