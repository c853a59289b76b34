"""Three places where our Infinity used to differ from the official implementation, each checked against values
computed here independently (numpy's float32 arithmetic, the published 1M grids, the official VAE's key layout).

* RoPE positions: upstream computes ``arange(h) * (H / h)`` in float32 and rounds half to even.
* The RoPE grid when none is given: upstream always spreads positions over the template's 1M grid.
* The VAE file: upstream's quantiser is registered twice, so its state dict repeats ``quantizer.*`` as
  ``quantize.*``; the copy is accepted when equal, anything else stays an error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdemo.models.infinity import InfinityFamilyConfig
from mmdemo.models.infinity.bsq_vae import BSQVAE, BSQVAEConfig, teacher_forcing_inputs
from mmdemo.models.infinity.loading import (
    CheckpointMismatch,
    load_strict,
    unwrap_plain_vae_names,
    vae_state_from_file,
)
from mmdemo.models.infinity.sampler import SamplingOptions, sample_codes
from mmdemo.models.infinity.schedules import (
    OFFICIAL_BUDGET_SCALES,
    TEMPLATES,
    full_size_rope_grid,
    get_schedule,
)
from mmdemo.models.infinity.transformer import Infinity, InfinityConfig, rope_angles
from mmdemo.registry import get_spec

TINY = InfinityFamilyConfig(**get_spec("infinity-2b").tiny_config)


def _expected_positions(scales, grid):
    """Row and column position of every token, in numpy float32 (np.round rounds half to even)."""
    rows, cols = [], []
    for h, w in scales:
        ys = np.round(np.arange(h, dtype=np.float32) * np.float32(grid[0] / h))
        xs = np.round(np.arange(w, dtype=np.float32) * np.float32(grid[1] / w))
        rows.append(np.repeat(ys, w))
        cols.append(np.tile(xs, h))
    return np.concatenate(rows), np.concatenate(cols)


def test_the_tie_that_float64_breaks_the_other_way():
    assert np.float32(27) * np.float32(111 / 54) == np.float32(55.5)  # exact in float32
    assert 27 * (111 / 54) < 55.5  # 55.49999... in float64
    assert np.round(np.float32(55.5)) == 56  # half to even


@pytest.mark.parametrize("template", [3.0, 0.333])
@pytest.mark.parametrize("budget", ["0.25M", "0.60M", "1M"])
def test_rope_positions_of_the_3_1_and_1_3_templates_match_float32_half_even(template, budget):
    schedule = get_schedule(template, budget, OFFICIAL_BUDGET_SCALES)
    head_dim = 128  # Infinity-2B: 2048 / 16 heads
    angles = rope_angles(list(schedule.scales), schedule.rope_grid, head_dim)
    assert angles.dtype == torch.float32
    # The first frequency of each half is base ** 0 = 1: those angles are the positions themselves.
    rows, cols = angles[:, 0].numpy(), angles[:, head_dim // 4].numpy()
    want_rows, want_cols = _expected_positions(schedule.scales, schedule.rope_grid)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    # The 18 tokens of row (or column) 27 of the 54x18 scale sit at 56, not 55.
    k = schedule.scales.index((54, 18) if template == 3.0 else (18, 54))
    start = sum(h * w for h, w in schedule.scales[:k])
    along = rows if template == 3.0 else cols
    token_27 = [start + 27 * 18 + j for j in range(18)] if template == 3.0 else [start + i * 54 + 27 for i in range(18)]
    assert set(along[token_27].tolist()) == {56.0}


def test_rope_frequencies_are_the_float32_ones():
    head_dim = 128
    angles = rope_angles([(1, 1), (2, 2)], (64, 64), head_dim)
    quarter = head_dim // 4
    exponents = np.arange(0, head_dim // 2, 2, dtype=np.float32) / np.float32(head_dim // 2)
    inv_freq = np.float32(1.0) / np.power(np.float32(10000.0), exponents, dtype=np.float32)
    # token 4 is row 1, column 1 of the 2x2 scale spread over 64: position 32 on both axes
    np.testing.assert_allclose(angles[4, :quarter].numpy(), np.float32(32) * inv_freq, rtol=2e-7, atol=0)
    np.testing.assert_array_equal(angles[4, :quarter].numpy(), angles[4, quarter:].numpy())


# ------------------------------------------------------------------------------------------ default RoPE grid

PUBLISHED_1M_GRIDS = {1.0: (64, 64), 3.0: (111, 37), 0.333: (37, 111), 0.75: (54, 72), 1.75: (84, 48)}


@pytest.mark.parametrize("template", sorted(PUBLISHED_1M_GRIDS))
@pytest.mark.parametrize("budget", sorted(OFFICIAL_BUDGET_SCALES))
def test_default_rope_grid_is_the_templates_1m_grid(template, budget):
    schedule = get_schedule(template, budget, OFFICIAL_BUDGET_SCALES)
    assert full_size_rope_grid(schedule.scales) == PUBLISHED_1M_GRIDS[template]


def test_scales_that_fit_several_templates_need_an_explicit_grid():
    with pytest.raises(ValueError, match="pass rope_grid explicitly"):
        full_size_rope_grid([(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="begin no template"):
        full_size_rope_grid([(1, 1), (3, 7)])


def _tiny_inputs(scales, seed=0):
    torch.manual_seed(seed)
    model = Infinity(InfinityConfig(**TINY.transformer)).eval()
    vae = BSQVAE(BSQVAEConfig(**TINY.vae)).eval()
    text = torch.randn(1, 5, TINY.transformer["text_channels"])
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        _, bits = vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1, scales)
    return model, text, mask, teacher_forcing_inputs(bits, scales, TINY.transformer["codebook_dim"])


def test_teacher_forcing_without_a_grid_uses_the_1m_grid():
    scales = list(TEMPLATES[1.0][:5])  # the demo model's 0.06M schedule, ending at 8x8
    model, text, mask, inputs = _tiny_inputs(scales)
    with torch.no_grad():
        default = model(text, mask, inputs, scales)
        full_grid = model(text, mask, inputs, scales, rope_grid=(64, 64))
        last_scale = model(text, mask, inputs, scales, rope_grid=(8, 8))
    assert torch.equal(default, full_grid)
    assert not torch.allclose(default, last_scale, atol=1e-3)  # the grid matters, so the test can fail


def test_sampling_without_a_grid_uses_the_1m_grid():
    scales = list(TEMPLATES[1.0][:5])
    model, text, mask, _ = _tiny_inputs(scales, seed=1)
    options = SamplingOptions(cfg=1.0, tau=1.0, top_p=0.0)

    def draw(grid):
        with torch.no_grad():
            return sample_codes(model, text, mask, scales, options, torch.Generator().manual_seed(3), rope_grid=grid)

    assert torch.equal(draw(None)[0], draw((64, 64))[0])


# ------------------------------------------------------------------------------------------ VAE file keys


def _official_layout_state(seed=0):
    """A VAE state dict laid out as the official file: under "vae", quantiser saved under both names."""
    torch.manual_seed(seed)
    vae = BSQVAE(BSQVAEConfig(**TINY.vae))
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    aliases = {"quantize." + k[len("quantizer.") :]: v.clone() for k, v in state.items() if k.startswith("quantizer.")}
    assert aliases, "the quantiser has state to repeat"
    return vae, {"vae": {**state, **aliases}}


def _powers_of_two(bits):
    return torch.tensor([2**i for i in reversed(range(bits))])


def test_full_vae_loads_the_official_layout():
    vae, raw = _official_layout_state()
    target = BSQVAE(BSQVAEConfig(**TINY.vae))
    load_strict(target, vae_state_from_file(raw), what="vae")
    assert torch.equal(target.quantizer.lfq.mask, _powers_of_two(TINY.vae["codebook_dim"]))
    assert torch.equal(target.encoder.conv_in.conv.weight, vae.encoder.conv_in.conv.weight)


def test_decoder_only_vae_loads_the_official_layout():
    vae, raw = _official_layout_state()
    target = BSQVAE(BSQVAEConfig(**TINY.vae), with_encoder=False)
    state = unwrap_plain_vae_names(vae_state_from_file(raw), set(target.state_dict()))
    load_strict(target, state, what="vae", ignored_prefixes=("encoder.",))
    assert torch.equal(target.decoder.conv_out.conv.weight, vae.decoder.conv_out.conv.weight)


def test_an_alias_that_differs_or_has_no_original_is_an_error():
    _, raw = _official_layout_state()
    key = next(k for k in raw["vae"] if k.startswith("quantize."))
    changed = {**raw["vae"], key: raw["vae"][key] + 1}
    with pytest.raises(CheckpointMismatch, match="differs from quantizer"):
        vae_state_from_file({"vae": changed})
    orphan = {k: v for k, v in raw["vae"].items() if k != "quantizer." + key[len("quantize.") :]}
    with pytest.raises(CheckpointMismatch, match="no original"):
        vae_state_from_file({"vae": orphan})


def test_every_other_unexpected_key_is_still_an_error():
    _, raw = _official_layout_state()
    for extra in ("quantizerx.lfq.mask", "decoder.extra.weight", "quantize_extra"):
        state = vae_state_from_file({"vae": {**raw["vae"], extra: torch.zeros(2)}})
        with pytest.raises(CheckpointMismatch, match=f"unexpected keys: {extra}"):
            load_strict(BSQVAE(BSQVAEConfig(**TINY.vae)), state, what="vae")
