"""Running unattended: out-of-memory recovery in ModelManager, per-model numbers and the JSON request log,
and the settings that keep the disk bounded."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest
import torch
from PIL import Image

from mmdemo import service
from mmdemo.interfaces import GenerationResult, Generator
from mmdemo.monitoring import OpsSettings, RequestMonitor, folder_size, sweep_empty_dirs
from mmdemo.registry import get_spec
from mmdemo.runtime import ModelManager, OutOfMemory, RequestCancelled
from mmdemo.ui.cancel import raise_if_abandoned, request_abandoned


class FlakyGenerator(Generator):
    """A generator that raises a real out-of-memory exception on its first ``failures`` calls."""

    def __init__(
        self, failures: int, error: type[BaseException] = torch.OutOfMemoryError, model_id="sdxl-base"
    ):
        self.failures, self.error, self.calls = failures, error, 0
        self.spec, self.device = get_spec(model_id), "cpu"
        self.weights = type("W", (), {"profile": "demo"})()

    @classmethod
    def load(cls, spec, weights, *, device=None):
        raise NotImplementedError

    def to(self, device: str):
        self.device = device
        return self

    def sample(self, request, progress):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return GenerationResult(Image.new("RGB", (8, 8), (request.seed % 256, 0, 0)), {}, [])


def _run(manager: ModelManager, model_id: str):
    return manager.run(model_id, lambda m: m.generate("a red circle", seed=3).image, action="generate")


def test_cuda_out_of_memory_exception_is_the_real_type_on_a_cpu_build():
    err = torch.cuda.OutOfMemoryError("simulated")
    assert isinstance(err, torch.OutOfMemoryError) and isinstance(err, RuntimeError)


def test_gpu_out_of_memory_once_offloads_idle_models_empties_the_cache_and_retries(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    models = {
        "pixel-diffusion": FlakyGenerator(0),
        "latent-diffusion": FlakyGenerator(0),
        "sdxl-base": FlakyGenerator(1),
    }
    # "cuda:fake": the budget and offload logic without a GPU; a huge budget so nothing is offloaded up front
    manager = ModelManager(
        "demo", device="cuda:fake", gpu_budget_bytes=2**40, loader=lambda m, p, d: models[m].to(d)
    )
    _run(manager, "pixel-diffusion")
    _run(manager, "latent-diffusion")
    assert models["pixel-diffusion"].device == "cuda:fake"

    image = _run(manager, "sdxl-base")
    assert image.getpixel((0, 0)) == (3, 0, 0) and models["sdxl-base"].calls == 2
    assert models["pixel-diffusion"].device == models["latent-diffusion"].device == "cpu"
    assert models["sdxl-base"].device == "cuda:fake" and emptied == [True]
    stats = manager.monitor.snapshot()["sdxl-base"]
    assert stats["recovered"] == 1 and stats["errors"] == 0 and stats["p50_seconds"] is not None


def test_out_of_memory_while_loading_is_retried_once():
    attempts = []

    def loader(model_id, profile, device):
        attempts.append(model_id)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory while loading (simulated)")
        return FlakyGenerator(0)

    manager = ModelManager("demo", device="cpu", loader=loader)
    assert _run(manager, "pixel-diffusion") is not None
    assert attempts == ["pixel-diffusion", "pixel-diffusion"]


def test_cpu_memory_error_drops_idle_models_and_retries():
    models = {"pixel-diffusion": FlakyGenerator(0), "latent-diffusion": FlakyGenerator(1, MemoryError)}
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    _run(manager, "pixel-diffusion")
    assert _run(manager, "latent-diffusion") is not None
    assert set(manager.loaded()) == {"latent-diffusion"}  # the idle one was dropped; it reloads when asked


def test_second_out_of_memory_says_what_to_do_and_leaves_other_models_working():
    models = {
        "pixel-diffusion": FlakyGenerator(0),
        "sdxl-base": FlakyGenerator(10**6),
        "latent-diffusion": FlakyGenerator(0),
    }
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    with pytest.raises(OutOfMemory, match="even after freeing the other models.*Try fewer steps"):
        _run(manager, "sdxl-base")
    assert models["sdxl-base"].calls == 2  # retried exactly once

    settings = service.check_generate_settings("a red circle", 7, "fast")
    results = {
        m: (image, record) for m, image, record in service.generate_images(manager, settings, list(models))
    }
    assert results["pixel-diffusion"][0] is not None and results["latent-diffusion"][0] is not None
    image, record = results["sdxl-base"]
    assert image is None and record.error.startswith("Out of GPU memory running sdxl-base")
    assert "<" not in record.error  # the message, not an object representation
    stats = manager.monitor.snapshot()
    assert stats["sdxl-base"]["runs"] == 2 and stats["sdxl-base"]["out_of_memory"] == 2
    assert stats["sdxl-base"]["errors"] == 2 and stats["sdxl-base"]["p50_seconds"] is None
    assert stats["pixel-diffusion"]["ok"] == 1 and stats["pixel-diffusion"]["errors"] == 0


def test_other_errors_are_not_retried():
    calls = []

    def boom(model):
        calls.append(1)
        raise RuntimeError("sampler exploded")

    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: FlakyGenerator(0))
    with pytest.raises(RuntimeError, match="exploded"):
        manager.run("pixel-diffusion", boom)
    assert calls == [1] and manager.monitor.snapshot()["pixel-diffusion"]["error"] == 1


def test_freeing_memory_never_moves_a_model_another_request_is_using():
    models = {m: FlakyGenerator(0) for m in ("pixel-diffusion", "latent-diffusion", "sdxl-base")}
    manager = ModelManager(
        "demo", device="cuda:fake", gpu_budget_bytes=2**40, loader=lambda m, p, d: models[m].to(d)
    )
    inside, release = threading.Event(), threading.Event()

    def busy(model):
        inside.set()
        release.wait(10)

    worker = threading.Thread(target=manager.run, args=("pixel-diffusion", busy))
    worker.start()
    inside.wait(10)
    _run(manager, "latent-diffusion")
    assert manager.free_memory(keep="sdxl-base") == ["latent-diffusion"]
    assert models["pixel-diffusion"].device == "cuda:fake"
    release.set()
    worker.join(10)


# ------------------------------------------------------------------------------------------------ numbers, logs


def test_monitor_counts_percentiles_and_one_json_line_per_run(caplog):
    monitor = RequestMonitor(log_prompts=False)
    with caplog.at_level(logging.INFO, logger="mmdemo.requests"):
        for seconds in [0.1 * i for i in range(1, 11)]:
            monitor.record(
                "pixel-diffusion",
                action="generate",
                seconds=seconds,
                weights="demo",
                outcome="ok",
                prompt="a secret prompt",
                request_id="r1",
            )
        monitor.record(
            "pixel-diffusion",
            action="generate",
            seconds=9.0,
            weights="demo",
            outcome="error",
            error_type="RuntimeError",
            prompt="a secret prompt",
        )
    stats = monitor.snapshot()["pixel-diffusion"]
    assert stats["runs"] == 11 and stats["ok"] == 10 and stats["errors"] == 1
    assert stats["p50_seconds"] == pytest.approx(0.55) and stats["p90_seconds"] == pytest.approx(0.91)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mmdemo.requests"]
    assert len(lines) == 11
    assert lines[0] == {
        "time": lines[0]["time"],
        "request": "r1",
        "action": "generate",
        "model": "pixel-diffusion",
        "seconds": 0.1,
        "weights": "demo",
        "outcome": "ok",
        "error_type": None,
    }
    assert lines[-1]["outcome"] == "error" and lines[-1]["error_type"] == "RuntimeError"
    assert "secret" not in caplog.text  # prompts stay out of the log unless the owner turns them on


def test_prompts_are_logged_only_when_the_owner_enables_it(caplog):
    monitor = RequestMonitor(log_prompts=OpsSettings.from_env({"MMDEMO_LOG_PROMPTS": "1"}).log_prompts)
    with caplog.at_level(logging.INFO, logger="mmdemo.requests"):
        line = monitor.record(
            "sdxl-base", action="generate", seconds=1.0, weights="full", outcome="ok", prompt="a red circle"
        )
    assert line["prompt"] == "a red circle" and "a red circle" in caplog.text


def test_latency_window_is_bounded():
    monitor = RequestMonitor(log_prompts=False)
    logging.getLogger("mmdemo.requests").disabled = True
    try:
        for _ in range(RequestMonitor.LATENCY_WINDOW + 50):
            monitor.record("pixel-diffusion", action="generate", seconds=1.0, weights="demo", outcome="ok")
    finally:
        logging.getLogger("mmdemo.requests").disabled = False
    assert len(monitor._stats["pixel-diffusion"].seconds) == RequestMonitor.LATENCY_WINDOW
    assert monitor.snapshot()["pixel-diffusion"]["runs"] == RequestMonitor.LATENCY_WINDOW + 50


# ------------------------------------------------------------------------------------------------ disk


def test_ops_settings_from_environment():
    assert OpsSettings.from_env({}) == OpsSettings(3600, "20mb", False)
    settings = OpsSettings.from_env({"MMDEMO_CACHE_TTL": "120", "MMDEMO_MAX_FILE_SIZE": "5mb"})
    assert (settings.cache_ttl, settings.max_file_size) == (120, "5mb")
    assert settings.delete_cache == (60, 120)
    assert OpsSettings().delete_cache == (300, 3600)  # files live at most 1 h 5 min
    with pytest.raises(ValueError, match="MMDEMO_CACHE_TTL"):
        OpsSettings.from_env({"MMDEMO_CACHE_TTL": "an hour"})
    with pytest.raises(ValueError, match="at least 1 second"):
        OpsSettings(cache_ttl=0)


def test_sweep_removes_only_old_empty_folders(tmp_path):
    old_empty = tmp_path / "aaa"
    new_empty = tmp_path / "bbb"
    full = tmp_path / "ccc"
    for folder in (old_empty, new_empty, full):
        folder.mkdir()
    (full / "image.png").write_bytes(b"x" * 10)
    past = time.time() - 100
    for folder in (old_empty, full):
        os.utime(folder, (past, past))
    assert sweep_empty_dirs(tmp_path, older_than=50) == 1
    assert not old_empty.exists() and new_empty.exists() and full.exists()
    assert folder_size(tmp_path) == (10, 3)


# ------------------------------------------------------------------------------------------------ cancellation


class _StopsAtStep(FlakyGenerator):
    def sample(self, request, progress):
        for step in range(1, 101):
            progress(step, 100)
        return super().sample(request, progress)


def test_a_cancelled_run_ends_the_whole_request_and_is_counted_as_cancelled():
    models = {"pixel-diffusion": _StopsAtStep(0, model_id="pixel-diffusion"), "sdxl-base": FlakyGenerator(0)}
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    settings = service.check_generate_settings("a red circle", 7, "fast")
    seen = []

    def progress(model_id, done, total):
        seen.append(done)
        if done == 3:
            raise RequestCancelled("client left")

    with pytest.raises(RequestCancelled):  # not turned into one panel's error: the request stops
        list(service.generate_images(manager, settings, list(models), progress=progress))
    assert seen == [1, 2, 3] and models["sdxl-base"].calls == 0
    stats = manager.monitor.snapshot()["pixel-diffusion"]
    assert stats["cancelled"] == 1 and stats["errors"] == 0
    assert manager._loaded["pixel-diffusion"].users == 0  # the model is not left pinned


def test_outside_a_gradio_event_nothing_counts_as_abandoned():
    assert request_abandoned() is False
    raise_if_abandoned()  # no error


def test_health_and_about_table_read_the_managers_numbers():
    from mmdemo.registry import REGISTRY
    from mmdemo.ui.handlers import AppContext
    from mmdemo.ui.ops import STATS_HEADERS, health_report, stats_rows

    models = {"sdxl-base": FlakyGenerator(1)}
    ctx = AppContext.create("demo", ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m]))
    _run(ctx.manager, "sdxl-base")
    health = health_report(ctx)
    assert set(health["models"]) == set(REGISTRY) and health["models"]["sdxl-base"]["loaded_on"] == "cpu"
    assert health["status"] == ("degraded" if health["unavailable"] else "ok")
    [row] = stats_rows(ctx)
    assert len(row) == len(STATS_HEADERS)
    assert row[:6] == [REGISTRY["sdxl-base"].display_name, 1, 0, 1, 0, 0]  # one run, recovered after OOM
