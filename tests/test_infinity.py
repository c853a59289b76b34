"""Infinity-2B: official names and sizes offline, strict loading, schedules, sampler, generator, demo weights."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdemo.inputs import InputError
from mmdemo.models.infinity import (
    BSQVAE,
    FLAN_T5_XL_CONFIG,
    BSQVAEConfig,
    CheckpointMismatch,
    Infinity,
    InfinityConfig,
    InfinityFamilyConfig,
    SamplingOptions,
    build_word_tokenizer,
    load_strict,
    sample_codes,
    teacher_forcing_inputs,
    tiny_t5_config,
)
from mmdemo.models.infinity.loading import save_demo_checkpoint, unwrap_plain_vae_names, vae_state_from_file
from mmdemo.models.infinity.sampler import filter_logits, kv_cache_bytes, sample_from_logits
from mmdemo.models.infinity.schedules import (
    H_DIV_W_TEMPLATES,
    OFFICIAL_BUDGET_SCALES,
    TEMPLATES,
    get_schedule,
    nearest_template,
    parse_aspect_ratio,
)
from mmdemo.registry import get_spec
from mmdemo.weights import ResolvedWeights

REPO = Path(__file__).resolve().parents[1]
MODEL_SPEC = get_spec("infinity-2b")
TINY = MODEL_SPEC.tiny_config


def _generator_class():
    from mmdemo.generators.infinity import InfinityGenerator

    return InfinityGenerator


# ------------------------------------------------------------------------------------------ full size, meta


@pytest.fixture(scope="module")
def full_transformer():
    return _generator_class().build_network(MODEL_SPEC.full_config, device="meta")


@pytest.fixture(scope="module")
def full_vae():
    return _generator_class().build_vae(MODEL_SPEC.full_config, device="meta", with_encoder=True)


def test_full_transformer_size_matches_official_checkpoint(full_transformer):
    params = sum(p.numel() for p in full_transformer.parameters())
    tensors = sum(t.numel() for t in full_transformer.state_dict().values())
    # infinity_2b_reg.pth holds 2,204,697,152 numbers: the parameters plus 65 zero_k_bias buffers of 2048.
    assert tensors == 2_204_697_152
    assert params == 2_204_564_032
    assert tensors - params == 65 * 2048
    assert not any(p.requires_grad for p in full_transformer.parameters())


def test_full_vae_sizes(full_vae):
    enc = sum(p.numel() for p in full_vae.encoder.parameters())
    dec = sum(p.numel() for p in full_vae.decoder.parameters())
    assert round(enc / 1e6, 1) == 45.0 and enc == 45_025_696
    assert round(dec / 1e6, 1) == 65.1 and dec == 65_092_355


OFFICIAL_TRANSFORMER_KEYS = {
    "cfg_uncond": (512, 2048),
    "pos_start": (1, 1, 2048),
    "text_norm.weight": (2048,),
    "text_proj_for_sos.ca.mat_q": (1, 16, 128),
    "text_proj_for_sos.ca.mat_kv.weight": (4096, 2048),
    "text_proj_for_sos.ca.v_bias": (2048,),
    "text_proj_for_sos.ca.zero_k_bias": (2048,),
    "text_proj_for_sos.ca.proj.weight": (2048, 2048),
    "text_proj_for_ca.0.weight": (2048, 2048),
    "text_proj_for_ca.2.bias": (2048,),
    "lvl_embed.weight": (15, 2048),
    "word_embed.weight": (2048, 32),
    "shared_ada_lin.1.weight": (12288, 2048),
    "shared_ada_lin.1.bias": (12288,),
    "block_chunks.0.module.0.ada_gss": (1, 1, 6, 2048),
    "block_chunks.0.module.0.sa.mat_qkv.weight": (6144, 2048),
    "block_chunks.0.module.0.sa.q_bias": (2048,),
    "block_chunks.0.module.0.sa.v_bias": (2048,),
    "block_chunks.0.module.0.sa.zero_k_bias": (2048,),
    "block_chunks.0.module.0.sa.scale_mul_1H11": (1, 16, 1, 1),
    "block_chunks.0.module.0.sa.proj.weight": (2048, 2048),
    "block_chunks.3.module.2.ca.mat_q.weight": (2048, 2048),
    "block_chunks.3.module.2.ca.mat_kv.weight": (4096, 2048),
    "block_chunks.3.module.2.ca.v_bias": (2048,),
    "block_chunks.3.module.2.ca_norm.weight": (2048,),
    "block_chunks.3.module.2.ca_norm.bias": (2048,),
    "block_chunks.7.module.3.ffn.fc1.weight": (8192, 2048),
    "block_chunks.7.module.3.ffn.fc2.weight": (2048, 8192),
    "head_nm.ada_lin.1.weight": (4096, 2048),
    "head.weight": (64, 2048),
    "head.bias": (64,),
}
OFFICIAL_VAE_KEYS = {
    "decoder.conv_in.conv.weight": (512, 32, 3, 3),
    "decoder.mid.block_1.norm1.norm.weight": (512,),
    "decoder.mid.block_2.conv2.conv.weight": (512, 512, 3, 3),
    "decoder.up.4.upsample.conv.conv.weight": (512, 512, 3, 3),
    "decoder.up.4.block.2.conv2.conv.bias": (512,),
    "decoder.up.1.block.0.nin_shortcut.conv.weight": (256, 512, 1, 1),
    "decoder.up.0.block.0.nin_shortcut.conv.weight": (128, 256, 1, 1),
    "decoder.norm_out.norm.weight": (128,),
    "decoder.conv_out.conv.weight": (3, 128, 3, 3),
    "encoder.conv_in.conv.weight": (128, 3, 3, 3),
    "encoder.down.0.downsample.conv.conv.weight": (128, 128, 3, 3),
    "encoder.down.1.block.0.nin_shortcut.conv.weight": (256, 128, 1, 1),
    "encoder.conv_out.conv.weight": (32, 512, 3, 3),
    "quantizer.lfq.mask": (32,),
}


def test_official_names_and_shapes(full_transformer, full_vae):
    from mmdemo.params import state_dict_shapes

    shapes = state_dict_shapes(
        "infinity-2b"
    )  # what `python -m mmdemo.params --state-dict infinity-2b` prints
    for key, shape in OFFICIAL_TRANSFORMER_KEYS.items():
        assert tuple(shapes[key]) == shape, key
    assert len([k for k in shapes if k.endswith(".sa.mat_qkv.weight")]) == 32
    assert not any(k.startswith(("blocks.", "block_chunks.8.")) for k in shapes)
    assert not any(k.startswith("block_chunks.0.module.4.") for k in shapes)
    vae_shapes = {k: tuple(v.shape) for k, v in full_vae.state_dict().items()}
    for key, shape in OFFICIAL_VAE_KEYS.items():
        assert vae_shapes[key] == shape, key
    assert "decoder.up.0.upsample.conv.conv.weight" not in vae_shapes  # the finest level does not upsample
    assert "encoder.down.4.downsample.conv.conv.weight" not in vae_shapes


def test_flan_t5_xl_config_fits_the_transformer():
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**FLAN_T5_XL_CONFIG))
    assert t5.config.d_model == MODEL_SPEC.full_config["transformer"]["text_channels"]
    assert 1.2e9 < sum(p.numel() for p in t5.parameters()) < 1.25e9


def test_param_row_is_listed():
    from mmdemo.params import param_row

    row = param_row(MODEL_SPEC)
    assert row.total == 2_204_564_032 and row.trainable == 0
    assert "2,204,697,152" in row.note


# ------------------------------------------------------------------------------------------ tiny models


def _tiny_family() -> InfinityFamilyConfig:
    return InfinityFamilyConfig(**TINY)


def _tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    fam = _tiny_family()
    return fam, Infinity(InfinityConfig(**fam.transformer)).eval(), BSQVAE(BSQVAEConfig(**fam.vae)).eval()


def test_strict_loader_names_missing_unexpected_and_shape_errors():
    _, model, _ = _tiny_models()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = Infinity(InfinityConfig(**_tiny_family().transformer))
    report = load_strict(fresh, dict(good), what="tiny")
    assert report.loaded == len(good)
    assert torch.equal(fresh.head.weight, model.head.weight)

    missing = dict(good)
    del missing["block_chunks.1.module.0.ffn.fc1.weight"]
    with pytest.raises(
        CheckpointMismatch, match=r"missing keys: block_chunks\.1\.module\.0\.ffn\.fc1\.weight"
    ):
        load_strict(fresh, missing, what="tiny")
    extra = dict(good, **{"blocks.0.sa.extra": torch.zeros(1)})
    with pytest.raises(CheckpointMismatch, match=r"unexpected keys: blocks\.0\.sa\.extra"):
        load_strict(fresh, extra, what="tiny")
    bad = dict(good, **{"head.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointMismatch, match=r"shape mismatches: head\.weight"):
        load_strict(fresh, bad, what="tiny")
    # Documented ignore list: training-time masks; constant buffers may be absent but never wrong.
    ignored = dict(good, attn_bias_for_masking=torch.zeros(1, 1, 4, 4))
    report = load_strict(fresh, ignored, what="tiny", ignored_keys=("attn_bias_for_masking",))
    assert report.ignored == ["attn_bias_for_masking"]
    no_consts = {k: v for k, v in good.items() if not k.endswith("zero_k_bias")}
    assert len(load_strict(fresh, no_consts, what="tiny").constants_kept) == 2 * 4 + 1
    wrong_const = dict(good, **{"block_chunks.0.module.0.sa.zero_k_bias": torch.ones(128)})
    with pytest.raises(CheckpointMismatch, match="constant buffer"):
        load_strict(fresh, wrong_const, what="tiny")


def test_vae_wrapped_and_plain_names_and_vae_key():
    _, _, vae = _tiny_models()
    wrapped = {k: v.clone() for k, v in vae.state_dict().items()}
    plain = {
        k.replace(".conv.weight", ".weight")
        .replace(".conv.bias", ".bias")
        .replace(".norm.weight", ".weight")
        .replace(".norm.bias", ".bias"): v
        for k, v in wrapped.items()
    }
    assert "decoder.conv_in.weight" in plain and "decoder.conv_in.conv.weight" not in plain
    for state in (wrapped, plain):
        target = BSQVAE(BSQVAEConfig(**_tiny_family().vae), with_encoder=False)
        raw = vae_state_from_file({"vae": state})
        raw = unwrap_plain_vae_names(raw, set(target.state_dict()))
        load_strict(target, raw, what="vae", ignored_prefixes=("encoder.",))
        assert torch.equal(target.decoder.conv_out.conv.weight, vae.decoder.conv_out.conv.weight)
    with pytest.raises(CheckpointMismatch, match="unexpected keys: encoder"):
        load_strict(BSQVAE(BSQVAEConfig(**_tiny_family().vae), with_encoder=False), wrapped, what="vae")


def test_vae_multiscale_quantiser_and_teacher_forcing():
    fam, _, vae = _tiny_models()
    scales = list(get_schedule(1.0, "0.06M", fam.budget_scales, fam.stride).scales)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        summed, bits = vae.encode(x, scales)
    assert [tuple(b.shape[1:3]) for b in bits] == scales and bits[0].shape[-1] == 16
    assert set(torch.unique(bits[2]).tolist()) <= {0, 1}
    # Rebuilding the codes from the bits gives the same sum the quantiser produced.
    rebuilt = 0
    for b in bits:
        codes = (b.float() * 2 - 1).permute(0, 3, 1, 2) / math.sqrt(16)
        rebuilt = rebuilt + torch.nn.functional.interpolate(codes, size=scales[-1], mode="bilinear")
    assert torch.allclose(rebuilt, summed, atol=1e-5)
    inputs = teacher_forcing_inputs(bits, scales, 16)
    assert inputs.shape == (2, sum(h * w for h, w in scales) - 1, 16)


# ------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("template", H_DIV_W_TEMPLATES)
@pytest.mark.parametrize("budget", ["0.06M", "0.25M", "0.60M", "1M"])
def test_schedules_for_every_template_and_budget(template, budget):
    s = get_schedule(template, budget, OFFICIAL_BUDGET_SCALES)
    assert len(s.scales) == OFFICIAL_BUDGET_SCALES[budget]
    assert s.scales[0] == (1, 1)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(s.scales, s.scales[1:]))
    h, w = s.scales[-1]
    assert abs(h / w - template) < 0.02
    assert s.rope_grid == TEMPLATES[template][12]
    pixels = s.image_size[0] * s.image_size[1]
    expected = {"0.06M": 0.0655e6, "0.25M": 0.262e6, "0.60M": 0.59e6, "1M": 1.05e6}[budget]
    assert 0.75 * expected < pixels < 1.3 * expected


def test_schedule_facts_and_snapping():
    s = get_schedule(1.0, "1M", OFFICIAL_BUDGET_SCALES)
    assert s.image_size == (1024, 1024) and len(s.scales) == 13 and s.num_tokens == 10521
    assert get_schedule(1.0, "0.06M", OFFICIAL_BUDGET_SCALES).image_size == (256, 256)
    assert len(H_DIV_W_TEMPLATES) == 15
    assert nearest_template(16 / 9) == 1.75 and nearest_template(9 / 16) == 0.571
    assert TEMPLATES[0.75][4] == (9, 12)  # the 4:3 table is the transposed 3:4 one
    assert parse_aspect_ratio("4:3") == pytest.approx(0.75)
    assert parse_aspect_ratio(None, width=512, height=1024) == 2.0
    for bad in ("abc", "0:3", "-1", "3:x"):
        with pytest.raises(ValueError, match=rf"^aspect ratio.*{re.escape(repr(bad))}"):
            parse_aspect_ratio(bad)
    with pytest.raises(ValueError, match="pixel budget"):
        get_schedule(1.0, "4M", OFFICIAL_BUDGET_SCALES)


# ------------------------------------------------------------------------------------------ sampler


def _text(fam, batch=1, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, tokens, fam.transformer["text_channels"], generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, -2:] = False
    return text, mask


def _sample(model, fam, seed, **kw):
    text, mask = _text(fam)
    scales = list(get_schedule(1.0, "0.06M", fam.budget_scales, fam.stride).scales)
    g = torch.Generator().manual_seed(seed)
    opts = SamplingOptions(**{"cfg": 3.0, "tau": 1.0, "top_p": 0.97, **kw})
    return sample_codes(model, text, mask, scales, opts, g)


def test_sampler_is_seeded_per_call():
    fam, model, _ = _tiny_models()
    a, bits_a = _sample(model, fam, 1)
    b, bits_b = _sample(model, fam, 1)
    c, bits_c = _sample(model, fam, 2)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(bits_a, bits_b))
    assert not all(torch.equal(x, y) for x, y in zip(bits_a, bits_c))


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_kv_cached_sampling_equals_recomputing(cfg):
    fam, model, _ = _tiny_models(seed=3)
    cached, bits_cached = _sample(model, fam, 5, cfg=cfg, use_cache=True)
    full, bits_full = _sample(model, fam, 5, cfg=cfg, use_cache=False)
    assert all(torch.equal(x, y) for x, y in zip(bits_cached, bits_full))
    assert torch.allclose(cached, full)


def test_cached_logits_equal_teacher_forced_logits():
    """The training pass and the cached sampling pass compute the same function of the same inputs."""
    fam, model, _ = _tiny_models(seed=4)
    scales = list(get_schedule(1.0, "0.06M", fam.budget_scales, fam.stride).scales)
    text, mask = _text(fam)
    captured = []
    original = model.logits
    model.logits = lambda x, cond: captured.append(original(x, cond)) or captured[-1]
    _, bits = sample_codes(
        model,
        text,
        mask,
        scales,
        SamplingOptions(cfg=1.0, tau=1.0, top_p=0.0),
        torch.Generator().manual_seed(0),
    )
    model.logits = original
    teacher = model(text, mask, teacher_forcing_inputs(bits, scales, 16), scales)
    assert torch.allclose(torch.cat(captured, dim=1), teacher, atol=1e-4)


def test_filter_logits_top_p_top_k_per_bit():
    logits = torch.tensor([[0.0, 5.0], [0.0, 1.0], [2.0, 2.0]]).log_softmax(-1)
    # p(minority) = 0.0067 <= 0.03: removed; 0.27 and 0.5 stay.
    kept = filter_logits(logits, top_p=0.97)
    assert torch.isinf(kept[0, 0]) and torch.isfinite(kept[1]).all() and torch.isfinite(kept[2]).all()
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.0)).all()
    greedy = filter_logits(logits, top_k=1)
    assert torch.isinf(greedy[1, 0]) and torch.isfinite(greedy[1, 1])
    many = torch.tensor([[0.0, 10.0]]).expand(2000, 2)
    g = torch.Generator().manual_seed(0)
    assert sample_from_logits(many, g, top_p=0.97).eq(1).all()
    assert 0 < sample_from_logits(torch.zeros(4000, 2), g).float().mean() < 1


def test_sampling_options_reject_bad_values():
    for bad in (dict(tau=0.0), dict(tau=float("nan")), dict(cfg=-1.0), dict(top_p=1.5), dict(top_k=-1)):
        (name,) = bad
        with pytest.raises(ValueError, match=rf"^{name} must be .*, got {re.escape(repr(bad[name]))}$"):
            SamplingOptions(**bad)


def test_guidance_edge_cases_run():
    fam, model, _ = _tiny_models()
    for kw in (dict(cfg=0.0), dict(cfg=1.0), dict(cfg=20.0, tau=0.05), dict(top_k=1), dict(top_p=0.0)):
        codes, _ = _sample(model, fam, 0, **kw)
        assert torch.isfinite(codes).all()


def test_kv_cache_size_formula():
    # 2B, 1M, one image with guidance, bf16: 2 (k, v) x 32 blocks x 2 x 10521 tokens x 2048 x 2 bytes.
    assert kv_cache_bytes(32, 2048, 10521) == 2 * 32 * 2 * 10521 * 2048 * 2


# ------------------------------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def random_demo_root(tmp_path_factory) -> Path:
    """A demo folder with random tiny weights, in the exact format the training script writes."""
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("ckpt")
    fam, model, vae = _tiny_models(seed=11)
    tokenizer = build_word_tokenizer(["a small red circle on the left", "a large blue square at the top"])
    t5 = T5EncoderModel(tiny_t5_config(fam.t5, len(tokenizer)))
    save_demo_checkpoint(root / "demo" / "infinity-2b", fam, vae, t5, model, tokenizer)
    return root


@pytest.fixture(scope="module")
def random_generator(random_demo_root):
    import mmdemo

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMDEMO_CHECKPOINTS", str(random_demo_root))
        return mmdemo.load_generator("infinity-2b", profile="demo", device="cpu")


def test_generator_demo_roundtrip_and_determinism(random_generator):
    a = random_generator.generate("a small red circle on the left", seed=3)
    b = random_generator.generate("a small red circle on the left", seed=3)
    assert a.image.size == (32, 32) and a.image.mode == "RGB"
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.settings["scales"] == 5 and a.notices == []
    assert a.settings["pixel_budget"] == "0.06M" and a.settings["guidance"] == 3.0  # CPU default, registry cfg


def test_generator_aspect_ratio_snaps_with_notice(random_generator):
    result = random_generator.generate("a red circle", seed=0, aspect_ratio="16:9", steps=30)
    notices = " ".join(result.notices)
    assert "nearest one, 7:4" in notices and "no option 'steps'" in notices and "pixel budget" in notices
    assert result.image.size == (44, 24)  # the 7:4 table's fifth scale is 6x11 tokens of 4 px
    assert result.settings["aspect_ratio"] == "7:4"
    exact = random_generator.generate("a red circle", seed=0, aspect_ratio="3:4")
    assert not any("nearest" in n for n in exact.notices)


def test_generator_options_and_free_text_encoder(random_generator):
    image = random_generator.generate(
        "a red circle",
        seed=0,
        cfg=1.0,
        tau=1.0,
        top_p=1.0,
        top_k=1,
        negative_prompt="blue square",
        pixel_budget="0.25M",
        free_text_encoder_after_encoding=True,
        unknown_knob=1,
    )
    assert random_generator._text_encoder is None  # freed, reloaded on the next call
    assert any("unknown_knob" in n for n in image.notices)
    assert image.settings["guidance"] == 1.0 and image.settings["top_k"] == 1  # cfg: guidance's other name
    again = random_generator.generate("a red circle", seed=0)
    assert again.image.size == (32, 32) and random_generator._text_encoder is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="   "), "empty"),
        (dict(seed=-1), "seed"),
        (dict(seed="x"), "seed"),
        (dict(tau=0), "tau"),
        (dict(top_p=2), "top_p"),
        (dict(top_k=0.5), "top_k"),
        (dict(cfg=float("nan")), "guidance"),
        (dict(guidance=99), "guidance must be a finite number from 0 to 50, got 99"),
        (dict(pixel_budget="4M"), "pixel_budget"),
        (dict(aspect_ratio="wide"), "aspect_ratio"),
        (dict(width=-3, height=10), "width"),
        (dict(preset="slow"), "preset"),
    ],
)
def test_generator_bad_inputs(random_generator, kwargs, message):
    call = dict(prompt="a red circle", seed=0) | kwargs
    with pytest.raises(InputError, match=message):
        random_generator.generate(call.pop("prompt"), **call)


def test_full_profile_loading_path_with_tiny_files(tmp_path):
    """The full-profile loader (torch .pth files, ``vae`` key, T5 folder) on files written like the official ones."""
    from transformers import T5EncoderModel

    fam, model, vae = _tiny_models(seed=5)
    (tmp_path / "t").mkdir()
    (tmp_path / "v").mkdir()
    torch.save(model.state_dict(), tmp_path / "t" / "infinity_2b_reg.pth")
    torch.save({"vae": vae.state_dict()}, tmp_path / "v" / "infinity_vae_d32reg.pth")
    tokenizer = build_word_tokenizer(["a red circle"])
    t5 = T5EncoderModel(tiny_t5_config(fam.t5, len(tokenizer)))
    t5.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    spec = dataclasses.replace(MODEL_SPEC, full_config={**TINY})
    weights = ResolvedWeights(
        "infinity-2b", "full",
        {"transformer": tmp_path / "t" / "infinity_2b_reg.pth", "vae": tmp_path / "v" / "infinity_vae_d32reg.pth",
         "text_encoder": tmp_path / "t5"},
    )  # fmt: skip
    gen = _generator_class().load(spec, weights, device="cpu")
    assert torch.equal(gen.transformer.head.weight, model.head.weight)
    assert not hasattr(gen.vae, "encoder")
    assert gen.generate("a red circle", seed=0).image.size == (32, 32)
    state = model.state_dict()
    state.pop("head.bias")
    torch.save(state, tmp_path / "t" / "infinity_2b_reg.pth")
    with pytest.raises(CheckpointMismatch, match="head.bias"):
        _generator_class().load(spec, weights, device="cpu")


# ------------------------------------------------------------------------------------------ shipped demo


DEMO = REPO / "checkpoints" / "demo" / "infinity-2b"


@pytest.mark.quality
def test_shipped_demo_loads_and_draws_the_asked_colours():
    assert (DEMO / "config.json").is_file(), f"the shipped demo checkpoint is missing from {DEMO}"
    import mmdemo
    from mmdemo.data.shapes import sample_single_object_prompts
    from mmdemo.eval.shapes_eval import judge

    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 20 * 2**20
    gen = mmdemo.load_generator("infinity-2b", profile="demo", device="cpu")
    prompts = [p for p, _ in sample_single_object_prompts(8, seed=2024)]
    correct = sum(judge(gen.generate(p, seed=i).image, p).color_ok for i, p in enumerate(prompts))
    assert correct >= 5, f"{correct}/8 colours right"


# ------------------------------------------------------------------------------------------ training script


def test_training_script_end_to_end_resume_and_reload(tmp_path, monkeypatch):
    import json
    import shutil

    from conftest import load_script

    import mmdemo
    from mmdemo.data.shapes import generate_shapes_dataset

    script = load_script("train_infinity_tiny")

    data = generate_shapes_dataset(tmp_path / "shapes", n=12, seed=3, size=32, max_objects=1)
    out = tmp_path / "run"
    common = ["--data", str(data), "--out", str(out), "--batch-size", "4", "--checkpoint-every", "1"]
    script.main(script.parse_args(common + ["--vae-steps", "2", "--tf-steps", "2"]))
    assert (out / "checkpoints" / "vae-1").is_dir() and (out / "checkpoints" / "transformer-1").is_dir()
    # Resume: each phase continues after its last checkpoint, no step repeated.
    script.main(script.parse_args(common + ["--vae-steps", "3", "--tf-steps", "3", "--resume"]))
    log = (out / "vae_losses.json").read_text()
    assert len(json.loads(log)) == 3  # steps 0, 1 kept from the first run, step 2 added; none repeated
    assert len(json.loads((out / "transformer_losses.json").read_text())) == 3
    assert (out / "checkpoints" / "vae-3").is_dir() and (out / "checkpoints" / "transformer-3").is_dir()
    assert (out / "loss.png").is_file()
    shutil.copytree(out / "final", tmp_path / "ckpt" / "demo" / "infinity-2b")
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path / "ckpt"))
    gen = mmdemo.load_generator("infinity-2b", profile="demo", device="cpu")
    assert gen.generate("a small red circle on the left", seed=0).image.size == (32, 32)
    with pytest.raises(ValueError, match="captions.txt"):
        script.parse_args(["--data", str(tmp_path), "--out", str(out)])
