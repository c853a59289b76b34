"""No picture is ever made from NaN: every step count a model allows keeps the sampler finite, and a non-finite
value anywhere in sampling stops with an error that names the model and the step.

Why the scheduler-level sweep: a 1000-step run of a demo model takes 25-45 s on one CPU thread, too long to
repeat for every model x preset. What decides finiteness across the step range is the timestep grid (a repeated
timestep is a step of size zero, which DPM-Solver++ divides by), so every scheduler configuration we ship is
checked for every step count from 1 to 1000, and the full loop runs with a cheap stand-in network at the extremes.
The real demo models run at the extremes of the range (1 step, and 1000 steps for the fast DPM-Solver++ preset
that used to return black pictures) in the slow tests below.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmdemo.models.diffusion import sampling
from mmdemo.models.guards import NonFiniteOutput, check_finite

PIXEL = SimpleNamespace(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="epsilon",
)
LATENT = SimpleNamespace(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="epsilon",
)  # fmt: skip


def _schedulers() -> dict[str, object]:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from mmdemo.models.sdxl.config import SDXL_SCHEDULER_CONFIG, TINY_SCHEDULER_CONFIG

    made = {}
    for name, config in (("pixel", PIXEL), ("latent", LATENT)):
        for preset in ("fast", "report"):
            made[f"{name}-{preset}"] = sampling.make_scheduler(preset, config, clip_sample=name == "pixel")
    for name, config in (("sdxl-full", SDXL_SCHEDULER_CONFIG), ("sdxl-demo", TINY_SCHEDULER_CONFIG)):
        report = EulerDiscreteScheduler(**config)
        made[f"{name}-report"] = report
        made[f"{name}-fast"] = DPMSolverMultistepScheduler.from_config(
            report.config
        )  # as the adapter builds it
    return made


SCHEDULERS = _schedulers()


def test_the_pixel_model_configs_match_the_ones_tested_here():
    from mmdemo.models.diffusion.latent import LatentDiffusionConfig
    from mmdemo.models.diffusion.pixel import PixelDiffusionConfig

    for tested, real in ((PIXEL, PixelDiffusionConfig()), (LATENT, LatentDiffusionConfig())):
        assert sampling.schedule_kwargs(tested) == sampling.schedule_kwargs(real)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_allowed_step_count_gets_distinct_decreasing_timesteps(name):
    scheduler = SCHEDULERS[name]
    for steps in range(1, 1001):
        sampling.set_distinct_timesteps(scheduler, steps)
        timesteps = scheduler.timesteps.numpy()
        assert len(timesteps) == steps, (name, steps)
        assert (np.diff(timesteps) < 0).all(), f"{name}: repeated or rising timestep at {steps} steps"
        assert 0 <= timesteps.min() and timesteps.max() < 1000, (name, steps)


def test_grids_that_were_already_distinct_are_unchanged():
    """Only the broken step counts change: every picture made so far at other step counts stays the same."""
    scheduler = SCHEDULERS["pixel-fast"]
    for steps in (1, 20, 25, 100, 400, 999):
        scheduler.set_timesteps(steps)
        own = scheduler.timesteps.clone()
        sampling.set_distinct_timesteps(scheduler, steps)
        assert torch.equal(scheduler.timesteps, own)
    # and the one that was broken: diffusers' own grid repeats a timestep at 1000 steps
    scheduler.set_timesteps(1000)
    assert len(torch.unique(scheduler.timesteps)) < 1000
    sampling.set_distinct_timesteps(scheduler, 1000)
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))


def _stand_in(x, t, states, mask):
    """A contracting 'network' that keeps the sampler's arithmetic honest without costing anything."""
    return 0.5 * x + 0.01 * states.mean()


def _sample(scheduler, steps: int, *, denoise=_stand_in, name="stand-in"):
    cond, uncond = torch.ones(1, 2, 4), torch.zeros(1, 2, 4)
    return sampling.guided_sample(
        denoise, scheduler, (1, 4, 8, 8), cond, uncond, steps=steps, guidance=3.0,
        generator=torch.Generator().manual_seed(0), model_name=name,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 999, 1000])
def test_sampling_at_the_extremes_of_the_step_range_is_finite(name, steps):
    out = _sample(SCHEDULERS[name], steps)
    assert torch.isfinite(out).all()


def test_without_the_fix_1000_fast_steps_turn_nan_and_the_guard_names_model_and_step(monkeypatch):
    """The bug itself: diffusers' grid at 1000 steps repeats timestep 500; the guard catches the NaN there."""
    monkeypatch.setattr(sampling, "set_distinct_timesteps", lambda s, n, d=None: s.set_timesteps(n, device=d))
    with pytest.raises(NonFiniteOutput) as caught:
        _sample(SCHEDULERS["pixel-fast"], 1000, name="pixel-diffusion")
    message = str(caught.value)
    assert "pixel-diffusion" in message and "step 501 of 1000" in message and "timestep 500" in message
    assert "DPMSolverMultistepScheduler update" in message


def test_a_nan_from_the_network_stops_sampling_at_that_step():
    calls = []

    def breaks_at_step_3(x, t, states, mask):
        calls.append(int(t[0]))
        out = _stand_in(x, t, states, mask)
        return out * float("nan") if len(calls) == 3 else out

    with pytest.raises(NonFiniteOutput) as caught:
        _sample(SCHEDULERS["pixel-report"], 10, denoise=breaks_at_step_3, name="pixel-diffusion")
    assert "at step 3 of 10" in str(caught.value) and "the network's prediction" in str(caught.value)
    assert len(calls) == 3  # stopped at once, no further network calls
    assert caught.value.nan == 4 * 8 * 8 and caught.value.model == "pixel-diffusion"


def test_check_finite_counts_nan_and_infinity():
    ok = torch.ones(3)
    assert check_finite(ok, model="m", where="here") is ok
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    with pytest.raises(
        NonFiniteOutput, match=r"m produced non-finite values here \(1 NaN and 2 infinite out of 4\)"
    ):
        check_finite(bad, model="m", where="here")


# ------------------------------------------------------------------------------------------ the demo models


@pytest.fixture(scope="module")
def demo_generators():
    import mmdemo

    loaded: dict[str, object] = {}

    def get(model_id: str):
        if model_id not in loaded:
            loaded[model_id] = mmdemo.load_generator(model_id, profile="demo")
        return loaded[model_id]

    return get


def _picture(result) -> np.ndarray:
    image = result.image if hasattr(result, "image") else result
    return np.asarray(image, dtype=np.float64)


def _assert_a_picture(array: np.ndarray) -> None:
    assert array.std() > 1.0 and array.mean() > 1.0, "a flat or black picture"


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["pixel-diffusion", "latent-diffusion", "sdxl-base", "sdxl-lora"])
@pytest.mark.parametrize("preset", ["fast", "report"])
def test_demo_models_draw_a_picture_at_one_step(demo_generators, model_id, preset):
    _assert_a_picture(
        _picture(demo_generators(model_id).generate("a red circle", seed=0, preset=preset, steps=1))
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pixel_diffusion_fast_at_1000_steps_is_a_picture_not_black(demo_generators):
    """The reported case: /generate with {"pixel-diffusion": {"steps": 1000}} at the fast preset was all black."""
    result = demo_generators("pixel-diffusion").generate(
        "a red circle on the left", seed=1234, preset="fast", steps=1000
    )
    _assert_a_picture(_picture(result))


@pytest.mark.slow
def test_sdxl_demo_fast_at_61_steps_runs_61_distinct_steps(demo_generators):
    """61 was one of the counts where the trailing grid ended at timestep -1 with one step too many."""
    seen = []
    result = demo_generators("sdxl-base").generate(
        "a red circle", seed=0, preset="fast", steps=61, progress=lambda done, total: seen.append(total)
    )
    _assert_a_picture(_picture(result))
    assert set(seen) == {61} and len(seen) == 61


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(guidance=0.0), dict(guidance=50.0), dict(tau=0.01), dict(tau=10.0)])
def test_infinity_demo_draws_at_the_extremes_of_its_options(demo_generators, options):
    _assert_a_picture(_picture(demo_generators("infinity-2b").generate("a red circle", seed=0, **options)))


def test_a_nan_in_a_real_model_becomes_that_models_error_in_the_service(demo_generators, monkeypatch):
    """Through the service, as the app calls it: the panel gets an error naming model and step, no picture."""
    from mmdemo import service
    from mmdemo.runtime import ModelManager

    generator = demo_generators("pixel-diffusion")
    denoiser = generator.model.denoiser
    original = type(denoiser).forward
    monkeypatch.setattr(
        type(denoiser), "forward", lambda self, *a, **k: original(self, *a, **k) * float("nan")
    )
    manager = ModelManager("demo", device="cpu", loader=lambda model_id, profile, device: generator)
    settings = service.check_generate_settings("a red circle", 0, profiles="demo")
    outcomes = list(service.generate_images(manager, settings, ["pixel-diffusion"]))
    (model_id, image, record) = outcomes[0][:3]
    assert image is None
    assert "pixel-diffusion produced non-finite values at step 1 of" in record.error
