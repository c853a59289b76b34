"""Numbered checkpoint folders (``checkpoint-<step>/``) and the loss history kept beside them.

Every training script saves its accelerate state into ``<out>/<prefix><step>/``, keeps only the newest few
and resumes from the newest one (``--resume-from-checkpoint latest``); this is the one place that knows how.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "checkpoint-"
HISTORY_FILE = "history.json"
logger = logging.getLogger(__name__)


def numbered_checkpoints(folder: str | Path, prefix: str = CHECKPOINT_PREFIX) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``<prefix><step>`` folder in ``folder``, oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).glob(f"{prefix}*")
        if p.is_dir() and (m := re.fullmatch(rf"{re.escape(prefix)}(\d+)", p.name))
    ]
    return sorted(found)


def last_checkpoint(folder: str | Path, prefix: str = CHECKPOINT_PREFIX) -> Path | None:
    """The newest ``<prefix><step>`` folder in ``folder``, or None."""
    found = numbered_checkpoints(folder, prefix)
    return found[-1][1] if found else None


def checkpoint_step(path: Path, prefix: str = CHECKPOINT_PREFIX) -> int:
    return int(path.name[len(prefix) :])


def prune_checkpoints(folder: str | Path, keep: int | None, prefix: str = CHECKPOINT_PREFIX) -> None:
    """Delete all but the newest ``keep`` checkpoints (``None`` or 0 keeps all)."""
    if not keep:
        return
    for _, path in numbered_checkpoints(folder, prefix)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def save_history(folder: Path, history: list[dict[str, float]]) -> None:
    (folder / HISTORY_FILE).write_text(json.dumps(history))


def load_history(folder: Path) -> list[dict[str, float]]:
    path = folder / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def resume_point(accelerator: Any, output_dir: Path, resume_from: str | None) -> tuple[int, list[dict]]:
    """Load ``--resume-from-checkpoint`` ('latest' or a checkpoint folder) into ``accelerator``.

    Returns the first step still to run and the history up to it ((0, []) when there is nothing to resume).
    """
    if not resume_from:
        return 0, []
    path = last_checkpoint(output_dir) if resume_from == "latest" else Path(resume_from)
    if path is None:
        logger.info("no checkpoint in %s; starting from scratch", output_dir)
        return 0, []
    accelerator.load_state(str(path))
    start = checkpoint_step(path)
    logger.info("resumed from %s at step %d", path, start)
    return start, [h for h in load_history(path) if h["step"] < start]


def save_checkpoint(accelerator: Any, output_dir: Path, done: int, history: list[dict], keep: int) -> None:
    """``checkpoint-<done>/``: the full accelerate state and the history; only the newest ``keep`` stay."""
    folder = output_dir / f"{CHECKPOINT_PREFIX}{done}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        save_history(folder, history)
        prune_checkpoints(output_dir, keep)


# One rolling ``<out>/state/`` folder (the captioner and the tiny pretraining scripts): the accelerate state and
# a JSON of the loop's own counters, overwritten at each save.
STATE_DIR = "state"
TRAIN_STATE = "train_state.json"


def resume_state(accelerator: Any, out: Path, resume_from: str | None, state: dict) -> dict:
    """``state`` as saved in ``<out>/state/`` ('latest') or in the folder ``resume_from``, loaded into
    ``accelerator``; ``state`` itself when there is nothing to resume. A named folder without a saved state is
    an error; 'latest' without one starts from scratch."""
    if not resume_from:
        return state
    folder = out / STATE_DIR if resume_from == "latest" else Path(resume_from)
    if (folder / TRAIN_STATE).is_file():
        accelerator.load_state(str(folder))
        loaded = json.loads((folder / TRAIN_STATE).read_text())
        accelerator.print(f"resumed from {folder} at step {loaded['global_step']}")
        return loaded
    if resume_from != "latest":
        raise ValueError(f"no checkpoint in {folder} (expected {TRAIN_STATE})")
    accelerator.print(f"no checkpoint in {folder}; starting from scratch")
    return state


def rolling_state(accelerator: Any, out: Path, resume_from: str | None) -> tuple[dict, Callable[[], None]]:
    """A loop's counters ``{"global_step", "history"}``, resumed as :func:`resume_state` does, and the function
    that saves them with the accelerate state in ``<out>/state/``."""
    state = resume_state(accelerator, out, resume_from, {"global_step": 0, "history": []})
    return state, lambda: save_state(accelerator, out, state)


def save_state(accelerator: Any, out: Path, state: dict) -> None:
    """Overwrite ``<out>/state/`` with the accelerate state and ``state`` (every process must call it)."""
    accelerator.wait_for_everyone()
    accelerator.save_state(str(out / STATE_DIR))
    if accelerator.is_main_process:
        (out / STATE_DIR / TRAIN_STATE).write_text(json.dumps(state))
