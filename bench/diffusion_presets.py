"""Fast vs report sampling preset of our two diffusion models, measured in one run.

    python bench/diffusion_presets.py [--profile demo] [--n 3] [--report-n-latent 1] [--json]

For each model the same prompts and seeds are generated with the "report" preset (DDPM: 100 steps pixel,
1000 steps latent) and with the "fast" preset (DPM-Solver++ multistep, <= 25 steps), after one untimed
warm-up call; the wall time per image and the ratio report / fast are printed next to the ShapesEval
accuracies measured by ``train/evaluate_generator.py`` (read from ``eval_shapes_<preset>.json`` beside the
demo checkpoint; "-" where that evaluation has not been run).
"""

from __future__ import annotations

import argparse
import json
import time

MODELS = ("pixel-diffusion", "latent-diffusion")


def time_preset(generator, prompts: list[str], preset: str, seed: int) -> float:
    """Mean seconds per image for ``preset`` over ``prompts`` (one image per call, as the app runs it)."""
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        generator.generate(prompt, seed=seed + i, preset=preset)
    return (time.perf_counter() - started) / len(prompts)


def measured_accuracy(model_id: str, preset: str, profile: str) -> dict | None:
    from mmdemo.weights import demo_dir

    path = demo_dir(model_id) / f"eval_shapes_{preset}.json"
    if profile != "demo" or not path.is_file():
        return None
    return json.loads(path.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("demo", "full", "auto"), default="demo")
    p.add_argument("--n", type=int, default=3, help="images per preset and model")
    p.add_argument(
        "--report-n-latent", type=int, default=1, help="images for the 1000-step latent report preset"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if args.n < 1 or args.report_n_latent < 1:
        raise ValueError("--n and --report-n-latent must be >= 1")
    return args


def main(args: argparse.Namespace) -> list[dict]:
    import mmdemo
    from mmdemo.data.shapes import sample_single_object_prompts
    from mmdemo.runtime import default_device

    device = args.device or default_device()
    prompts = [p for p, _ in sample_single_object_prompts(args.n, args.seed)]
    rows = []
    for model_id in MODELS:
        generator = mmdemo.load_generator(model_id, profile=args.profile, device=device)
        generator.generate(prompts[0], seed=args.seed, steps=2)  # warm-up
        fast = time_preset(generator, prompts, "fast", args.seed)
        report_prompts = prompts[: args.report_n_latent] if model_id == "latent-diffusion" else prompts
        report = time_preset(generator, report_prompts, "report", args.seed)
        steps = generator.spec.options_for(generator.weights.profile)["steps"]
        row = {"model": model_id, "profile": generator.weights.profile, "device": device,
               "fast_steps": steps.default, "report_steps": steps.report_default,
               "fast_s_per_image": round(fast, 3), "report_s_per_image": round(report, 3),
               "report_over_fast": round(report / fast, 2), "n_fast": len(prompts), "n_report": len(report_prompts)}  # fmt: skip
        for preset in ("fast", "report"):
            measured = measured_accuracy(model_id, preset, generator.weights.profile)
            for key in ("color_acc", "shape_acc", "position_acc", "n"):
                row[f"{preset}_{key}"] = None if measured is None else measured[key]
        rows.append(row)
        del generator
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_rows(rows))
    return rows


def _acc(row: dict, preset: str) -> str:
    if row[f"{preset}_color_acc"] is None:
        return "-"
    return (f"{row[f'{preset}_color_acc']:.2f}/{row[f'{preset}_shape_acc']:.2f}/{row[f'{preset}_position_acc']:.2f}"
            f" (n={row[f'{preset}_n']})")  # fmt: skip


def format_rows(rows: list[dict]) -> str:
    header = (f"{'model':<17} {'fast s/img':>10} {'report s/img':>12} {'report/fast':>11}  "
              f"{'fast colour/shape/pos':<26} report colour/shape/pos")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<17} {r['fast_s_per_image']:>10.3f} {r['report_s_per_image']:>12.3f} "
            f"{r['report_over_fast']:>10.1f}x  {_acc(r, 'fast'):<26} {_acc(r, 'report')}"
        )
    lines.append(f"steps: fast {rows[0]['fast_steps']}/{rows[1]['fast_steps']} (pixel/latent), "
                 f"report {rows[0]['report_steps']}/{rows[1]['report_steps']}; device {rows[0]['device']}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
