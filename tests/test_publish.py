"""train/publish_weights.py: what it would upload, and what it refuses (offline: dry run only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train/publish_weights.py", *args], cwd=REPO, capture_output=True, text=True
    )


def test_dry_run_lists_safetensors_and_cards(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "README.md").write_text("card")
    (tmp_path / "optimizer.state").write_bytes(b"x")  # training state is not published
    result = _run("--model", "pixel-diffusion", "--folder", str(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines == sorted(
        f"mmdemo/mmdemo-weights/pixel-diffusion/{n}"
        for n in ["README.md", "config.json", "model.safetensors"]
    )


@pytest.mark.parametrize("bad", ["pickle", "no-config", "unknown-id"])
def test_refusals(tmp_path, bad):
    (tmp_path / "config.json").write_text("{}")
    model = "pixel-diffusion"
    if bad == "pickle":
        (tmp_path / "model.bin").write_bytes(b"x")
    elif bad == "no-config":
        (tmp_path / "config.json").unlink()
    else:
        model = "dalle"
    result = _run("--model", model, "--folder", str(tmp_path), "--dry-run")
    assert result.returncode != 0
    assert {"pickle": "pickle files", "no-config": "no config.json", "unknown-id": "valid ids"}[
        bad
    ] in result.stderr
