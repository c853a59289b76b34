"""Latent diffusion: the full-size VQ-VAE + CLIP + latent UNet on the meta device, and the adapter (tiny, untrained)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _diffusion_helpers import (  # noqa: F401 - fixture
    check_shipped_generator,
    diffusion_assets,
    untrained_latent_checkpoint,
)

import mmdemo
from mmdemo.generators.latent_diffusion import LatentDiffusionGenerator
from mmdemo.inputs import InputError
from mmdemo.models.diffusion.latent import LatentDiffusionConfig
from mmdemo.params import count_parameters
from mmdemo.registry import get_spec

MODEL_SPEC = get_spec("latent-diffusion")


def test_full_config_shapes_on_meta():
    """The full size is the report's own VQ-VAE and UNet (layer counts: tests/test_report_recipes.py)."""
    from mmdemo.models.diffusion.report_nets import ReportUNet, ReportVQVAE

    model = LatentDiffusionGenerator.build_network(MODEL_SPEC.full_config, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert isinstance(model.vqvae, ReportVQVAE) and isinstance(model.unet, ReportUNet)
    assert model.vqvae.conv_in.in_channels == 3 and model.vqvae.conv_in.out_channels == 64
    assert model.vqvae.quantize.embedding.weight.shape == (8192, 4)
    # 256x256x3 -> 32x32x4: run the encoder and decoder on meta tensors to check the resampling for real.
    latents = model.vqvae.encode(torch.empty(1, 3, 256, 256, device="meta")).latents
    assert tuple(latents.shape) == (1, 4, 32, 32)
    assert tuple(model.vqvae.decode(latents).sample.shape) == (1, 3, 256, 256)
    out = model.unet(latents, torch.tensor(3), encoder_hidden_states=torch.empty(1, 77, 512, device="meta"))
    assert tuple(out.sample.shape) == (1, 4, 32, 32)
    text = model.text_encoder.config
    assert (text.hidden_size, text.max_position_embeddings, text.vocab_size) == (512, 77, 49408)


def test_full_param_counts():
    model = LatentDiffusionGenerator.build_network(MODEL_SPEC.full_config, device="meta")
    total, trainable = count_parameters(model)
    clip_total, clip_trainable = count_parameters(model.text_encoder)
    assert 63.0e6 < clip_total < 63.3e6 and clip_trainable == 0  # CLIP ViT-B/16 text tower: 63.2M
    assert trainable == count_parameters(model.vqvae)[0] + count_parameters(model.unet)[0]
    assert total == clip_total + trainable


def test_config_checks():
    with pytest.raises(ValueError, match="downsample"):
        LatentDiffusionConfig(downsample=4)  # four VQ blocks downsample by 8
    with pytest.raises(ValueError, match="unknown LatentDiffusionConfig keys"):
        LatentDiffusionConfig.from_dict({"codebook": 3})
    tiny = LatentDiffusionConfig.from_dict(dict(MODEL_SPEC.tiny_config))
    assert tiny.latent_size == tiny.image_size // tiny.downsample


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="module")
def generator(diffusion_assets, tmp_path_factory, monkeypatch_module):  # noqa: F811
    root = tmp_path_factory.mktemp("ckpt")
    untrained_latent_checkpoint(
        root / "demo" / "latent-diffusion", diffusion_assets["clip"], diffusion_assets["vqvae"]
    )
    monkeypatch_module.setenv("MMDEMO_CHECKPOINTS", str(root))
    return mmdemo.load_generator("latent-diffusion", profile="demo", device="cpu")


def test_loads_and_is_deterministic_per_seed(generator):
    assert isinstance(generator, LatentDiffusionGenerator)
    a = generator.generate("a yellow diamond at the bottom", seed=11, steps=3).image
    b = generator.generate("a yellow diamond at the bottom", seed=11, steps=3).image
    c = generator.generate("a yellow diamond at the bottom", seed=12, steps=3).image
    assert a.size == (32, 32)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_report_preset_and_progress(generator):
    seen = []
    result = generator.generate(
        "a red circle", seed=2, preset="report", steps=3, progress=lambda i, n: seen.append(i)
    )
    assert seen == [1, 2, 3] and result.settings["preset"] == "report"
    fast_steps = MODEL_SPEC.options_for("demo")["steps"].default
    assert generator.generate("a red circle", seed=2).settings["steps"] == fast_steps <= 25


def test_mismatched_weights_fail_loudly(generator, tmp_path):
    import json
    import shutil

    folder = tmp_path / "latent-diffusion"
    shutil.copytree(generator.weights["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["unet_block_out_channels"] = [32, 64]  # one block fewer than the weights hold
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        LatentDiffusionGenerator.from_folder(
            MODEL_SPEC, generator.weights, folder, folder / "text_encoder", folder / "tokenizer", device="cpu"
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "The prompt is empty"),
        (dict(prompt="\x00\x01"), "The prompt is empty"),
        (dict(seed=-3), "seed must be between 0 and"),
        (dict(seed=10**20), "seed must be between 0 and"),
        (dict(steps=0), "steps must be a whole number from 1 to 1000, got 0"),
        (dict(steps=-1), "steps must be a whole number from 1 to 1000, got -1"),
        (dict(steps=5000), "steps must be a whole number from 1 to 1000, got 5000"),
        (dict(guidance=float("nan")), "guidance must be a finite number"),
    ],  # fmt: skip
)
def test_bad_inputs(generator, kwargs, message):
    call = dict(prompt="a red circle", seed=1, steps=2)
    call.update(kwargs)
    with pytest.raises(InputError, match=message):
        generator.generate(call.pop("prompt"), **call)


def test_long_prompt_truncated_with_notice(generator):
    result = generator.generate("a blue square near the top edge " * 20, seed=4, steps=2)
    assert any("32 tokens" in n for n in result.notices)
    emoji = generator.generate("🙂 a red 🎨 circle", seed=4, steps=2)
    assert emoji.image.size == (32, 32)


def test_full_profile_reads_clip_snapshot_and_our_weights(generator, tmp_path, monkeypatch):
    """The full-profile plumbing with tiny stand-ins where the real CLIP files and our weights would go."""
    import shutil

    built = generator.weights["model"]
    clip_dir = tmp_path / "openai" / "clip-vit-base-patch16"
    shutil.copytree(built / "text_encoder", clip_dir)
    for item in (built / "tokenizer").iterdir():
        shutil.copy(item, clip_dir / item.name)
    for name in ("vocab.json", "special_tokens_map.json"):  # files the real repo has, which the resolver checks;
        (clip_dir / name).write_text("{}")  # our tiny fast tokenizer reads tokenizer.json
    (clip_dir / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "latent-diffusion").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(built / name, tmp_path / "latent-diffusion" / name)
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    full = mmdemo.load_generator("latent-diffusion", profile="full", device="cpu")
    assert full.weights.profile == "full" and full.weights["text_encoder"] == clip_dir
    a = full.generate("a red circle", seed=5, steps=2).image
    b = generator.generate("a red circle", seed=5, steps=2).image
    assert np.array_equal(np.asarray(a), np.asarray(b))  # the same weights give the same image either way


@pytest.mark.quality
def test_shipped_demo_checkpoint_draws_what_the_prompt_says(monkeypatch):
    monkeypatch.delenv("MMDEMO_CHECKPOINTS", raising=False)
    check_shipped_generator("latent-diffusion", color=0.8, shape=0.6)
