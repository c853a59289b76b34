"""The shared test helpers in conftest.py do what the other tests rely on."""

from __future__ import annotations

import importlib
import urllib.request

import pytest
from conftest import load_script, require_or_skip


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_a_missing_prerequisite_skips_outside_ci(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="no widget installed"):
        require_or_skip("no widget installed")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_a_missing_prerequisite_fails_in_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI is missing a prerequisite.*no widget installed"):
        require_or_skip("no widget installed")


def test_two_servers_at_once_each_bind_their_own_port(app_server):
    import gradio as gr

    def page(text: str) -> gr.Blocks:
        with gr.Blocks() as demo:
            gr.Markdown(text)
        return demo

    with app_server(page("first")) as first, app_server(page("second")) as second:
        assert first != second
        for url, text in ((first, "first"), (second, "second")):
            with urllib.request.urlopen(f"{url}config", timeout=30) as response:
                assert text in response.read().decode()


def test_shapes_datasets_are_built_once_per_setting(shapes_dataset):
    folder = shapes_dataset(n=3, seed=5, size=32)
    assert (folder / "captions.txt").is_file() and len(list((folder / "Images").glob("*.png"))) == 3
    assert shapes_dataset(n=3, seed=5, size=32) == folder
    assert shapes_dataset(n=3, seed=6, size=32) != folder


def test_fake_module_stands_in_and_can_make_an_import_fail(fake_module):
    fake = fake_module("mmdemo_test_fake", answer=42)
    assert importlib.import_module("mmdemo_test_fake") is fake and fake.answer == 42
    fake_module("json", missing=True)
    with pytest.raises(ImportError):
        importlib.import_module("json")


def test_load_script_imports_a_script_by_path():
    script = load_script("evaluate_generator")
    assert script.__file__.endswith("train/evaluate_generator.py") and callable(script.parse_args)
