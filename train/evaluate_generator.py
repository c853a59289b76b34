"""Evaluate text-to-image generators: alignment and image quality with 95 % intervals, and a comparison gallery.

    python train/evaluate_generator.py --model pixel-diffusion --profile demo --preset fast --n 64 --seed 1234 \
        --out runs/eval/pixel-fast
    python train/evaluate_generator.py --models all --prompts prompts.txt --seeds 2 --out runs/gallery
    accelerate launch --num_processes 4 train/evaluate_generator.py --models all --out runs/eval/all

Prompts: ``--prompts FILE`` (one per line, or a CSV with a ``prompt`` or ``caption`` column), else ``--n``
fresh single-object Shapes prompts drawn with ``--seed`` (``mmdemo.data.shapes.sample_single_object_prompts``,
so not the training pictures). Picture ``j`` of prompt ``i`` is generated with seed
``--seed + i + j * n_prompts`` through the public API (``mmdemo.load_generator``), so every registered
generator is evaluated the same way and a picture does not depend on how the work was split.

Scores, each with a 95 % bootstrap interval over pictures (:mod:`mmdemo.eval.bootstrap`):

* demo weights: ShapesEval colour / shape / position accuracy (judged from the pixels) and their mean;
* full weights: CLIP score (open_clip ViT-B-32, where its weights are present);
* ``--real-images DIR``: FID and KID against real pictures (torchmetrics, InceptionV3 features where its
  weights are present; :mod:`mmdemo.eval.image_quality`);
* seconds per picture.

Writes, under ``--out``: the pictures and ``prompts.csv`` (``file,prompt``) and a results JSON per model
(with one model: ``OUT/<i>.png`` and ``OUT/eval_<prompts>_<preset>.json``; with several: the same in
``OUT/<model>/``), and with several models (or ``--gallery``) ``OUT/gallery.html`` (a self-contained page:
prompt x model grid, each picture with its seed, time and score, sortable by score), ``OUT/gallery.csv`` and
``OUT/comparison.json`` (every pair of models: do their intervals overlap?). Records carry the command,
seed and n. The records shipped next to the weights, which the About tab reads, are replaced only with
``--update-shipped``.

Several processes (``accelerate launch``, on GPUs or CPUs) split the pictures between them
(``PartialState().split_between_processes``); the main process gathers the rows and writes every file. The
pictures and scores are the same as one process makes.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mmdemo.data.shapes import sample_single_object_prompts
from mmdemo.eval.bootstrap import RESAMPLES, compare, mean_interval
from mmdemo.interfaces import PRESETS
from mmdemo.registry import GENERATOR_IDS

SHAPES_KEYS = ("color", "shape", "position")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"one generator id: {', '.join(GENERATOR_IDS)}")
    p.add_argument("--models", help="several: 'all' or comma-separated ids (a gallery compares them)")
    p.add_argument("--profile", choices=("demo", "full", "auto"), default="demo")
    p.add_argument("--preset", choices=PRESETS, default="fast")
    p.add_argument("--prompts", type=Path, default=None, help="prompts file (a line each, or CSV)")
    p.add_argument(
        "--n", type=int, default=64, help="number of prompts (Shapes prompts, or the file's first n)"
    )
    p.add_argument("--seeds", type=int, default=1, help="pictures per prompt and model, each its own seed")
    p.add_argument("--seed", type=int, default=1234, help="seeds the prompts and (as seed + i) each picture")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--guidance", type=float, default=None, help="override the model's guidance")
    p.add_argument("--out", type=Path, required=True, help="the run's folder")
    p.add_argument("--json-out", type=Path, default=None, help="results JSON of a single --model")
    p.add_argument(
        "--update-shipped", action="store_true",
        help="also write each model's results JSON next to its weights, replacing the record the About tab shows",
    )  # fmt: skip
    p.add_argument("--real-images", type=Path, default=None, help="folder of real pictures: FID and KID")
    p.add_argument("--real-limit", type=int, default=1000, help="at most this many real pictures")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples for the intervals")
    p.add_argument("--gallery", action="store_true", help="write the gallery for a single model too")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the results as the command
    if (args.model is None) == (args.models is None):
        raise ValueError("name the generator(s): --model ID or --models all|ID,ID")
    names = args.model if args.model is not None else args.models
    args.model_ids = (
        list(GENERATOR_IDS) if names == "all" else [m.strip() for m in names.split(",") if m.strip()]
    )
    for model_id in args.model_ids:
        if model_id not in GENERATOR_IDS:
            raise ValueError(f"unknown generator id {model_id!r}; valid ids: {', '.join(GENERATOR_IDS)}")
    args.several = args.models is not None
    if args.several and args.json_out is not None:
        raise ValueError(
            "--json-out names the results of one --model; with --models each goes to OUT/<model>/"
        )
    for flag in ("n", "seeds"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.prompts is not None and not args.prompts.is_file():
        raise ValueError(f"--prompts {args.prompts}: no such file")
    if args.real_images is not None and not args.real_images.is_dir():
        raise ValueError(f"--real-images {args.real_images}: no such folder")
    return args


def load_prompts(args: argparse.Namespace) -> tuple[list[str], str]:
    """The prompts and a short name for them (``shapes``, or the prompts file's stem)."""
    if args.prompts is None:
        return [prompt for prompt, _ in sample_single_object_prompts(args.n, args.seed)], "shapes"
    text = args.prompts.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(text.splitlines()))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    column = next((header.index(name) for name in ("prompt", "caption") if name in header), None)
    if column is not None:
        prompts = [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {args.prompts} holds no prompt")
    return prompts[: args.n], args.prompts.stem


def generate_share(generator: Any, model_id: str, items: list[tuple[int, int]], prompts: list[str],
                   args: argparse.Namespace, folder: Path) -> list[dict]:  # fmt: skip
    """This process's pictures: one row per (prompt index, seed index) with file, time and scores."""
    from mmdemo.eval.alignment import score_alignment
    from mmdemo.eval.shapes_eval import judge

    options = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None}
    rows = []
    for i, j in items:
        seed = args.seed + i + j * len(prompts)
        row: dict[str, Any] = {
            "index": i,
            "seed_index": j,
            "seed": seed,
            "prompt": prompts[i],
            "model": model_id,
        }
        try:
            started = time.perf_counter()
            result = generator.generate(prompts[i], seed=seed, preset=args.preset, **options)
            row["seconds"] = round(time.perf_counter() - started, 4)
        except Exception as err:  # noqa: BLE001 - one failing picture is a row with its error, not a crash
            rows.append({**row, "file": None, "error": f"{type(err).__name__}: {err}"})
            continue
        name = f"{i}.png" if args.seeds == 1 else f"{i}_{j}.png"
        result.image.save(folder / name)
        score, score_name = score_alignment(result.image, prompts[i], generator.weights.profile)
        row.update(file=name, score=score, score_name=score_name, settings=_jsonable(result.settings))
        if generator.weights.profile == "demo":
            verdict = judge(result.image, prompts[i])
            row.update({f"{k}_ok": bool(getattr(verdict, f"{k}_ok")) for k in SHAPES_KEYS})
            row["read"] = [verdict.reading.color, verdict.reading.shape, verdict.reading.position]
        rows.append(row)
    return rows


def _jsonable(settings: dict) -> dict:
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in settings.items()
    }


def summarise(rows: list[dict], args: argparse.Namespace, real: list[Path] | None, folder: Path) -> dict:
    """Headline scores with intervals from the gathered rows (main process only)."""
    done = [r for r in rows if r.get("file")]
    boot = dict(resamples=args.resamples, seed=args.seed)
    summary: dict[str, Any] = {"n": len(done), "failed": len(rows) - len(done)}
    intervals: dict[str, list[float]] = {}

    def add(key: str, values: list[float], digits: int = 4) -> None:
        if not values:
            return
        summary[key] = round(sum(values) / len(values), digits)
        interval = mean_interval(values, **boot)
        if interval is not None:
            intervals[key] = interval.to_json(digits)

    if done and all(f"{k}_ok" in r for r in done for k in SHAPES_KEYS):
        for key in SHAPES_KEYS:
            add(f"{key}_acc", [float(r[f"{key}_ok"]) for r in done])
    scored = [r for r in done if r.get("score") is not None]
    if scored:
        name = scored[0]["score_name"]
        add("clip_score" if name.startswith("CLIP") else "shapes_eval", [float(r["score"]) for r in scored])
    elif done:
        summary["score_unavailable"] = done[0].get("score_name", "")
    add("seconds_per_image", [float(r["seconds"]) for r in done])
    if real and len(done) >= 2:
        from mmdemo.eval.image_quality import fid_kid

        quality = fid_kid(
            [folder / r["file"] for r in done], real, resamples=min(args.resamples, 200), seed=args.seed
        )
        for key in ("fid", "kid"):
            summary[key] = quality.get(key)
            if quality.get(f"{key}_interval"):
                intervals[key] = quality[f"{key}_interval"]
        if "unavailable" in quality:
            summary["fid_kid_unavailable"] = quality["unavailable"]
        else:
            summary.update(fid_features=quality["features"], n_real=quality["n_real"])
    summary["intervals"] = intervals
    return summary


def headline(summary: dict) -> str | None:
    """The score a comparison of two models uses: ShapesEval's mean, else CLIP score."""
    return next((k for k in ("shapes_eval", "clip_score") if summary.get(k) is not None), None)


def comparisons(summaries: dict[str, dict]) -> list[str]:
    """One sentence per pair of models on their headline score: do their 95 % intervals overlap?"""
    lines = []
    ids = list(summaries)
    for a_index, a in enumerate(ids):
        for b in ids[a_index + 1 :]:
            key = headline(summaries[a])
            if key is None or key != headline(summaries[b]):
                continue
            sa, sb = summaries[a], summaries[b]
            lines.append(
                f"{key}: "
                + compare(a, sa[key], sa["intervals"].get(key), b, sb[key], sb["intervals"].get(key))
            )
    return lines


def main(args: argparse.Namespace) -> dict:
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    import mmdemo
    from mmdemo.eval.gallery import GalleryCell, write_gallery
    from mmdemo.runtime import default_device

    # cpu=True on a machine without CUDA makes accelerate form a gloo (MULTI_CPU) group from the launcher's
    # environment; otherwise a CPU-only launch would run every process as a lone rank 0.
    state = PartialState(cpu=not torch.cuda.is_available())
    device = args.device or (str(state.device) if state.num_processes > 1 else default_device())
    prompts, prompt_set = load_prompts(args)
    real = None
    if args.real_images is not None:
        from mmdemo.eval.image_quality import real_images

        real = real_images(args.real_images, args.real_limit)
    command = " ".join(["python", "train/evaluate_generator.py", *args.argv])
    items = [(i, j) for i in range(len(prompts)) for j in range(args.seeds)]
    summaries: dict[str, dict] = {}
    all_rows: list[dict] = []
    for model_id in args.model_ids:
        folder = args.out / model_id if args.several else args.out
        folder.mkdir(parents=True, exist_ok=True)
        failure, generator, profile = None, None, args.profile
        try:
            generator = mmdemo.load_generator(model_id, profile=args.profile, device=device)
            profile = generator.weights.profile
            # Warm-up, not timed: the first call pays for lazy initialisation (one step where steps exist).
            generator.generate(prompts[0], seed=args.seed, preset=args.preset, steps=1)
        except Exception as err:  # noqa: BLE001 - one model failing never stops the others
            failure = f"{type(err).__name__}: {err}"
            if state.is_main_process:
                traceback.print_exc()
        rows: list[dict] = []
        if failure is None:
            with state.split_between_processes(items) as share:
                rows = generate_share(generator, model_id, list(share), prompts, args, folder)
        rows = gather_object(rows) if state.num_processes > 1 else rows
        del generator
        if not state.is_main_process:
            continue
        rows.sort(key=lambda r: (r["index"], r["seed_index"]))
        if failure is not None:
            rows = [{"index": i, "seed_index": j, "seed": args.seed + i + j * len(prompts), "prompt": prompts[i],
                     "model": model_id, "file": None, "error": failure} for i, j in items]  # fmt: skip
        summary = {
            **summarise(rows, args, real, folder),
            "model": model_id,
            "profile": profile,
            "preset": args.preset,
            # What the sampler used (the preset's steps unless overridden), as the first picture reports it.
            "steps": next((r["settings"].get("steps") for r in rows if r.get("settings")), args.steps),
            "guidance": next(
                (r["settings"].get("guidance") for r in rows if r.get("settings")), args.guidance
            ),
            "prompts": prompt_set,
            "seed": args.seed,
            "seeds": args.seeds,
            "device": device,
            "processes": state.num_processes,
            "distributed_type": str(state.distributed_type),
            "machine": platform.processor() or platform.machine(),
            "command": command,
            **({"error": failure} if failure else {}),
        }
        summaries[model_id] = summary
        all_rows.extend(rows)
        record = {**summary, "images": rows}
        with (folder / "prompts.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "prompt"])
            writer.writerows([(r["file"], r["prompt"]) for r in rows if r.get("file")])
        name = f"eval_{prompt_set}_{args.preset}.json"
        targets = [args.json_out or folder / name]
        if args.update_shipped and failure is None:
            targets.append(shipped_folder(model_id, profile) / name)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(summary), flush=True)
    if not state.is_main_process:
        return {}
    result: dict[str, Any] = summaries[args.model_ids[0]] if not args.several else {"models": summaries}
    if args.several or args.gallery:
        cells = [
            GalleryCell(r["index"], r["prompt"], r["model"], r["seed"],
                        (Path(r["model"]) / r["file"] if args.several else Path(r["file"])) if r.get("file") else None,
                        r.get("seconds"), r.get("score"), r.get("score_name", ""), r.get("error", ""))
            for r in all_rows
        ]  # fmt: skip
        heads = {m: {k: s[k] for k in ("shapes_eval", "clip_score", "fid") if s.get(k) is not None}
                 for m, s in summaries.items()}  # fmt: skip
        page, table = write_gallery(args.out, cells, args.model_ids, summary=heads, command=command)
        lines = comparisons(summaries)
        (args.out / "comparison.json").write_text(
            json.dumps({"command": command, "models": summaries, "comparisons": lines}, indent=1) + "\n"
        )
        for line in lines:
            print(line)
        print(f"gallery: {page} ({table})")
        if args.several:
            result["comparisons"] = lines
    return result


def shipped_folder(model_id: str, profile: str) -> Path:
    """Where the About tab reads this model's records: its demo folder, or its full-weights folder."""
    from mmdemo.weights import checkpoint_root, demo_dir

    return demo_dir(model_id) if profile == "demo" else checkpoint_root() / model_id


if __name__ == "__main__":
    main(parse_args())
