"""What live previews cost: each generator with previews on vs off, the same call, the median of a few repeats.

    python bench/previews.py [--profile demo] [--models all|ID,ID] [--repeats 7] [--json]

Per model: one untimed warm-up call with previews and one without (loads the weights, and fits SDXL's
latent-to-RGB map on the first preview of larger pictures), then ``--repeats`` pairs of calls, off and on
interleaved so that a busy machine slows both alike, at the fast preset with one prompt and seed. The preview
callback encodes each picture as PNG, as the app's page does before sending it, so the "on" time includes
what showing a preview costs the server. Prints the median seconds off and on, their ratio (target: at most
1.10), and how many previews a call drew. The final pictures of the on and off calls are checked to be the
same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time


def time_call(generator, prompt: str, seed: int, previews: list | None) -> tuple[float, bytes]:
    """Seconds for one fast-preset call, and its picture's bytes; ``previews`` collects PNGs when given."""

    def keep(done: int, total: int, picture) -> None:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        previews.append(buffer.getvalue())

    started = time.perf_counter()
    result = generator.generate(
        prompt, seed=seed, preset="fast", preview=keep if previews is not None else None
    )
    return time.perf_counter() - started, result.image.tobytes()


def measure(model_id: str, profile: str, repeats: int, prompt: str, seed: int) -> dict:
    import mmdemo

    generator = mmdemo.load_generator(model_id, profile=profile)
    time_call(generator, prompt, seed, [])  # warm-up, previews on and off
    time_call(generator, prompt, seed, None)
    off, on, counts, same = [], [], [], True
    for _ in range(repeats):
        seconds, plain = time_call(generator, prompt, seed, None)
        off.append(seconds)
        drawn: list[bytes] = []
        seconds, shown = time_call(generator, prompt, seed, drawn)
        on.append(seconds)
        counts.append(len(drawn))
        same = same and plain == shown
    median_off, median_on = statistics.median(off), statistics.median(on)
    return {
        "model": model_id,
        "seconds_off": round(median_off, 4),
        "seconds_on": round(median_on, 4),
        "ratio": round(median_on / median_off, 3),
        "previews": max(counts),
        "same_final_picture": same,
        "repeats": repeats,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("demo", "full", "auto"), default="demo")
    p.add_argument("--models", default="all", help="'all' or comma-separated generator ids")
    p.add_argument("--repeats", type=int, default=7, help="timed pairs (off, on) per model")
    p.add_argument("--prompt", default="a small red circle on the left")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    return args


def main(args: argparse.Namespace) -> list[dict]:
    from mmdemo.registry import GENERATOR_IDS

    models = list(GENERATOR_IDS) if args.models == "all" else args.models.split(",")
    rows = [measure(m, args.profile, args.repeats, args.prompt, args.seed) for m in models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return rows
    print(f"previews on vs off, {args.profile} profile, fast preset, median of {args.repeats} pairs")
    print(f"{'model':<18} {'off s':>8} {'on s':>8} {'on/off':>7} {'previews':>8}  same final picture")
    for row in rows:
        print(
            f"{row['model']:<18} {row['seconds_off']:>8.3f} {row['seconds_on']:>8.3f} {row['ratio']:>7.3f} "
            f"{row['previews']:>8}  {'yes' if row['same_final_picture'] else 'NO'}"
        )
    return rows


if __name__ == "__main__":
    main(parse_args())
