"""What every training script shares: threads, accelerator, ``--max-minutes`` stop; checkpoints and plots in
the submodules (:mod:`mmdemo.training.checkpoints`, :mod:`mmdemo.training.plots`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


def set_threads() -> None:
    """Honour ``MMDEMO_NUM_THREADS`` so shared CPUs are not oversubscribed."""
    threads = os.environ.get("MMDEMO_NUM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a training script: its module docstring, laid out as written, is the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: a Flickr8k-layout folder (``Images/`` + ``captions.txt``), as every script reads its data."""
    parser.add_argument(
        "--data", type=Path, required=True, help="Flickr8k-layout folder (Images/ + captions.txt)"
    )


def add_rolling_state_arguments(parser: argparse.ArgumentParser, checkpointing_steps: int) -> None:
    """``--checkpointing-steps``, ``--resume-from-checkpoint`` and ``--max-minutes`` of a script that keeps one
    rolling ``OUT/state/`` folder (:func:`mmdemo.training.checkpoints.rolling_state`)."""
    parser.add_argument("--checkpointing-steps", type=int, default=checkpointing_steps)
    parser.add_argument(
        "--resume-from-checkpoint", default=None, help='"latest" (OUT/state) or a state folder'
    )
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long"
    )


def add_step_loop_arguments(
    parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, checkpointing_steps: int
) -> None:
    """What a fixed-step loop over :func:`step_rows` batches takes (``--steps``, ``--batch-size``, ``--lr``,
    ``--seed``) and its rolling state's options (:func:`add_rolling_state_arguments`), with these defaults."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="global batch (split over processes)")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    add_rolling_state_arguments(parser, checkpointing_steps)


def check_captions_folder(folder: Path, flag: str = "--data") -> None:
    """``ValueError`` unless ``folder`` is a Flickr8k-layout folder (it has ``captions.txt``)."""
    if not (folder / "captions.txt").is_file():
        raise ValueError(
            f"{flag} {folder} has no captions.txt; pass a Flickr8k-layout folder "
            "(python -m mmdemo.data.shapes --out DIR writes one)"
        )


def check_at_least_one(args: argparse.Namespace, names: Iterable[str]) -> None:
    """``ValueError`` naming the first of the options ``names`` (argparse names) set below 1, and its value."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def make_accelerator(**kwargs: Any) -> Any:
    """``accelerate.Accelerator(**kwargs)`` that forms a real process group on a machine without CUDA.

    cpu=True there makes a multi-process launch (torchrun under ``accelerate launch --multi_gpu
    --num_processes N``) a gloo MULTI_CPU run instead of N unrelated single-process runs.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def run_steps(
    accelerator: Any, args: argparse.Namespace, desc: str, train_step: Callable[[int], torch.Tensor]
) -> tuple[dict, float]:
    """The fixed-step loop of a script with a rolling ``OUT/state/`` (:func:`add_step_loop_arguments`).

    Resumes as ``--resume-from-checkpoint`` says, then calls ``train_step(step)`` (one optimiser update; it
    returns the step's loss) until ``--steps`` are done or ``--max-minutes`` have passed, saving the state every
    ``--checkpointing-steps`` and at the end. Returns the state (``global_step``, ``history``) and when the loop
    started (``time.time()``).
    """
    from mmdemo.training.checkpoints import rolling_state

    state, save_state = rolling_state(accelerator, args.out, args.resume_from_checkpoint)
    started = time.time()
    progress = progress_bar(accelerator, args.steps, state["global_step"], desc)
    while state["global_step"] < args.steps:
        step = state["global_step"]
        loss = train_step(step)
        if finish_step(accelerator, loss, state, step, progress, save=save_state,
                       every=args.checkpointing_steps, started=started, max_minutes=args.max_minutes):  # fmt: skip
            break
    progress.close()
    save_state()
    return state, started


def step_rows(n: int, step: int, batch_size: int, seed: int, accelerator: Any) -> torch.Tensor:
    """Which of ``n`` rows this process trains on at global ``step``.

    Epoch ``e`` is a permutation seeded by ``seed * 1000 + e``, cut into full batches of ``batch_size``, each
    split over the processes. The batch is a pure function of the step, so resuming neither repeats nor skips
    data.
    """
    epoch, index = divmod(step, max(1, n // batch_size))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    batch = order[index * batch_size : (index + 1) * batch_size]
    return batch[accelerator.process_index :: accelerator.num_processes]


def progress_bar(accelerator: Any, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar shown by the main process only."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_main_process)


def recent_loss(history: list[list[float]], last: int) -> float:
    """Mean of the last ``last`` losses of a ``[[step, loss], ...]`` history, rounded to 4 digits (0 if empty)."""
    tail = history[-last:]
    return round(sum(h[1] for h in tail) / max(1, len(tail)), 4)


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
