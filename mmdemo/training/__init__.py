"""What every training script shares: threads, accelerator, ``--max-minutes`` stop; checkpoints and plots in
the submodules (:mod:`mmdemo.training.checkpoints`, :mod:`mmdemo.training.plots`)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch


def set_threads() -> None:
    """Honour ``MMDEMO_NUM_THREADS`` so shared CPUs are not oversubscribed."""
    threads = os.environ.get("MMDEMO_NUM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def make_accelerator(**kwargs: Any) -> Any:
    """``accelerate.Accelerator(**kwargs)`` that forms a real process group on a machine without CUDA.

    cpu=True there makes a multi-process launch (torchrun under ``accelerate launch --multi_gpu
    --num_processes N``) a gloo MULTI_CPU run instead of N unrelated single-process runs.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def time_is_up(accelerator: Any, started: float, max_minutes: float | None) -> bool:
    """Whether ``max_minutes`` have passed since ``started`` on any process.

    Every process must stop at the same step, or the others would wait forever in the next all-reduce.
    """
    late = max_minutes is not None and time.time() - started > 60 * max_minutes
    return bool(accelerator.gather(torch.tensor([float(late)], device=accelerator.device)).max() > 0)


def finish_step(
    accelerator: Any,
    loss: torch.Tensor,
    state: dict,
    step: int,
    progress: Any,
    *,
    save: Any,
    every: int,
    started: float,
    max_minutes: float | None,
) -> bool:
    """After ``step``'s update, for loops that keep ``state = {"global_step", "history"}``: record the loss
    averaged over processes, advance the progress bar, call ``save()`` every ``every`` steps; True when the
    time budget is spent (every process stops at the same step)."""
    mean = accelerator.reduce(loss.detach(), reduction="mean").item()
    state["history"].append([step, mean])
    state["global_step"] = step + 1
    progress.update(1)
    progress.set_postfix(loss=f"{mean:.3f}")
    if state["global_step"] % every == 0:
        save()
    return time_is_up(accelerator, started, max_minutes)
