"""The app's command line, its MMDEMO_PROFILE variable, and the GPU time it asks ZeroGPU for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import app
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS

APP_FILE = Path(app.__file__)


def test_defaults(monkeypatch):
    for name in ("MMDEMO_PROFILE", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.profile, args.host, args.port, args.share, args.concurrency) == (
        "auto", "127.0.0.1", None, False, 1
    )  # no port: Gradio binds the first free one itself, so a busy 7860 does not stop the app


def test_every_documented_flag(monkeypatch):
    monkeypatch.delenv("MMDEMO_PROFILE", raising=False)
    args = app.parse_args(
        ["--profile", "demo", "--host", "0.0.0.0", "--port", "8123", "--share", "--concurrency", "3"]
    )
    assert (args.profile, args.host, args.port, args.share, args.concurrency) == ("demo", "0.0.0.0", 8123, True, 3)


@pytest.mark.parametrize("profile", ["auto", "full", "demo"])
def test_mmdemo_profile_sets_the_default_profile_and_the_flag_wins(monkeypatch, profile):
    monkeypatch.setenv("MMDEMO_PROFILE", profile)
    assert app.parse_args([]).profile == profile
    other = "demo" if profile != "demo" else "full"
    assert app.parse_args(["--profile", other]).profile == other


@pytest.mark.parametrize("argv", [["--profile", "fast"], ["--concurrency", "0"], ["--port", "http"]])
def test_bad_flags_stop_with_a_usage_error(monkeypatch, capsys, argv):
    monkeypatch.delenv("MMDEMO_PROFILE", raising=False)
    with pytest.raises(SystemExit) as info:
        app.parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_bad_mmdemo_profile_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("MMDEMO_PROFILE", "fastest")
    with pytest.raises(SystemExit):
        app.parse_args([])


# ------------------------------------------------------------------------------------------------ ZeroGPU


def test_spaces_is_imported_before_anything_else():
    """On a ZeroGPU Space, ``spaces`` must be imported before torch touches CUDA: app.py's first import."""
    tree = ast.parse(APP_FILE.read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    first = min(imports, key=lambda node: node.lineno)
    names = [alias.name for alias in first.names] if isinstance(first, ast.Import) else [first.module]
    assert names == ["__future__"] or names == ["spaces"]
    after_future = [n for n in imports if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    first_real = min(after_future, key=lambda node: node.lineno)
    assert isinstance(first_real, ast.Import) and [a.name for a in first_real.names] == ["spaces"]


@pytest.fixture
def gpu_durations(fake_module):
    """Build the app with a stand-in ``spaces`` module; returns {handler name: its duration function}."""
    durations = {}

    def GPU(duration=None):  # noqa: N802 - the name ``spaces`` exports
        def decorate(fn):
            durations[fn.__name__] = duration
            return fn

        return decorate

    fake_module("spaces", GPU=GPU)
    app.create_demo("demo")
    return durations


def test_each_model_running_event_asks_zerogpu_for_an_estimated_duration(gpu_durations):
    assert {"caption", "generate"} <= set(gpu_durations), gpu_durations
    assert all(callable(fn) for fn in gpu_durations.values())
    # A battle's pair is drawn inside the call: it asks for the two costliest models, more than any one.
    from mmdemo.registry import GENERATOR_IDS

    battle = gpu_durations["arena_generate"]("a red circle", 0)
    alone = [gpu_durations["generate"]("a red circle", [m], 0) for m in GENERATOR_IDS]
    assert max(alone) < battle <= sum(sorted(alone)[-2:]), (battle, alone)


def test_generate_duration_grows_with_models_and_steps(gpu_durations):
    seconds = gpu_durations["generate"]

    def ask(models, preset="fast", overrides="{}"):
        value = seconds("a red circle", models, 0, preset, "", overrides)
        assert isinstance(value, int) and value > 0, value
        return value

    one = ask(["pixel-diffusion"])
    assert ask(["pixel-diffusion", "sdxl-base"]) > one, "each ticked model adds time"
    all_fast = ask(list(GENERATOR_IDS))
    assert all_fast > ask(["pixel-diffusion", "sdxl-base"])
    assert ask(["sdxl-base"], "report") > ask(["sdxl-base"], "fast"), "the report preset runs more steps"
    assert ask(["sdxl-base"], overrides='{"sdxl-base": {"steps": 1000}}') > ask(["sdxl-base"]), (
        "a per-model steps override changes the estimate"
    )
    # A request the handler will refuse still gets an estimate: ZeroGPU asks before the handler runs.
    assert ask(["pixel-diffusion"], overrides="{not json") == one


def test_caption_duration_grows_with_the_number_of_captioners(gpu_durations):
    seconds = gpu_durations["caption"]
    one = seconds(None, CAPTIONER_IDS[0], 1, 30)
    every = seconds(None, "all", 1, 30)
    assert isinstance(one, int) and 0 < one < every
