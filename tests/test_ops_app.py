"""The real app as it runs unattended, on the loopback address: health and stats endpoints, the upload limit,
files removed after the cache time, out-of-memory recovery seen through the API, and a short soak."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from mmdemo.interfaces import GenerationResult, Generator
from mmdemo.monitoring import OpsSettings, folder_size
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, get_spec
from mmdemo.runtime import ModelManager, _load_by_kind

pytestmark = pytest.mark.app

CACHE_TTL = 4  # seconds: short, so the test sees files go
MAX_UPLOAD = 100 * 1024


class OutOfMemoryGenerator(Generator):
    """Raises CUDA's real out-of-memory exception on its first ``failures`` calls, then draws a grey square."""

    def __init__(self, failures: float, model_id: str):
        self.failures, self.calls = failures, 0
        self.spec, self.device = get_spec(model_id), "cpu"
        self.weights = type("W", (), {"profile": "demo"})()

    @classmethod
    def load(cls, spec, weights, *, device=None):
        raise NotImplementedError

    def sample(self, request, progress):
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (simulated)")
        return GenerationResult(Image.new("RGB", (32, 32), (128, 128, 128)), {}, [])


FAKES = {
    "sdxl-base": OutOfMemoryGenerator(1, "sdxl-base"),
    "sdxl-lora": OutOfMemoryGenerator(float("inf"), "sdxl-lora"),
}


def _loader(model_id, profile, device):
    return FAKES[model_id] if model_id in FAKES else _load_by_kind(model_id, profile, device)


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_server):
    """The app with two out-of-memory fakes, a 4 s cache time and a 100 KB upload limit, in its own temp folder."""
    import app
    from mmdemo.ui.ops import launch_options

    cache = tmp_path_factory.mktemp("gradio-cache")
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # read by Gradio when components and the server are made
    settings = OpsSettings(cache_ttl=CACHE_TTL, max_file_size=f"{MAX_UPLOAD}b")
    demo = app.create_demo("demo", manager=ModelManager("demo", loader=_loader), settings=settings)
    try:
        with app_server(demo, **launch_options(demo, settings)) as url:
            yield url, cache
    finally:
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    # download_files=False: the test fetches what it wants itself, and nothing lands in the server's folder
    return Client(server[0], verbose=False, download_files=False)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_health_endpoint_and_plain_route_say_which_weights_each_model_resolves(server, client):
    health = client.predict(api_name="/health")
    assert health["status"] == "ok" and health["profile"] == "demo"
    assert set(health["models"]) == set(REGISTRY)
    assert all(info["weights"] == "demo" for info in health["models"].values())
    plain = httpx.get(server[0] + "healthz", timeout=10)
    assert plain.status_code == 200 and plain.json()["models"] == health["models"]


def test_upload_over_the_limit_is_refused_before_it_is_stored(server):
    url, cache = server
    before = _files(cache)
    too_big = os.urandom(MAX_UPLOAD + 50_000)
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", too_big)}, timeout=30)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert _files(cache) == before  # not even a partial file is left
    small = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", b"x" * 1000)}, timeout=30)
    assert small.status_code == 200 and Path(small.json()[0]).read_bytes() == b"x" * 1000


def test_the_client_refuses_an_oversized_upload_with_the_limit_in_the_message(client, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(os.urandom(MAX_UPLOAD + 1))
    with pytest.raises(ValueError, match=f"maximum file size of {MAX_UPLOAD} bytes"):
        client.predict(handle_file(str(path)), "all", 1, 30, api_name="/caption")


def _generate(client, models, seed=5):
    n = len(GENERATOR_IDS)
    outputs = client.predict(
        "a small red circle on the left", models, seed, "fast", "", "{}", api_name="/generate"
    )
    return outputs[:n], outputs[n : 2 * n], outputs[2 * n], outputs[2 * n + 1]


def test_downloads_work_within_the_cache_time_and_files_go_after_it(server, client):
    url, cache = server
    images, _, records, archive = _generate(client, ["infinity-2b"])
    served = [images[GENERATOR_IDS.index("infinity-2b")], archive]
    for item in served:
        response = httpx.get(item["url"], timeout=10)
        assert response.status_code == 200
    png = Image.open(io.BytesIO(httpx.get(served[0]["url"], timeout=10).content))
    assert png.format == "PNG"
    with zipfile.ZipFile(io.BytesIO(httpx.get(archive["url"], timeout=10).content)) as z:
        assert json.loads(z.read("settings.json"))["settings"]["seed"] == 5
    paths = [Path(item["path"]) for item in served]
    assert all(p.is_relative_to(cache) and p.exists() for p in paths)
    deadline = time.time() + 6 * CACHE_TTL  # deleted after 1-1.5 TTL; its empty folder one TTL later
    while time.time() < deadline and any(p.exists() or p.parent.exists() for p in paths):
        time.sleep(0.5)
    assert not any(p.exists() for p in paths), "generated files outlived the cache time"
    assert not any(p.parent.exists() for p in paths), "their empty folders were not swept"
    assert httpx.get(served[0]["url"], timeout=10).status_code in (403, 404)


def test_out_of_memory_once_recovers_and_always_leaves_every_other_panel_working(client):
    images, texts, records, archive = _generate(client, list(GENERATOR_IDS), seed=9)
    by_id = {r["model"]: r for r in records}
    for model_id in GENERATOR_IDS:
        if model_id == "sdxl-lora":
            continue
        assert by_id[model_id]["error"] is None, by_id[model_id]
        assert images[GENERATOR_IDS.index(model_id)] is not None
    lora = by_id["sdxl-lora"]
    assert images[GENERATOR_IDS.index("sdxl-lora")] is None
    assert (
        lora["error"].startswith("Out of GPU memory running sdxl-lora") and "Try fewer steps" in lora["error"]
    )
    stats = client.predict(api_name="/stats")
    assert stats["models"]["sdxl-base"]["recovered"] == 1 and stats["models"]["sdxl-base"]["errors"] == 0
    assert stats["models"]["sdxl-lora"]["out_of_memory"] >= 1
    # the app still answers afterwards, on both tabs
    _, _, caption_records = client.predict(
        handle_file(str(Path(__file__).parents[1] / "assets/examples/Images/shapes_000000.png")),
        CAPTIONER_IDS[0],
        1,
        20,
        api_name="/caption",
    )
    assert caption_records[0]["error"] is None


def test_stats_count_every_model_run_with_latency_percentiles(client):
    before = client.predict(api_name="/stats")["models"].get("infinity-2b", {}).get("runs", 0)
    for seed in range(3):
        _generate(client, ["infinity-2b"], seed=seed)
    _generate(client, ["infinity-2b"], seed=1)
    stats = client.predict(api_name="/stats")
    infinity = stats["models"]["infinity-2b"]
    assert infinity["runs"] == before + 4 and infinity["ok"] >= 4
    assert 0 < infinity["p50_seconds"] <= infinity["p90_seconds"] <= infinity["p99_seconds"]
    assert stats["cache"]["ttl_seconds"] == CACHE_TTL and stats["cache"]["entries"] >= 0


@pytest.mark.slow
def test_short_soak_keeps_the_temp_folder_bounded_and_the_app_answering(server, client, tmp_path):
    """30 mixed requests (captions, five-model generations, input errors); the full 300 is bench/soak.py."""
    url, cache = server
    from bench.soak import run_mixed_requests

    baseline, _ = folder_size(cache)
    summary = run_mixed_requests(client, 30, tmp_path)
    assert summary["answered"] == 30 and summary["unexpected"] == []
    time.sleep(2.5 * CACHE_TTL)  # everything generated is older than the cache time now
    size, entries = folder_size(cache)
    # left: the page's own pictures (examples, loss curves) that were there before, and nothing generated
    assert size <= baseline + 50_000, (size, baseline, entries)
    assert client.predict(api_name="/health")["status"] == "ok"


LONG_RUN = ("a red circle", ["pixel-diffusion"], 1, "report", "", '{"pixel-diffusion": {"steps": 1000}}')
CLIENT_SCRIPT = """
import sys, time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False, download_files=False)
job = client.submit(*{args!r}, api_name="/generate")
while not any("step" in (p.desc or "") for p in (job.status().progress_data or [])):
    time.sleep(0.1)
print("sampling", flush=True)
time.sleep(600)
"""


def _next_request_seconds(client) -> float:
    start = time.perf_counter()
    _generate(client, ["infinity-2b"], seed=11)
    return time.perf_counter() - start


def _cancelled_runs(client) -> int:
    return client.predict(api_name="/stats")["models"].get("pixel-diffusion", {}).get("cancelled", 0)


@pytest.mark.slow
def test_a_client_that_disconnects_mid_generation_frees_the_worker(server, client):
    """A killed client process closes its connection while pixel diffusion samples 1000 steps (a minute or
    more here); the run stops at its next step and the next request gets the model slot at once."""
    import subprocess
    import sys

    _generate(client, ["pixel-diffusion", "infinity-2b"], seed=1)  # both loaded: the timing below is the wait
    cancelled = _cancelled_runs(client)
    script = CLIENT_SCRIPT.format(args=LONG_RUN)
    process = subprocess.Popen([sys.executable, "-c", script, server[0]], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "sampling"
    finally:
        process.kill()  # the connection closes without a word, as when a browser tab is closed
        process.wait(10)
    waited = _next_request_seconds(client)
    assert waited < 20, f"the next request waited {waited:.1f} s: the abandoned run kept the worker"
    assert _cancelled_runs(client) == cancelled + 1


@pytest.mark.slow
def test_a_cancelled_api_job_stops_sampling_and_frees_the_worker(server, client):
    second = Client(server[0], verbose=False, download_files=False)
    cancelled = _cancelled_runs(client)
    job = second.submit(*LONG_RUN, api_name="/generate")
    deadline = time.time() + 120
    while not any("step" in (p.desc or "") for p in (job.status().progress_data or [])):
        assert time.time() < deadline, "sampling never started"
        time.sleep(0.1)
    start = time.perf_counter()
    job.cancel()
    waited = time.perf_counter() - start + _next_request_seconds(client)
    assert waited < 20, f"cancel plus the next request took {waited:.1f} s"
    assert _cancelled_runs(client) == cancelled + 1
