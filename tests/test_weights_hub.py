"""Weight resolution against a Hub stubbed by local folders laid out like the real repositories.

What a Space sees: which weights each profile picks with and without a GPU, that nothing is downloaded for
a model that cannot complete, that only the files a loader needs are fetched, and that what was fetched is
checked before it is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _fake_hub import REAL_REPOS, FakeHub, install, lay_out_real_repos

from mmdemo import weights
from mmdemo.registry import OWN_WEIGHTS_REPO, REGISTRY, get_spec

SHIPPED_DEMO = weights.REPO_ROOT / "checkpoints" / "demo"
MODEL = "latent-diffusion"  # a third-party text encoder (bin-only CLIP) + our own trained weights


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A checkpoint root holding only the shipped demo checkpoints; an empty HF cache."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "demo").symlink_to(SHIPPED_DEMO, target_is_directory=True)
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return root


def _hub(tmp_path, monkeypatch, *, gpu: bool) -> FakeHub:
    hub = FakeHub(tmp_path / "hub", tmp_path / "hub-cache")
    lay_out_real_repos(hub)
    return install(monkeypatch, hub, gpu=gpu)


def _publish_own(hub: FakeHub, model_id: str) -> None:
    for source in get_spec(model_id).sources:
        if source.repo_id == OWN_WEIGHTS_REPO:
            for name in source.files:
                hub.add(OWN_WEIGHTS_REPO, f"{source.subfolder}/{name}")


def _on_disk(root: Path, model_id: str) -> None:
    """Every source in the local folder the README names for it (a mirror of the Hub repo, or ours)."""
    spec = get_spec(model_id)
    for source in spec.sources:
        folder = weights.local_folder(spec, source)
        for entry in source.files:
            name = entry.split("|")[-1].replace("*", "00001-of-00001")
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")


# profile, GPU present, where the real weights are -> what runs, and whether anything may be downloaded
DECISIONS = [
    ("auto", True, "on disk", "full", False),
    ("auto", True, "downloadable", "full", True),
    ("auto", True, "missing", "demo", False),
    ("auto", False, "on disk", "full", False),
    ("auto", False, "downloadable", "demo", False),
    ("auto", False, "missing", "demo", False),
    ("full", True, "on disk", "full", False),
    ("full", True, "downloadable", "full", True),
    ("full", True, "missing", None, False),
    ("full", False, "downloadable", "full", True),  # asking for full is asking for the download
    ("full", False, "missing", None, False),
    ("demo", True, "on disk", "demo", False),
    ("demo", True, "downloadable", "demo", False),
    ("demo", False, "missing", "demo", False),
]


@pytest.mark.parametrize("profile, gpu, state, runs, downloads", DECISIONS)
def test_decision_table(root, tmp_path, monkeypatch, profile, gpu, state, runs, downloads):
    hub = _hub(tmp_path, monkeypatch, gpu=gpu)
    if state == "on disk":
        _on_disk(root, MODEL)
    elif state == "downloadable":
        _publish_own(hub, MODEL)
    # "missing": the third-party repos are on the Hub, our own weights are not published

    decision = weights.decide(MODEL, profile)
    assert decision.runs == runs, decision.reason
    if runs is None:
        with pytest.raises(weights.WeightsUnavailable, match="not on the Hub"):
            weights.resolve(MODEL, profile)
    else:
        resolved = weights.resolve(MODEL, profile)
        assert resolved.profile == runs
        assert set(resolved) >= {"model", "text_encoder", "tokenizer"}
        assert all(path.exists() for path in resolved.components.values())
    assert bool(hub.downloaded) == downloads, hub.downloaded
    if runs == "demo" and profile == "auto":
        assert "real weights" in decision.reason  # the banner says why the demo weights run


def test_unpublished_own_weights_cost_no_download_and_say_so(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    for model_id in ("qformer-tinyllama", "qformer-bert", "sdxl-lora"):
        with pytest.raises(weights.WeightsUnavailable) as info:
            weights.resolve(model_id, "full")
        assert OWN_WEIGHTS_REPO in str(info.value) and "RepositoryNotFoundError" in str(info.value)
    assert hub.downloaded == [], "third-party gigabytes fetched for a model that could never load"


def test_auto_with_a_gpu_runs_real_weights_where_they_exist_and_demo_elsewhere(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    runs = {model_id: weights.decide(model_id, "auto").runs for model_id in REGISTRY}
    assert runs == {
        "resnet18-xattn": "demo",
        "clipb32-xattn": "demo",
        "qformer-bert": "demo",
        "qformer-tinyllama": "demo",
        "sdxl-base": "full",
        "sdxl-lora": "demo",
        "infinity-2b": "full",
        "pixel-diffusion": "demo",
        "latent-diffusion": "demo",
    }
    assert hub.downloaded == []  # deciding is metadata only
    for model_id, profile in runs.items():
        assert weights.resolve(model_id, "auto").profile == profile
    assert hub.downloaded_repos() == {
        "stabilityai/stable-diffusion-xl-base-1.0",
        "FoundationVision/Infinity",
        "google/flan-t5-xl",
    }


def test_only_the_files_the_loaders_need_are_downloaded(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    for model_id in ("sdxl-base", "infinity-2b"):
        weights.resolve(model_id, "auto")
    got = set(hub.downloaded)
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    assert f"{sdxl}/unet/diffusion_pytorch_model.fp16.safetensors" in got
    assert f"{sdxl}/unet/diffusion_pytorch_model.safetensors" not in got  # fp16 variant only
    assert f"{sdxl}/sd_xl_base_1.0.safetensors" not in got  # the single-file checkpoint is never used
    assert {f"google/flan-t5-xl/model-0000{i}-of-00002.safetensors" for i in (1, 2)} <= got
    assert not any(name.endswith(".bin") for name in got)  # no pickle copies beside the safetensors
    assert "FoundationVision/Infinity/infinity_8b_weights/model-00001-of-00002.safetensors" not in got
    assert "FoundationVision/Infinity/infinity_vae_d56_f8_14_patchify.pth" not in got
    # each repository's metadata is asked once, however many sources and models name it
    assert hub.metadata_calls.count("FoundationVision/Infinity") == 1


def test_bin_only_clip_resolves_to_its_pickle_weights(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    _publish_own(hub, MODEL)
    resolved = weights.resolve(MODEL, "full")
    clip = "openai/clip-vit-base-patch16"
    assert f"{clip}/pytorch_model.bin" in hub.downloaded
    assert not any(n.endswith((".h5", ".msgpack")) for n in hub.downloaded)
    assert (resolved["text_encoder"] / "pytorch_model.bin").is_file()
    # a local mirror laid out like the repo resolves as it is
    hub2 = _hub(tmp_path / "second", monkeypatch, gpu=False)
    spec = get_spec(MODEL)
    clip_source = spec.sources[0]
    for name in REAL_REPOS[clip]:
        target = weights.local_folder(spec, clip_source) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    assert weights.plan_source(spec, clip_source, use_hub=False).origin == "local folder"
    assert hub2.downloaded == []


def test_a_download_that_lost_a_file_is_unavailable_and_names_it(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    hub.skip_files = {"text_encoder_2/model.fp16.safetensors"}
    with pytest.raises(weights.WeightsUnavailable, match=r"lacks text_encoder_2/model\.fp16\.safetensors"):
        weights.resolve("sdxl-base", "full")


def test_a_repo_without_a_needed_file_is_refused_before_any_download(root, tmp_path, monkeypatch):
    hub = _hub(tmp_path, monkeypatch, gpu=True)
    (hub.repo("google/flan-t5-xl") / "spiece.model").unlink()
    decision = weights.decide("infinity-2b", "full")
    assert decision.runs is None and "spiece.model" in decision.reason
    with pytest.raises(weights.WeightsUnavailable, match="spiece.model"):
        weights.resolve("infinity-2b", "full")
    assert hub.downloaded == []


def test_mmdemo_download_switch_overrides_the_gpu_rule(root, tmp_path, monkeypatch):
    _hub(tmp_path, monkeypatch, gpu=False)
    assert weights.decide("sdxl-base", "auto").runs == "demo"
    monkeypatch.setenv("MMDEMO_DOWNLOAD", "1")
    assert weights.decide("sdxl-base", "auto").runs == "full"
    monkeypatch.setattr(weights, "gpu_present", lambda: True)
    monkeypatch.setenv("MMDEMO_DOWNLOAD", "0")
    assert weights.decide("sdxl-base", "auto").runs == "demo"


def test_torchvision_resnet_file_in_the_local_folder_is_accepted(root, tmp_path, monkeypatch):
    _hub(tmp_path, monkeypatch, gpu=False)
    spec = get_spec("resnet18-xattn")
    vision = spec.sources[0]
    folder = weights.local_folder(spec, vision)
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"x")
    assert weights.missing_files(vision, folder) == []
    assert weights.plan_source(spec, vision, use_hub=False).folder == folder
