"""Every model loads from a Hub laid out like its real repositories, through the real resolver and loaders.

The Hub is stubbed by local folders (``_fake_hub``) holding each real repository's file list; the files a
loader reads are tiny real weights: the shipped demo checkpoints, re-laid in the real layouts (BLIP-2 key
names, a TinyLlama ``save_pretrained`` folder, the bin-only CLIP text encoder, flan-t5-xl's sharded
safetensors, SDXL's fp16 variant files, Infinity's ``.pth`` files, our own weights without their frozen
parts). Where the two paths hold the same weights, the full profile must give exactly the demo's output.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_hub import FakeHub, install, lay_out_real_repos, publish_text_diffusion
from safetensors.torch import load_file, save_file

import mmdemo
from mmdemo import weights
from mmdemo.data.shapes import render_scene, sample_single_object_prompts
from mmdemo.registry import OWN_WEIGHTS_REPO, REGISTRY, get_spec
from mmdemo.runtime import ModelManager

DEMO = weights.REPO_ROOT / "checkpoints" / "demo"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "demo").symlink_to(
        DEMO, target_is_directory=True
    )  # the shipped demo checkpoints, to compare with
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))  # no real weights on disk: they come from the Hub
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub = FakeHub(tmp_path / "hub", tmp_path / "hub-cache")
    lay_out_real_repos(hub)
    return install(monkeypatch, hub, gpu=True)


def _own(hub: FakeHub, model_id: str) -> Path:
    folder = hub.repo(OWN_WEIGHTS_REPO) / model_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _image(result) -> np.ndarray:
    return np.asarray(getattr(result, "image", result))


def _caption(results) -> list[str]:
    return [getattr(r, "caption", r) for r in results]


def _copy(source: Path, target: Path, *names: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, target / name)


def _pictures() -> list:
    return [render_scene(scene) for _, scene in sample_single_object_prompts(2, seed=11)]


# ------------------------------------------------------------------------------------------------ captioners


@pytest.mark.parametrize("model_id", ["resnet18-xattn", "clipb32-xattn"])
def test_xattn_captioners_load_from_timm_layouts(hub, model_id):
    from mmdemo.models.xattn.network import XAttnCaptionNetwork

    network = XAttnCaptionNetwork.from_pretrained(DEMO / model_id)
    vision = {k.removeprefix("vision."): v.contiguous() for k, v in network.state_dict().items()
              if k.startswith("vision.")}  # fmt: skip
    if (
        model_id == "resnet18-xattn"
    ):  # timm's copy of torchvision's ResNet-18: its own names plus the classifier
        vision |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
        save_file(vision, str(hub.repo("timm/resnet18.tv_in1k") / "model.safetensors"))
    else:  # open_clip's file: the whole CLIP, the image tower under visual.*
        save_file({f"visual.{k}": v for k, v in vision.items()} | {"logit_scale": torch.ones(())},
                  str(hub.repo("timm/vit_base_patch32_clip_224.openai") / "open_clip_model.safetensors"))  # fmt: skip
    network.save_pretrained(_own(hub, model_id), include_frozen=False)

    full = mmdemo.load_captioner(model_id, "full", device="cpu")
    demo = mmdemo.load_captioner(model_id, "demo", device="cpu")
    assert full.weights.profile == "full" and full.weights.origins["vision"] == "downloaded"
    assert _caption(full.caption(_pictures())) == _caption(demo.caption(_pictures()))


@pytest.mark.parametrize("model_id", ["qformer-bert", "qformer-tinyllama"])
def test_qformer_captioners_load_from_blip2_and_tinyllama_layouts(hub, model_id):
    from mmdemo.captioners.base import CaptionNetwork

    network = CaptionNetwork.from_pretrained(DEMO / model_id)
    stage1 = CaptionNetwork.from_pretrained(DEMO / "qformer-bert")
    # BLIP-2 ITM's own key names: the Q-Former (text side included, unused here) and the vision model.
    official = {k: v.contiguous() for k, v in stage1.state_dict().items()
                if k.startswith(("qformer.", "embeddings.", "query_tokens"))}  # fmt: skip
    official |= {f"vision_model.{k}": v.contiguous() for k, v in network.vision_model.state_dict().items()}
    save_file(official, str(hub.repo("Salesforce/blip2-itm-vit-g") / "model.safetensors"))
    if model_id == "qformer-tinyllama":
        llama = hub.repo("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
        network.llm.save_pretrained(llama)
        _copy(DEMO / model_id, llama, "tokenizer.json", "tokenizer_config.json")
    else:
        network.tokenizer.save_pretrained(hub.repo("google-bert/bert-base-uncased"))
    network.save_pretrained(_own(hub, model_id), include_frozen=False)

    full = mmdemo.load_captioner(model_id, "full", device="cpu")
    demo = mmdemo.load_captioner(model_id, "demo", device="cpu")
    assert set(full.weights) == {
        "vision",
        "captioner",
        "language_model" if "llama" in model_id else "tokenizer",
    }
    assert _caption(full.caption(_pictures())) == _caption(demo.caption(_pictures()))


# ------------------------------------------------------------------------------------------------ generators


@pytest.mark.parametrize(
    "model_id, text_repo, pickle_only",
    [
        ("latent-diffusion", "openai/clip-vit-base-patch16", True),
        ("pixel-diffusion", "google-bert/bert-base-uncased", False),
    ],
)
def test_text_diffusion_loads_our_weights_and_the_frozen_text_encoder(hub, model_id, text_repo, pickle_only):
    publish_text_diffusion(hub, model_id, DEMO / model_id)
    assert (hub.repo(text_repo) / "model.safetensors").exists() != pickle_only

    full = mmdemo.load_generator(model_id, "full", device="cpu")
    demo_generator = mmdemo.load_generator(model_id, "demo", device="cpu")
    folder = full.weights["text_encoder"]
    assert (folder / "pytorch_model.bin").is_file() == pickle_only
    assert not (folder / "model.safetensors").exists() if pickle_only else True
    a = _image(full.generate("a red circle on the left", seed=5, steps=2))
    b = _image(demo_generator.generate("a red circle on the left", seed=5, steps=2))
    assert np.array_equal(a, b)


def test_infinity_loads_pth_files_and_sharded_t5(hub, monkeypatch):
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    from mmdemo.models.infinity.loading import tiny_t5_config

    config = json.loads((DEMO / "infinity-2b" / "config.json").read_text())
    monkeypatch.setitem(
        REGISTRY, "infinity-2b", dataclasses.replace(get_spec("infinity-2b"), full_config=config)
    )
    infinity = hub.repo("FoundationVision/Infinity")
    torch.save(
        load_file(str(DEMO / "infinity-2b" / "transformer.safetensors")), infinity / "infinity_2b_reg.pth"
    )
    vae = load_file(str(DEMO / "infinity-2b" / "vae.safetensors"))
    # As upstream saves it: under "vae", the quantiser a second time as quantize.* (one module, two names).
    aliases = {
        "quantize." + k.removeprefix("quantizer."): v for k, v in vae.items() if k.startswith("quantizer.")
    }
    assert aliases, "the demo VAE has a quantiser with saved tensors"
    torch.save({"vae": vae | aliases}, infinity / "infinity_vae_d32reg.pth")
    t5_repo = hub.repo("google/flan-t5-xl")
    for old in t5_repo.glob("model-*.safetensors"):
        old.unlink()
    state = load_file(str(DEMO / "infinity-2b" / "text_encoder.safetensors"))
    state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
    state.setdefault("shared.weight", state["encoder.embed_tokens.weight"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(DEMO / "infinity-2b"))
    t5 = T5EncoderModel(tiny_t5_config(config["t5"]))
    t5.load_state_dict({k: v.float() for k, v in state.items()})
    t5.save_pretrained(t5_repo, max_shard_size="200KB")  # sharded, with its index, as flan-t5-xl is
    assert len(list(t5_repo.glob("model-*-of-*.safetensors"))) >= 2
    tokenizer.save_pretrained(t5_repo)

    full = mmdemo.load_generator("infinity-2b", "full", device="cpu")
    demo = mmdemo.load_generator("infinity-2b", "demo", device="cpu")
    assert full.weights["transformer"].name == "infinity_2b_reg.pth"
    a = _image(full.generate("a small red circle on the left", seed=3))
    b = _image(demo.generate("a small red circle on the left", seed=3))
    assert np.array_equal(a, b)


def test_sdxl_base_and_lora_load_fp16_variant_files(hub, monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    from mmdemo.models.sdxl import config as sdxl

    for model_id in ("sdxl-base", "sdxl-lora"):
        spec = get_spec(model_id)
        monkeypatch.setitem(REGISTRY, model_id, dataclasses.replace(spec, full_config=spec.tiny_config))
    repo = hub.repo("stabilityai/stable-diffusion-xl-base-1.0")
    pipe = StableDiffusionXLPipeline.from_pretrained(DEMO / "sdxl-base")
    pipe.to(torch.float16).save_pretrained(repo, variant="fp16")  # the fp16 files the registry asks for
    _copy(DEMO / "sdxl-lora", _own(hub, "sdxl-lora"), "config.json", sdxl.LORA_WEIGHT_NAME)
    manager = ModelManager("full", device="cpu")  # base and LoRA share one pipeline through it

    base = manager.get("sdxl-base")
    demo_unet = pipe.unet.state_dict()
    for key, value in base.shared.pipe.unet.state_dict().items():  # the fp16 files, read into fp32 on a CPU
        assert value.dtype == torch.float32 and torch.equal(value, demo_unet[key].float()), key
    lora = manager.get("sdxl-lora")
    assert lora.shared is base.shared and len(manager.shared) == 1
    assert not any(name.endswith("diffusion_pytorch_model.safetensors") for name in hub.downloaded)
    size = dict(width=32, height=32)  # the full profile's default is 1024 px; these are tiny weights
    plain = _image(base.generate("a small red circle on the left", seed=0, steps=2, **size))
    styled = _image(lora.generate("a small red circle on the left", seed=0, steps=2, **size))
    assert np.isfinite(plain).all() and np.abs(plain.astype(int) - styled.astype(int)).mean() > 0
