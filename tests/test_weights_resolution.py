"""Which weights a model resolves to, when more than one kind is on disk or a folder is half written.

The README's rule: ``auto`` uses the real weights where they are already on disk, else the shipped demo
weights; a demo folder counts only when it holds both ``config.json`` and a ``*.safetensors`` file (a copy that
stopped half way must be reported, not loaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmdemo import weights
from mmdemo.registry import get_spec

MODEL = "pixel-diffusion"  # two full-size sources (BERT and our own weights) and a shipped demo folder


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty checkpoint root, an empty HF cache, the Hub unreachable."""
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    weights.hub_reachable.cache_clear()
    yield tmp_path / "checkpoints"
    weights.hub_reachable.cache_clear()


def _write_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"w": torch.zeros(2)}, str(path))
    elif path.suffix == ".json":
        path.write_text(json.dumps({}))
    else:
        path.write_text("x\n")


def _write_full(model_id: str) -> list[Path]:
    """Every file each full-size source asks for, in the local folder the README names for it."""
    spec = get_spec(model_id)
    folders = []
    for source in spec.sources:
        folder = weights.local_folder(spec, source)
        for entry in source.files:
            _write_file(folder / entry.split("|")[0].replace("*", "00001"))
        folders.append(folder)
    return folders


def _write_demo(root: Path, model_id: str, *, config: bool = True, tensors: bool = True) -> Path:
    folder = root / "demo" / model_id
    folder.mkdir(parents=True)
    if config:
        _write_file(folder / "config.json")
    if tensors:
        _write_file(folder / "model.safetensors")
    # A copy also holds the sub-folders its loader reads (text encoder, tokenizer): a half-written one lacks only
    # the file left out above.
    for relative in get_spec(model_id).demo_layout.values():
        (folder / relative).mkdir(exist_ok=True)
    return folder


def test_auto_prefers_real_weights_on_disk_over_demo_weights(root):
    full_folders = _write_full(MODEL)
    _write_demo(root, MODEL)
    resolved = weights.resolve(MODEL, "auto")
    assert resolved.profile == "full", (
        "auto-profile contract broken: with real weights on disk and demo weights shipped, auto must pick the "
        f"real ones, it picked {resolved.profile} ({resolved.components})"
    )
    assert [resolved["text_encoder"], resolved["model"]] == full_folders
    assert weights.available_profile(MODEL, "auto") == "full"
    # The demo profile still means the demo folder, whatever else is there.
    assert weights.resolve(MODEL, "demo").profile == "demo"


def test_auto_falls_back_to_demo_when_a_real_source_is_incomplete(root):
    spec = get_spec(MODEL)
    text_encoder = spec.sources[0]
    for entry in text_encoder.files:  # BERT is there, our own trained weights are not
        _write_file(weights.local_folder(spec, text_encoder) / entry.split("|")[0])
    demo = _write_demo(root, MODEL)
    resolved = weights.resolve(MODEL, "auto")
    assert (resolved.profile, resolved["model"]) == ("demo", demo)


@pytest.mark.parametrize(
    "missing, present", [("weights", "config.json"), ("config", "model.safetensors")]
)
def test_a_half_written_demo_folder_is_not_resolved(root, missing, present):
    folder = _write_demo(root, MODEL, config=missing != "config", tensors=missing != "weights")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert files == [present]
    with pytest.raises(weights.WeightsUnavailable) as info:
        resolved = weights.resolve(MODEL, "demo")
        pytest.fail(
            f"demo-weights contract broken: a folder whose only file is {present} resolved as {resolved}; "
            "config.json and *.safetensors are both required"
        )
    message = str(info.value)
    assert str(folder) in message and "What to do:" in message
    with pytest.raises(weights.WeightsUnavailable, match="auto"):
        weights.resolve(MODEL, "auto")
    assert weights.available_profile(MODEL, "auto") is None
