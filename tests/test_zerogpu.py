"""On ZeroGPU, downloads and model loading happen before the ``@spaces.GPU`` window, never inside it.

A stand-in ``spaces`` module enforces what real ZeroGPU does to a call: it gets the duration the app asked
for, no more. It also fails any download or model load that starts inside the window (the real window would
be cut off by a multi-gigabyte first download).
"""

from __future__ import annotations

import inspect
import time

import pytest
from _fake_hub import FakeHub, install, lay_out_real_repos, publish_text_diffusion

from mmdemo import weights
from mmdemo.registry import GENERATOR_IDS
from mmdemo.runtime import ModelManager, _load_by_kind

MODEL = "pixel-diffusion"
DEMO = weights.REPO_ROOT / "checkpoints" / "demo"


class StandInSpaces:
    """``spaces.GPU(duration=...)``: the call runs inside a window of ``duration`` seconds."""

    def __init__(self) -> None:
        self.inside = False
        self.windows: list[tuple[float, float]] = []  # (seconds asked for, seconds used)

    def GPU(self, duration=None):  # noqa: N802 - the name ``spaces`` exports
        def decorate(fn):
            def asked(args, kwargs) -> float:
                return float(duration(*args, **kwargs) if callable(duration) else duration or 60)

            def close(seconds: float, start: float) -> None:
                self.inside = False
                used = time.perf_counter() - start
                self.windows.append((seconds, used))
                if used > seconds:
                    raise TimeoutError(f"GPU window of {seconds:.0f} s exceeded: {used:.1f} s")

            if inspect.isgeneratorfunction(fn):

                def stream(*args, **kwargs):
                    seconds, start = asked(args, kwargs), time.perf_counter()
                    self.inside = True
                    try:
                        yield from fn(*args, **kwargs)
                    finally:
                        close(seconds, start)

                return stream

            def call(*args, **kwargs):
                seconds, start = asked(args, kwargs), time.perf_counter()
                self.inside = True
                try:
                    return fn(*args, **kwargs)
                finally:
                    close(seconds, start)

            return call

        return decorate


@pytest.fixture
def zerogpu(tmp_path, monkeypatch, fake_module):
    """A Space with a (stand-in) ZeroGPU: the Hub stubbed, our pixel-diffusion weights published on it."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "demo").symlink_to(DEMO, target_is_directory=True)
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    spaces = StandInSpaces()
    fake_module("spaces", GPU=spaces.GPU)
    hub = FakeHub(tmp_path / "hub", tmp_path / "hub-cache")
    lay_out_real_repos(hub)
    publish_text_diffusion(hub, MODEL, DEMO / MODEL)
    for name in (
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ):  # no CLIP judge here: building
        (hub.repo("timm/vit_base_patch32_clip_224.openai") / name).unlink()  # it would cost seconds per test
    install(monkeypatch, hub, gpu=True)
    fetch = hub.snapshot_download

    def guarded_download(*args, **kwargs):
        if spaces.inside and not kwargs.get("local_files_only"):
            raise AssertionError("download inside the GPU window")
        return fetch(*args, **kwargs)

    monkeypatch.setattr("huggingface_hub.snapshot_download", guarded_download)
    loads_inside: list[str] = []

    def loader(model_id, profile, device):
        if spaces.inside:
            loads_inside.append(model_id)
        return _load_by_kind(model_id, profile, device)

    manager = ModelManager("auto", device="cpu", loader=loader)
    return spaces, hub, manager, loads_inside


def _generate(ctx):
    from mmdemo.ui.handlers import generate_handler

    *_, last = generate_handler(ctx)("a red circle on the left", [MODEL], 3, "fast", "", "{}", None)
    (record,) = last[2 * len(GENERATOR_IDS)]
    return record


def test_startup_prefetch_downloads_outside_the_window_and_the_call_is_compute_only(zerogpu):
    from mmdemo.ui.handlers import AppContext

    spaces, hub, manager, loads_inside = zerogpu
    ctx = AppContext.create("auto", manager)
    assert ctx.availability[MODEL] == "full"
    assert ctx.prefetching is not None, "weights that need a download are fetched at start-up"
    ctx.prefetching.join(timeout=120)
    assert any(name.startswith("google-bert/bert-base-uncased/") for name in hub.downloaded)
    record = _generate(ctx)
    assert record["error"] is None and record["weights"] == "full"
    assert loads_inside == [], "the model was loaded inside the GPU window"
    assert "timm/vit_base_patch32_clip_224.openai" in hub.metadata_calls  # the judge was sought before, too
    ((asked, used),) = spaces.windows
    assert used < asked


def test_a_first_call_before_the_prefetch_downloads_in_its_cpu_step(zerogpu, monkeypatch):
    from mmdemo.ui import handlers

    spaces, hub, manager, loads_inside = zerogpu
    monkeypatch.setattr(handlers, "prefetch", lambda *args: None)  # the start-up download has not run yet
    ctx = handlers.AppContext.create("auto", manager)
    assert hub.downloaded == []
    record = _generate(ctx)
    assert record["error"] is None and record["weights"] == "full"
    assert hub.downloaded and loads_inside == []


def test_the_stand_in_catches_a_download_inside_the_window(zerogpu, monkeypatch):
    """The guard is real: without the CPU step, the first call's download happens in the window and fails."""
    from mmdemo.ui import handlers

    spaces, hub, manager, loads_inside = zerogpu
    monkeypatch.setattr(handlers, "prefetch", lambda *args: None)
    ctx = handlers.AppContext.create("auto", manager)
    monkeypatch.setattr(ctx, "prepare", lambda model_ids: None)
    record = _generate(ctx)
    assert "download inside the GPU window" in str(record["error"])
    assert loads_inside == [MODEL]
