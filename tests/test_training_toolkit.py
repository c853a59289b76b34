"""The training toolkit every script shares: numbered checkpoints, pruning, resume points and loss plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmdemo.training.checkpoints import (
    checkpoint_step,
    last_checkpoint,
    load_history,
    numbered_checkpoints,
    prune_checkpoints,
    resume_point,
    save_history,
)
from mmdemo.training.plots import Curve, plot_loss_curves, running_mean


def make_folders(root, names):
    for name in names:
        (root / name).mkdir()


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    make_folders(tmp_path, ["checkpoint-9", "checkpoint-10", "checkpoint-100", "checkpoint-x", "other-5"])
    (tmp_path / "checkpoint-1000").write_text("a file, not a folder")
    assert [s for s, _ in numbered_checkpoints(tmp_path)] == [9, 10, 100]
    assert last_checkpoint(tmp_path).name == "checkpoint-100"
    assert checkpoint_step(tmp_path / "checkpoint-100") == 100
    assert last_checkpoint(tmp_path / "missing") is None


def test_a_phase_prefix_keeps_phases_apart(tmp_path):
    make_folders(tmp_path, ["vae-50", "transformer-20", "transformer-30"])
    assert last_checkpoint(tmp_path, prefix="vae-").name == "vae-50"
    assert checkpoint_step(last_checkpoint(tmp_path, prefix="transformer-"), prefix="transformer-") == 30


@pytest.mark.parametrize("keep, left", [(2, [30, 40]), (None, [10, 20, 30, 40]), (0, [10, 20, 30, 40])])
def test_prune_keeps_the_newest(tmp_path, keep, left):
    make_folders(tmp_path, [f"checkpoint-{s}" for s in (10, 20, 30, 40)])
    prune_checkpoints(tmp_path, keep)
    assert [s for s, _ in numbered_checkpoints(tmp_path)] == left


class RecordingAccelerator:
    def __init__(self):
        self.loaded = []

    def load_state(self, path):
        self.loaded.append(path)


def test_resume_point_loads_the_newest_state_and_cuts_the_history_there(tmp_path):
    make_folders(tmp_path, ["checkpoint-2", "checkpoint-4"])
    save_history(tmp_path / "checkpoint-4", [{"step": s, "loss": 1.0 / (s + 1)} for s in range(6)])
    accelerator = RecordingAccelerator()
    start, history = resume_point(accelerator, tmp_path, "latest")
    assert accelerator.loaded == [str(tmp_path / "checkpoint-4")]
    assert start == 4 and [h["step"] for h in history] == [0, 1, 2, 3]
    assert resume_point(RecordingAccelerator(), tmp_path / "empty", "latest") == (0, [])
    assert resume_point(accelerator, tmp_path, None) == (0, [])
    assert load_history(tmp_path / "checkpoint-2") == []
    assert json.loads((tmp_path / "checkpoint-4" / "history.json").read_text())[0]["step"] == 0


def test_running_mean_matches_a_direct_mean():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    direct = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(running_mean(values, 3), direct)


def test_plot_writes_a_picture_for_one_axes_and_for_panels(tmp_path):
    train = Curve("train", range(100), np.linspace(2.0, 0.1, 100))
    val = Curve("validation", [49, 99], [1.0, 0.5], smooth=False, style="o-")
    plot_loss_curves(tmp_path / "one.png", [train, val], title="t", log_y=True)
    plot_loss_curves(tmp_path / "two.png", [train, val], separate=True)
    one, two = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert two.width > one.width  # two panels side by side
    # An empty or all-NaN curve is left out rather than breaking the plot.
    plot_loss_curves(tmp_path / "empty.png", [Curve("nan", [0, 1], [float("nan")] * 2)])
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_step_rows_cover_each_epoch_once_split_over_processes():
    """Every full batch of an epoch is split between the processes without overlap, an epoch visits each row
    at most once, and the same step always gives the same rows (so a resumed run continues exactly)."""
    import argparse
    from types import SimpleNamespace

    import torch

    from mmdemo.training import check_at_least_one, recent_loss, step_rows

    procs = [SimpleNamespace(process_index=i, num_processes=2) for i in range(2)]
    epoch = []
    for step in range(3):  # 10 rows, batches of 3: three full batches an epoch
        halves = [step_rows(10, step, 3, seed=5, accelerator=p) for p in procs]
        assert not set(halves[0].tolist()) & set(halves[1].tolist())
        epoch += torch.cat(halves).tolist()
    assert len(epoch) == len(set(epoch)) == 9
    assert torch.equal(step_rows(10, 4, 3, 5, procs[0]), step_rows(10, 4, 3, 5, procs[0]))
    assert not torch.equal(step_rows(10, 3, 3, 5, procs[0]), step_rows(10, 0, 3, 5, procs[0]))  # a new epoch

    assert recent_loss([[0, 4.0], [1, 2.0], [2, 1.0]], 2) == 1.5 and recent_loss([], 5) == 0.0
    check_at_least_one(argparse.Namespace(steps=1, limit=None), ("steps", "limit"))
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):
        check_at_least_one(argparse.Namespace(steps=3, batch_size=0), ("steps", "batch_size"))
