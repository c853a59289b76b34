"""Noise schedules, the two sampling presets and the classifier-free-guidance loop.

Presets (the same for both of our diffusion models):

* ``report``: what the report sampled with, ``DDPMScheduler`` ancestral sampling (100 steps for pixel
  diffusion, 1000 for the latent model: the model's ``steps`` default in the registry);
* ``fast``: ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M), 20-25 steps by default (the ``steps`` option's
  default in the registry), which reaches the quality of the long DDPM chain in a fraction
  of the network calls (``bench/diffusion_presets.py`` measures both).

Every call draws its noise from its own ``torch.Generator`` seeded with the request's seed, so the same seed
gives the same image whatever else runs in the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mmdemo.models.guards import check_finite
from mmdemo.previews import preview_steps

PRESET_SCHEDULERS = {"report": "DDPMScheduler", "fast": "DPMSolverMultistepScheduler"}

# (latents, timesteps, text states, text mask) -> model output of the same shape as latents
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def schedule_kwargs(config: Any) -> dict[str, Any]:
    """The noise-schedule settings every scheduler of this model shares (from the family config)."""
    kwargs: dict[str, Any] = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )
    if config.beta_schedule in ("linear", "scaled_linear"):
        kwargs.update(beta_start=config.beta_start, beta_end=config.beta_end)
    return kwargs


def training_scheduler(config: Any, *, clip_sample: bool) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule_kwargs(config), clip_sample=clip_sample)


def make_scheduler(preset: str, config: Any, *, clip_sample: bool) -> Any:
    """A fresh scheduler for one call (schedulers keep per-call state, so they are never shared)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    if preset == "report":
        return DDPMScheduler(**schedule_kwargs(config), clip_sample=clip_sample)
    if preset == "fast":
        # final_sigmas_type "zero" ends on the clean image; lower_order_final keeps <15-step runs stable.
        return DPMSolverMultistepScheduler(
            **schedule_kwargs(config),
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    raise ValueError(f"unknown preset {preset!r}; choose 'fast' or 'report'")


def distinct_timesteps(scheduler: Any, steps: int) -> list[int] | None:
    """None when ``scheduler``'s own grid for ``steps`` steps is sound, else ``steps`` timesteps that are.

    Sound: ``steps`` timesteps, strictly decreasing, all in ``[0, T)``. diffusers' spacings break that at some
    step counts: "linspace" rounds ``steps + 1`` evenly spaced points over ``[0, T - 1]``, so at ``steps == T``
    (1000 of 1000) two round to the same timestep; "leading" (SDXL's) collapses every timestep to one as soon
    as ``steps >= T``; "trailing" (our demo SDXL's) makes one timestep too many at some counts (61 of 1000),
    the last being -1. A repeated timestep is a step of size zero, which DPM-Solver++ divides by, and the
    picture becomes NaN. The replacement is ``steps`` distinct timesteps evenly spaced from ``T - 1`` down to 0
    (every training timestep once at ``steps == T``), which is what a sampler asked for that many steps means.
    Sound grids are kept, so pictures at every other step count stay the same. (Sets ``scheduler``'s
    timesteps as a side effect.)
    """
    total = int(scheduler.config.num_train_timesteps)
    if steps > total:
        raise ValueError(f"{steps} steps need {steps} distinct timesteps; this model has {total}")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if (
        len(timesteps) == steps
        and bool((timesteps[1:] < timesteps[:-1]).all())
        and 0 <= float(timesteps.min())
        and float(timesteps.max()) < total
    ):
        return None
    return np.linspace(total - 1, 0, steps).round().astype(np.int64).tolist()


def set_distinct_timesteps(scheduler: Any, steps: int, device: Any = None) -> None:
    """``scheduler.set_timesteps(steps)`` without a repeated timestep (see :func:`distinct_timesteps`)."""
    custom = distinct_timesteps(scheduler, steps)
    if custom is None:
        scheduler.set_timesteps(steps, device=device)
    else:
        scheduler.set_timesteps(timesteps=custom, device=device)


@torch.no_grad()
def guided_sample(
    denoise: DenoiseFn,
    scheduler: Any,
    shape: tuple[int, ...],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    cond_mask: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    preview: Callable[[int, int, torch.Tensor], None] | None = None,
    model_name: str = "the diffusion model",
) -> torch.Tensor:
    """Run ``scheduler`` for ``steps`` steps with classifier-free guidance; returns the clean sample.

    ``guidance`` g mixes the two predictions as ``uncond + g * (cond - uncond)``: 1 is the plain conditional
    model, 0 the unconditional one. At g == 1 the unconditional pass is skipped. A NaN or infinity in the
    network's prediction or the scheduler's update raises :class:`~mmdemo.models.guards.NonFiniteOutput`
    naming ``model_name`` and the step. ``preview(done, total, clean)`` receives the clean sample predicted at a
    few steps (:func:`mmdemo.previews.preview_steps`); it only reads, so the result is the same without it.
    """
    device = cond.device
    set_distinct_timesteps(scheduler, steps, device)
    # Noise comes from the call's own generator on the CPU, so a seed gives the same image on any device.
    sample = (
        torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * scheduler.init_noise_sigma
    )
    timesteps = scheduler.timesteps
    preview_at = preview_steps(len(timesteps))
    for i, t in enumerate(timesteps):
        if guidance == 1.0:
            model_in = scheduler.scale_model_input(sample, t)
            pred = denoise(model_in, t.expand(shape[0]), cond, cond_mask)
        else:
            model_in = scheduler.scale_model_input(torch.cat([sample, sample]), t)
            states = torch.cat([uncond, cond])
            mask = None if cond_mask is None else torch.cat([uncond_mask, cond_mask])
            pred_uncond, pred_cond = denoise(model_in, t.expand(2 * shape[0]), states, mask).chunk(2)
            pred = pred_uncond + guidance * (pred_cond - pred_uncond)
        at = f"at step {i + 1} of {len(timesteps)} (timestep {int(t)}"
        check_finite(pred, model=model_name, where=f"{at}, the network's prediction)")
        if preview is not None and i + 1 in preview_at:
            preview(i + 1, len(timesteps), predicted_clean(scheduler, sample, pred, t))
        sample = scheduler.step(pred, t, sample, generator=generator).prev_sample
        check_finite(sample, model=model_name, where=f"{at}, the {type(scheduler).__name__} update)")
        if progress is not None:
            progress(i + 1, len(timesteps))
    return sample


def predicted_clean(
    scheduler: Any, sample: torch.Tensor, pred: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The clean sample x0 that the network's output ``pred`` at timestep ``t`` implies for ``sample`` x_t.

    Both presets' schedulers keep the training schedule's variance-preserving form x_t = a x0 + s noise, with
    a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t), so x0 follows from the prediction type: noise
    (x0 = (x_t - s eps) / a), velocity (x0 = a x_t - s v) or the sample itself. Read-only: the scheduler's
    state is untouched.
    """
    alpha_bar = scheduler.alphas_cumprod[int(t)].to(device=sample.device, dtype=torch.float32)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - s * pred) / a
    if kind == "v_prediction":
        return a * sample - s * pred
    if kind == "sample":
        return pred
    raise ValueError(f"no clean-sample formula for prediction type {kind!r}")


def to_pil(images: torch.Tensor) -> list[Any]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images."""
    from PIL import Image

    array = (
        ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(a, mode="RGB") for a in array]
