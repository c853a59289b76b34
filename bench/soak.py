"""Soak: many mixed requests against the real app, on the loopback address; prints memory and disk.

    python bench/soak.py                       # 300 requests, demo profile, 30 s cache time
    python bench/soak.py --n 60 --cache-ttl 10

Starts ``app.py`` as its own process (so its resident memory is the server's alone) with a fresh Gradio
temp folder and a short cache time, warms it up, then sends a repeating mix of captions (one model and
all four), five-model and one-model generations, and requests that must fail (empty prompt, a file that is
not an image, malformed per-model options). It prints the server's resident memory after warm-up and
every 50 requests, the growth, and the temp folder's size right after the run and once the cache time
has passed. Targets: growth under 50 MB after warm-up; the temp folder back to its start-up size.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "examples" / "Images" / "shapes_000000.png"
GENERATORS = ["pixel-diffusion", "latent-diffusion", "sdxl-base", "sdxl-lora", "infinity-2b"]
PROMPTS = [
    "a small red circle on the left",
    "a large blue square at the top",
    "a yellow triangle in the center",
]

# One cycle of the mix; the soak repeats it. Kinds ending in "!" must be refused with a message.
MIX = [
    "caption-one",
    "caption-all",
    "generate-five",
    "generate-one",
    "empty-prompt!",
    "caption-one",
    "generate-one",
    "not-an-image!",
    "generate-one",
    "bad-options!",
]


def _request(client: Any, kind: str, rng: random.Random, workdir: Path):
    from gradio_client import handle_file

    if kind == "caption-one":
        model = rng.choice(["resnet18-xattn", "clipb32-xattn", "qformer-bert", "qformer-tinyllama"])
        return client.predict(handle_file(str(EXAMPLE)), model, 1, 20, api_name="/caption")[2]
    if kind == "caption-all":
        return client.predict(handle_file(str(EXAMPLE)), "all", 1, 20, api_name="/caption")[2]
    if kind in ("generate-five", "generate-one"):
        models = GENERATORS if kind == "generate-five" else [rng.choice(GENERATORS)]
        outputs = client.predict(
            rng.choice(PROMPTS), models, rng.randrange(2**31), "fast", "", "{}", api_name="/generate"
        )
        return outputs[2 * len(GENERATORS)]
    if kind == "empty-prompt!":
        return client.predict("   ", ["pixel-diffusion"], 1, "fast", "", "{}", api_name="/generate")
    if kind == "not-an-image!":
        path = workdir / "notes.png"
        path.write_text("this is not a picture")
        return client.predict(handle_file(str(path)), "all", 1, 20, api_name="/caption")
    if kind == "bad-options!":
        return client.predict(
            "a red circle", ["pixel-diffusion"], 1, "fast", "", "{not json", api_name="/generate"
        )
    raise ValueError(kind)


def run_mixed_requests(client: Any, n: int, workdir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Send ``n`` requests of :data:`MIX` in turn; returns what came back.

    ``unexpected`` lists requests that should have worked and raised, or should have been refused and were
    not; ``model_errors`` counts per-model failures inside otherwise answered requests.
    """
    rng = random.Random(seed)
    kinds: Counter = Counter()
    model_errors: Counter = Counter()
    unexpected: list[str] = []
    answered = 0
    for i in range(n):
        kind = MIX[i % len(MIX)]
        kinds[kind] += 1
        try:
            records = _request(client, kind, rng, workdir)
        except Exception as err:  # noqa: BLE001 - what the client raised is the result we record
            answered += 1
            if not kind.endswith("!"):
                unexpected.append(f"{i} {kind}: {type(err).__name__}: {str(err)[:200]}")
            continue
        answered += 1
        if kind.endswith("!"):
            unexpected.append(f"{i} {kind}: accepted")
            continue
        for record in records:
            if record.get("error"):
                model_errors[record["model"]] += 1
    return {
        "answered": answered,
        "kinds": dict(kinds),
        "model_errors": dict(model_errors),
        "unexpected": unexpected,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the app did not come up")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="requests after warm-up")
    parser.add_argument("--warmup", type=int, default=len(MIX), help="requests before the memory baseline")
    parser.add_argument("--cache-ttl", type=int, default=30, help="the app's cache time (seconds)")
    parser.add_argument("--profile", default="demo")
    args = parser.parse_args(argv)

    from gradio_client import Client

    from mmdemo.monitoring import folder_size

    cache = Path(tempfile.mkdtemp(prefix="mmdemo-soak-cache-"))
    workdir = Path(tempfile.mkdtemp(prefix="mmdemo-soak-client-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, str(REPO / "app.py"), "--profile", args.profile, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--cache-ttl", str(args.cache_ttl)]
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_ready(url, server)
        client = Client(url, verbose=False, download_files=str(workdir / "downloads"))
        start_size = folder_size(cache)
        print(
            f"started: RSS {rss_mb(server.pid):.0f} MB; temp folder {start_size[0] / 2**20:.2f} MB, {start_size[1]} entries"
        )
        warm = run_mixed_requests(client, args.warmup, workdir, seed=1)
        baseline = rss_mb(server.pid)
        print(f"after {args.warmup} warm-up requests: RSS {baseline:.0f} MB")
        started = time.time()
        totals: Counter = Counter()
        problems: list[str] = list(warm["unexpected"])
        done = 0
        halfway = None  # RSS after half the run: growth over the second half is the steady leak rate
        while done < args.n:
            chunk = min(50, args.n - done)
            summary = run_mixed_requests(client, chunk, workdir, seed=100 + done)
            totals.update(summary["kinds"])
            problems += summary["unexpected"]
            done += chunk
            if halfway is None and done >= args.n // 2:
                halfway = (done, rss_mb(server.pid))
            size, entries = folder_size(cache)
            print(
                f"{done:4d} requests, {time.time() - started:6.0f} s: RSS {rss_mb(server.pid):.0f} MB "
                f"(+{rss_mb(server.pid) - baseline:.1f}); temp folder {size / 2**20:.2f} MB, {entries} entries"
            )
        final = rss_mb(server.pid)
        after_run = folder_size(cache)
        time.sleep(3 * args.cache_ttl)  # a file lives at most 1.5 cache times, its empty folder one more
        settled = folder_size(cache)
        print(f"mix: {dict(totals)}")
        print(f"unexpected results: {len(problems)}" + "".join(f"\n  {p}" for p in problems[:10]))
        print(f"RSS growth after warm-up: {final - baseline:+.1f} MB over {args.n} requests (target < 50 MB)")
        if halfway is not None and halfway[0] < args.n:
            rate = (final - halfway[1]) / (args.n - halfway[0]) * 100
            print(
                f"RSS growth over the last {args.n - halfway[0]} requests: {final - halfway[1]:+.1f} MB ({rate:+.1f} MB per 100)"
            )
        print(
            f"temp folder: {start_size[0] / 2**20:.2f} MB at start-up, {after_run[0] / 2**20:.2f} MB "
            f"({after_run[1]} entries) right after the run, {settled[0] / 2**20:.2f} MB ({settled[1]} entries) "
            f"{3 * args.cache_ttl} s later (cache time {args.cache_ttl} s)"
        )
        print(f"server log: {log_path}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
