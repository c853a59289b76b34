"""ShapesEval: right on real Shapes pictures, wrong on wrong ones; evaluate_generator.py end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from _diffusion_helpers import diffusion_assets, load_script, untrained_pixel_checkpoint  # noqa: F401 - fixture
from PIL import Image

from mmdemo.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesScene,
    render_scene,
    sample_single_object_prompts,
)
from mmdemo.eval.shapes_eval import accuracies, judge, read_image


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("style", ["plain", "dark", "textured"])
def test_reads_rendered_shapes(size, style):
    pairs = sample_single_object_prompts(120, seed=100 + size, image_size=size, style=style)
    scores = accuracies([judge(render_scene(scene), prompt) for prompt, scene in pairs])
    assert scores["color_acc"] >= 0.95, scores
    assert scores["shape_acc"] >= 0.95, scores
    assert scores["position_acc"] >= 0.95, scores


def test_reads_large_and_resized_images():
    pairs = sample_single_object_prompts(30, seed=5, image_size=64)
    big = [judge(render_scene(scene, 512), prompt) for prompt, scene in pairs]
    assert min(accuracies(big)[k] for k in ("color_acc", "shape_acc", "position_acc")) >= 0.95


def _other(options, current, offset=1):
    options = list(options)
    return options[(options.index(current) + offset) % len(options)]


def _with_object(scene: ShapesScene, **changes) -> ShapesScene:
    return replace(scene, objects=(replace(scene.objects[0], **changes),))


def test_wrong_colour_shape_or_position_fails():
    pairs = sample_single_object_prompts(60, seed=9, image_size=32)
    wrong_colour, wrong_shape, wrong_position = [], [], []
    for prompt, scene in pairs:
        obj = scene.objects[0]
        wrong_colour.append(judge(render_scene(_with_object(scene, color=_other(COLORS, obj.color))), prompt))
        wrong_shape.append(judge(render_scene(_with_object(scene, shape=_other(SHAPES, obj.shape))), prompt))
        # Mirror the object to the opposite anchor (left <-> right, top <-> bottom; center -> left).
        target = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "left"}[
            obj.position
        ]
        ax, ay = POSITIONS[target]
        moved = _with_object(scene, position=target, center_xy=(ax * 32, ay * 32))
        wrong_position.append(judge(render_scene(moved), prompt))
    assert accuracies(wrong_colour)["color_acc"] == 0.0
    assert accuracies(wrong_shape)["shape_acc"] <= 0.1
    assert accuracies(wrong_position)["position_acc"] == 0.0
    # ... while the attributes that were kept are still read correctly.
    assert accuracies(wrong_colour)["shape_acc"] >= 0.9 and accuracies(wrong_shape)["color_acc"] >= 0.95


def test_empty_and_noise_images_fail():
    blank = Image.new("RGB", (32, 32), (240, 240, 240))
    reading = read_image(blank)
    assert reading.color is None and reading.shape is None and reading.position is None
    result = judge(blank, "a small red circle on the left")
    assert not (result.color_ok or result.shape_ok or result.position_ok)
    rng = np.random.default_rng(0)
    pairs = sample_single_object_prompts(40, seed=3, image_size=32)
    noise = [judge(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), p) for p, _ in pairs]
    scores = accuracies(noise)
    assert scores["color_acc"] < 0.5 and scores["shape_acc"] < 0.6 and scores["position_acc"] < 0.6


def test_evaluate_generator_cli_end_to_end(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "ckpt"
    untrained_pixel_checkpoint(root / "demo" / "pixel-diffusion", diffusion_assets["bert"])
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    script = load_script("evaluate_generator")
    out = tmp_path / "eval"
    argv = ["--model", "pixel-diffusion", "--profile", "demo", "--n", "3", "--seed", "5", "--steps", "2",
            "--out", str(out), "--resamples", "50"]  # fmt: skip
    summary = script.main(script.parse_args(argv))
    assert set(summary) >= {"color_acc", "shape_acc", "position_acc", "shapes_eval", "seconds_per_image", "n"}
    assert summary["n"] == 3 and summary["seconds_per_image"] > 0 and summary["steps"] == 2
    for key in ("color_acc", "shape_acc", "position_acc", "seconds_per_image"):
        low, high = summary["intervals"][key]
        assert low <= summary[key] <= high, key
    assert summary["command"].startswith("python train/evaluate_generator.py") and summary["seed"] == 5
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png"]
    with (out / "prompts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png"]
    assert rows[0]["prompt"] == sample_single_object_prompts(3, 5)[0][0]
    # The results go to the run's folder; the shipped record beside the checkpoint changes only on request.
    saved = json.loads((out / "eval_shapes_fast.json").read_text())
    assert saved["color_acc"] == summary["color_acc"] and len(saved["images"]) == 3
    shipped = root / "demo" / "pixel-diffusion" / "eval_shapes_fast.json"
    assert not shipped.exists()
    script.main(script.parse_args([*argv, "--update-shipped", "--n", "2"]))
    assert json.loads(shipped.read_text())["n"] == 2
    with pytest.raises(ValueError, match="unknown generator id"):
        script.parse_args(["--model", "resnet18-xattn", "--out", str(out)])
    with pytest.raises(ValueError, match="--model ID or --models"):
        script.parse_args(["--out", str(out)])


@pytest.mark.slow
def test_two_processes_make_what_one_makes(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    import subprocess

    from _accelerate_launch import two_cpu_processes

    root = tmp_path / "ckpt"
    untrained_pixel_checkpoint(root / "demo" / "pixel-diffusion", diffusion_assets["bert"])
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    script = load_script("evaluate_generator")
    argv = ["--model", "pixel-diffusion", "--n", "3", "--seeds", "2", "--seed", "5", "--steps", "2",
            "--resamples", "50"]  # fmt: skip
    one = script.main(script.parse_args([*argv, "--out", str(tmp_path / "one")]))
    command, env = two_cpu_processes(script.__file__, *argv, "--out", str(tmp_path / "two"))
    proc = subprocess.run(command, env={**env, "MMDEMO_CHECKPOINTS": str(root)}, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "eval_shapes_fast.json").read_text())
    assert two["processes"] == 2 and two["distributed_type"].endswith("MULTI_CPU"), two["distributed_type"]
    first = json.loads((tmp_path / "one" / "eval_shapes_fast.json").read_text())
    assert first["processes"] == 1 and one["n"] == 6

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert strip(two["images"]) == strip(first["images"])  # same order, prompts, seeds, files, verdicts
    for key in ("color_acc", "shape_acc", "position_acc", "shapes_eval"):
        assert two[key] == first[key] and two["intervals"][key] == first["intervals"][key]
    for row in first["images"]:
        a = np.asarray(Image.open(tmp_path / "one" / row["file"]))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "two" / row["file"]))), row["file"]
