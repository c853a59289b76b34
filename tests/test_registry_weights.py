"""Registry, weight resolution and safe loading."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mmdemo
from mmdemo import weights
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, get_spec

ALL_IDS = {
    "resnet18-xattn",
    "clipb32-xattn",
    "qformer-bert",
    "qformer-tinyllama",
    "sdxl-base",
    "sdxl-lora",
    "infinity-2b",
    "pixel-diffusion",
    "latent-diffusion",
}


def test_registry_lists_all_nine_models_with_their_facts():
    assert set(REGISTRY) == ALL_IDS
    assert set(CAPTIONER_IDS) | set(GENERATOR_IDS) == ALL_IDS
    for spec in REGISTRY.values():
        assert spec.display_name and spec.licence and spec.description
        assert spec.full_config and spec.tiny_config, spec.id
        assert spec.sources and all(s.repo_id and s.files for s in spec.sources), spec.id
    # The report's Table 1/2 numbers travel with the captioners.
    assert get_spec("qformer-tinyllama").report.bleu == (72.2, 50.9, 36.1, 25.9)
    assert get_spec("resnet18-xattn").report.total_params == pytest.approx(34.2e6)


def test_unknown_or_wrong_kind_id_fails_and_lists_valid_ones():
    with pytest.raises(KeyError, match="valid ids: resnet18-xattn"):
        get_spec("resnet50")
    with pytest.raises(KeyError, match="unknown captioner id 'sdxl-base'"):
        mmdemo.load_captioner("sdxl-base")
    with pytest.raises(KeyError, match="unknown generator id"):
        mmdemo.load_generator("resnet18-xattn")


@pytest.fixture
def ckpt_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty HF cache
    weights.hub_reachable.cache_clear()
    yield tmp_path
    weights.hub_reachable.cache_clear()


def _write_demo(root: Path, model_id: str) -> Path:
    folder = root / "demo" / model_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    for relative in get_spec(model_id).demo_layout.values():  # the text encoder's and tokenizer's folders
        (folder / relative).mkdir(exist_ok=True)
    return folder


def test_demo_profile_resolves_shipped_folder_and_explains_when_missing(ckpt_root):
    with pytest.raises(weights.WeightsUnavailable) as info:
        weights.resolve("pixel-diffusion", "demo")
    message = str(info.value)
    assert str(ckpt_root / "demo" / "pixel-diffusion") in message and "What to do:" in message
    folder = _write_demo(ckpt_root, "pixel-diffusion")
    resolved = weights.resolve("pixel-diffusion", "demo")
    assert resolved.profile == "demo" and resolved["model"] == folder


def _record_connections(monkeypatch) -> list:
    """Every outgoing connection attempt from now on: recorded, then refused (this machine is offline anyway)."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    return attempts


def test_full_profile_offline_is_unavailable_with_every_place_named(ckpt_root, monkeypatch):
    attempts = _record_connections(monkeypatch)
    with pytest.raises(weights.WeightsUnavailable) as info:
        weights.resolve("sdxl-base", "full")
    assert attempts == [], "offline (HF_HUB_OFFLINE=1) resolution must not touch the network"
    message = str(info.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "not reachable" in message and str(ckpt_root) in message


def test_full_profile_uses_local_folders_per_source_and_needs_every_file(ckpt_root):
    spec = get_spec("pixel-diffusion")
    bert, ours = spec.sources
    (ckpt_root / bert.repo_id).mkdir(parents=True)
    (ckpt_root / bert.repo_id / bert.files[0]).write_bytes(b"x")
    (ckpt_root / "pixel-diffusion").mkdir()
    for name in ours.files:
        (ckpt_root / "pixel-diffusion" / name).write_bytes(b"x")
    with pytest.raises(weights.WeightsUnavailable, match="lacks config.json, vocab.txt"):
        weights.resolve("pixel-diffusion", "full")  # BERT's folder holds only its weights file
    for name in bert.files[1:]:
        (ckpt_root / bert.repo_id / name).write_bytes(b"x")
    resolved = weights.resolve("pixel-diffusion", "full")
    assert resolved.profile == "full"
    assert resolved["text_encoder"] == resolved["tokenizer"] == ckpt_root / bert.repo_id
    assert resolved["model"] == ckpt_root / "pixel-diffusion"
    assert resolved.origins["model"] == "local folder"


def test_auto_prefers_full_then_demo_and_never_substitutes_silently(ckpt_root):
    with pytest.raises(weights.WeightsUnavailable, match="auto"):
        weights.resolve("latent-diffusion", "auto")
    _write_demo(ckpt_root, "latent-diffusion")
    assert weights.resolve("latent-diffusion", "auto").profile == "demo"
    assert weights.available_profile("latent-diffusion", "auto") == "demo"
    assert weights.available_profile("latent-diffusion", "full") is None
    with pytest.raises(ValueError, match="unknown profile"):
        weights.resolve("latent-diffusion", "fast")


def test_hub_offline_flag_is_honoured_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights.hub_reachable.cache_clear()
    attempts = _record_connections(monkeypatch)
    assert weights.hub_reachable() is False
    assert attempts == [], "with HF_HUB_OFFLINE set the Hub is never probed"
    weights.hub_reachable.cache_clear()


class _Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_load_state_dict_is_safe(tmp_path):
    tensors = {"a": torch.arange(3.0)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    assert torch.equal(weights.load_state_dict(tmp_path / "w.safetensors")["a"], tensors["a"])
    torch.save(tensors, tmp_path / "w.pt")
    assert torch.equal(weights.load_state_dict(tmp_path / "w.pt")["a"], tensors["a"])
    # A pickle that would run code is refused by weights_only=True and reported as a corrupt checkpoint.
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"a": _Boom()}))
    with pytest.raises(ValueError, match="could not read checkpoint"):
        weights.load_state_dict(tmp_path / "evil.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="bad.safetensors"):
        weights.load_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        weights.load_state_dict(tmp_path / "missing.safetensors")


def test_read_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        weights.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        weights.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d": 1}))
    assert weights.read_config(tmp_path) == {"d": 1}
