"""Pixel diffusion: the full-size network on the meta device, and the adapter on an untrained tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _diffusion_helpers import (  # noqa: F401 - fixture
    check_shipped_generator,
    diffusion_assets,
    untrained_pixel_checkpoint,
)

import mmdemo
from mmdemo.generators.pixel_diffusion import PixelDiffusionGenerator
from mmdemo.inputs import InputError
from mmdemo.models.diffusion.pixel import PixelDiffusionConfig
from mmdemo.params import count_parameters
from mmdemo.registry import get_spec

MODEL_SPEC = get_spec("pixel-diffusion")


def test_full_config_is_the_reports_unet_on_meta():
    model = PixelDiffusionGenerator.build_network(MODEL_SPEC.full_config, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    unet = model.denoiser.unet
    cfg = unet.config
    # 128: the size the report trained and sampled at (its listing's sample_size=64 is metadata only).
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels, cfg.layers_per_block) == (128, 3, 3, 2)
    assert model.denoiser.use_mask is False  # the report's UNet attends to the padded prompt unmasked
    assert tuple(cfg.block_out_channels) == (64, 128, 256, 256)
    assert tuple(cfg.down_block_types) == (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
    )
    assert tuple(cfg.up_block_types) == ("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    assert cfg.cross_attention_dim == 512
    # Cross-attention reads 512-wide projected BERT states in the first two blocks only.
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features == 512
    assert not hasattr(unet.down_blocks[2], "attentions")
    # Projection: Linear(768, 512) -> GELU -> LayerNorm(512).
    proj = model.denoiser.text_proj
    assert (proj[0].in_features, proj[0].out_features) == (768, 512)
    assert isinstance(proj[1], torch.nn.GELU) and proj[2].normalized_shape == (512,)


def test_full_param_counts_bert_frozen_rest_trainable():
    model = PixelDiffusionGenerator.build_network(MODEL_SPEC.full_config, device="meta")
    total, trainable = count_parameters(model)
    bert_total, bert_trainable = count_parameters(model.text_encoder)
    unet_total, _ = count_parameters(model.denoiser.unet)
    # bert-base-uncased without its pooler: 108.9M; BERT's config must be the real one.
    assert model.text_encoder.config.hidden_size == 768 and model.text_encoder.config.num_hidden_layers == 12
    assert 108.8e6 < bert_total < 109.0e6 and bert_trainable == 0
    proj = 768 * 512 + 512 + 2 * 512
    assert trainable == unet_total + proj
    assert total == bert_total + trainable
    assert 25e6 < unet_total < 32e6  # the report's UNet2DConditionModel config: 28.4M


def test_config_round_trip_and_errors():
    config = PixelDiffusionConfig.from_dict(dict(MODEL_SPEC.tiny_config))
    assert PixelDiffusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown PixelDiffusionConfig keys"):
        PixelDiffusionConfig.from_dict({"sample_size": 32, "bogus": 1})
    with pytest.raises(ValueError, match="norm_num_groups"):
        PixelDiffusionConfig(block_out_channels=(30, 60, 60, 60), norm_num_groups=32)


@pytest.fixture(scope="module")
def generator(diffusion_assets, tmp_path_factory, monkeypatch_module):  # noqa: F811
    root = tmp_path_factory.mktemp("ckpt")
    untrained_pixel_checkpoint(root / "demo" / "pixel-diffusion", diffusion_assets["bert"], fp16=True)
    monkeypatch_module.setenv("MMDEMO_CHECKPOINTS", str(root))
    return mmdemo.load_generator("pixel-diffusion", profile="demo", device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_loads_through_public_api_fp16_back_to_fp32(generator):
    assert isinstance(generator, PixelDiffusionGenerator)
    assert generator.weights.profile == "demo"
    assert all(p.dtype == torch.float32 for p in generator.model.parameters())
    assert all(not p.requires_grad for p in generator.model.text_encoder.parameters())


def test_same_seed_same_image_other_seed_other_image(generator):
    a = generator.generate("a red circle on the left", seed=7, steps=3).image
    b = generator.generate("a red circle on the left", seed=7, steps=3).image
    c = generator.generate("a red circle on the left", seed=8, steps=3).image
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # The global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    generator.generate("a blue square", seed=1, steps=2)
    assert torch.equal(torch.rand(1), expected)


def test_report_preset_uses_ddpm_and_defaults(generator):
    seen = []
    result = generator.generate("a green square at the top", seed=1, preset="report", steps=4,
                                progress=lambda i, n: seen.append((i, n)))  # fmt: skip
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.settings["preset"] == "report" and result.settings["steps"] == 4
    fast = generator.generate("a green square at the top", seed=1, steps=None, guidance=None)
    declared = MODEL_SPEC.options_for("demo")
    assert fast.settings["steps"] == declared["steps"].default <= 25
    assert fast.settings["guidance"] == declared["guidance"].default


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   \n\t "), "empty"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed="abc"), "seed"),
        (dict(steps=0), "steps"),
        (dict(steps=-5), "steps"),
        (dict(steps=10**9), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(guidance=float("nan")), "guidance"),
        (dict(guidance=float("inf")), "guidance"),
        (dict(guidance=-1.0), "guidance must be a finite number from 0 to 50, got -1.0"),
        (dict(preset="turbo"), "preset"),
    ],
)
def test_bad_inputs_get_clear_messages(generator, kwargs, message):
    call = dict(prompt="a red circle", seed=1, steps=2)
    call.update(kwargs)
    with pytest.raises(InputError, match=message):
        generator.generate(call.pop("prompt"), **call)


def test_long_weird_prompts_are_cleaned_and_truncated_with_notices(generator):
    long = generator.generate("a red circle " * 800, seed=1, steps=2)  # 10 400 characters
    notices = long.notices
    assert any("1000 characters" in n for n in notices)
    assert any("24 tokens" in n for n in notices)
    weird = generator.generate("a \x00red\x1b[31m circle 🙂🎨 \u200b", seed=1, steps=2)
    assert any("Control characters" in n for n in weird.notices)
    # A size is not an option of this model: ignored with a notice that says why, never silently.
    other_size = generator.generate("a red circle", seed=1, steps=2, width=512, height="wide")
    assert other_size.image.size == (32, 32)
    assert any("no option 'width'" in n and "32x32" in n and "512" in n for n in other_size.notices)
    assert any("no option 'height'" in n and "'wide'" in n for n in other_size.notices)


def test_guidance_zero_and_one_are_valid(generator):
    for g in (0.0, 1.0, 50.0):
        result = generator.generate("a purple diamond", seed=3, steps=2, guidance=g)
        assert math.isclose(result.settings["guidance"], g)


def test_full_profile_reads_bert_snapshot_and_our_weights(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    """The full-profile plumbing: BERT (+ tokenizer) from the Hub-mirror folder, ours from checkpoints/<id>/.

    Tiny stand-ins sit where the real files would go; only the layout and the loading code are under test.
    """
    import shutil

    built = untrained_pixel_checkpoint(tmp_path / "built", diffusion_assets["bert"])
    bert_dir = tmp_path / "google-bert" / "bert-base-uncased"
    shutil.copytree(built / "text_encoder", bert_dir)
    for item in (built / "tokenizer").iterdir():
        shutil.copy(item, bert_dir / item.name)
    (bert_dir / "vocab.txt").write_text("[PAD]\n")  # the real repo has it; our fast tokenizer reads tokenizer.json
    (tmp_path / "pixel-diffusion").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(built / name, tmp_path / "pixel-diffusion" / name)
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    generator = mmdemo.load_generator("pixel-diffusion", profile="full", device="cpu")
    assert generator.weights.profile == "full" and generator.weights["text_encoder"] == bert_dir
    assert generator.generate("a red circle", seed=0, steps=2).image.size == (32, 32)


@pytest.mark.quality
def test_shipped_demo_checkpoint_draws_what_the_prompt_says(monkeypatch):
    monkeypatch.delenv("MMDEMO_CHECKPOINTS", raising=False)
    check_shipped_generator("pixel-diffusion", color=0.8, shape=0.6)
