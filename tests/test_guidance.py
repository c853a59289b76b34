"""Classifier-free guidance, pinned with scripted networks: the mixing formula itself, not its statistics.

Both samplers promise the same thing. Our diffusion sampler mixes the denoiser's predictions as
``uncond + g * (cond - uncond)``; Infinity mixes its logits as ``cfg * cond + (1 - cfg) * uncond`` (the same
line, written the other way round). At g = 1 there is one pass, conditional only; at g = 0 the result is the
unconditional prediction. Scripted networks return a constant per half, so any slip (guidance dropped, the
halves swapped, a wrong sign) changes the number the sampler hands on, whatever the weights.
"""

from __future__ import annotations

import pytest
import torch

from mmdemo.models.diffusion.sampling import guided_sample

COND, UNCOND = 2.0, -1.0  # what the scripted denoiser predicts for the prompt and for the empty prompt


def recording_scheduler():
    """A real diffusers scheduler whose ``step`` also records the prediction it was handed."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    scheduler.predictions = []
    real_step = scheduler.step

    def step(pred, t, sample, *args, **kwargs):
        scheduler.predictions.append(pred.clone())
        return real_step(pred, t, sample, *args, **kwargs)

    scheduler.step = step
    return scheduler


class ScriptedDenoiser:
    """Predicts, for every row, the mean of that row's text states: COND for the prompt, UNCOND for the empty one."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, latents, timesteps, states, mask):
        self.batch_sizes.append(latents.shape[0])
        assert timesteps.shape == (latents.shape[0],), "one timestep per row"
        per_row = states.float().mean(dim=(1, 2)).view(-1, *([1] * (latents.dim() - 1)))
        return per_row.expand_as(latents).clone()


def _run(guidance: float, batch: int = 2, steps: int = 3):
    scheduler, denoiser = recording_scheduler(), ScriptedDenoiser()
    cond = torch.full((batch, 5, 8), COND)
    uncond = torch.full((batch, 5, 8), UNCOND)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    guided_sample(
        denoiser,
        scheduler,
        (batch, 3, 4, 4),
        cond,
        uncond,
        steps=steps,
        guidance=guidance,
        generator=torch.Generator().manual_seed(0),
        cond_mask=mask,
        uncond_mask=mask,
    )
    assert len(scheduler.predictions) == steps
    return scheduler.predictions, denoiser.batch_sizes


@pytest.mark.parametrize("guidance", [7.5, 3.0, 0.5, 12.0])
def test_diffusion_guidance_mixes_uncond_plus_g_times_the_difference(guidance):
    predictions, batch_sizes = _run(guidance)
    expected = UNCOND + guidance * (COND - UNCOND)
    for pred in predictions:
        assert pred.shape == (2, 3, 4, 4)
        assert torch.allclose(pred, torch.full_like(pred, expected)), (
            f"classifier-free guidance contract broken: at g={guidance} the sampler must step with "
            f"uncond + g*(cond - uncond) = {expected}, it stepped with {pred.unique().tolist()}"
        )
    assert batch_sizes == [4, 4, 4], "a guided step runs the prompt and the empty prompt in one batch"


def test_diffusion_guidance_one_is_a_single_conditional_pass():
    predictions, batch_sizes = _run(1.0)
    assert batch_sizes == [2, 2, 2], (
        f"guidance 1 contract broken: one conditional pass per step (batch 2), got batches {batch_sizes}"
    )
    assert all(torch.equal(p, torch.full_like(p, COND)) for p in predictions), (
        "guidance 1 contract broken: the step must use the conditional prediction as it is"
    )


def test_diffusion_guidance_zero_is_the_unconditional_prediction():
    predictions, _ = _run(0.0)
    assert all(torch.allclose(p, torch.full_like(p, UNCOND)) for p in predictions), (
        "guidance 0 contract broken: the step must use the unconditional prediction, got "
        f"{predictions[0].unique().tolist()}"
    )


# ------------------------------------------------------------------------------------------------ Infinity

INF_COND, INF_UNCOND = 1.0, -2.0  # scripted logits of the conditional and unconditional halves


def _infinity_run(cfg: float, tau: float, monkeypatch):
    """Sample a tiny Infinity whose logits are scripted; returns the logits the bit sampler received."""
    from mmdemo.models.infinity import Infinity, InfinityConfig, InfinityFamilyConfig, SamplingOptions
    from mmdemo.models.infinity import sampler as infinity_sampler
    from mmdemo.models.infinity.schedules import get_schedule
    from mmdemo.registry import get_spec

    family = InfinityFamilyConfig(**get_spec("infinity-2b").tiny_config)
    torch.manual_seed(0)
    model = Infinity(InfinityConfig(**family.transformer)).eval()
    scales = list(get_schedule(1.0, "0.06M", family.budget_scales, family.stride).scales)[:3]
    batch = 1
    logits_batches: list[int] = []
    original_logits = model.logits

    def scripted_logits(x, cond):
        real = original_logits(x, cond)
        logits_batches.append(real.shape[0])
        # Rows [0, batch) are the prompt, rows [batch, 2 batch) the unconditional half when guided.
        rows = torch.arange(real.shape[0]).view(-1, 1, 1)
        return torch.where(rows < batch, INF_COND, INF_UNCOND).expand_as(real).clone()

    monkeypatch.setattr(model, "logits", scripted_logits)
    received: list[torch.Tensor] = []
    real_sampler = infinity_sampler.sample_from_logits

    def recording_sampler(logits, generator, top_k=0, top_p=0.0):
        received.append(logits.clone())
        return real_sampler(logits, generator, top_k, top_p)

    monkeypatch.setattr(infinity_sampler, "sample_from_logits", recording_sampler)
    text = torch.randn(batch, 4, family.transformer["text_channels"], generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, 4, dtype=torch.bool)
    infinity_sampler.sample_codes(
        model, text, mask, scales, SamplingOptions(cfg=cfg, tau=tau, top_p=0.0), torch.Generator().manual_seed(0)
    )
    assert len(received) == len(scales)
    return received, logits_batches


@pytest.mark.parametrize("cfg", [3.0, 0.5])
def test_infinity_guidance_mixes_cfg_cond_plus_one_minus_cfg_uncond(cfg, monkeypatch):
    tau = 0.5
    received, batches = _infinity_run(cfg, tau, monkeypatch)
    expected = (cfg * INF_COND + (1 - cfg) * INF_UNCOND) / tau
    for logits in received:
        assert logits.shape[0] == 1, "the bit sampler gets one row per prompt"
        assert torch.allclose(logits, torch.full_like(logits, expected)), (
            f"Infinity guidance contract broken: at cfg={cfg}, tau={tau} the bits must be drawn from "
            f"(cfg*cond + (1-cfg)*uncond)/tau = {expected}, got {logits.unique().tolist()}"
        )
    assert batches == [2] * len(received), "a guided scale runs prompt and unconditional rows together"


def test_infinity_guidance_one_is_a_single_conditional_pass(monkeypatch):
    received, batches = _infinity_run(1.0, 1.0, monkeypatch)
    assert batches == [1] * len(received), (
        f"Infinity guidance 1 contract broken: one conditional pass per scale, got batches {batches}"
    )
    assert all(torch.equal(x, torch.full_like(x, INF_COND)) for x in received)


def test_infinity_guidance_zero_is_the_unconditional_logits(monkeypatch):
    received, _ = _infinity_run(0.0, 1.0, monkeypatch)
    assert all(torch.allclose(x, torch.full_like(x, INF_UNCOND)) for x in received), (
        "Infinity guidance 0 contract broken: the bits must come from the unconditional logits, got "
        f"{received[0].unique().tolist()}"
    )
