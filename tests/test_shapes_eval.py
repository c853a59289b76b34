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
    summary = script.main(script.parse_args(["--model", "pixel-diffusion", "--profile", "demo", "--n", "3",
                                             "--seed", "5", "--steps", "2", "--out", str(out)]))  # fmt: skip
    assert set(summary) >= {"color_acc", "shape_acc", "position_acc", "seconds_per_image", "n"}
    assert summary["n"] == 3 and summary["seconds_per_image"] > 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png"]
    with (out / "prompts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png"]
    assert rows[0]["prompt"] == sample_single_object_prompts(3, 5)[0][0]
    # Default results file for the demo profile: next to the demo checkpoint, read by the About tab.
    saved = json.loads((root / "demo" / "pixel-diffusion" / "eval_shapes_fast.json").read_text())
    assert saved["color_acc"] == summary["color_acc"] and len(saved["images"]) == 3
    with pytest.raises(ValueError, match="unknown generator id"):
        script.parse_args(["--model", "resnet18-xattn", "--out", str(out)])


def test_split_evaluation_merges_into_the_single_run(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "ckpt"
    untrained_pixel_checkpoint(root / "demo" / "pixel-diffusion", diffusion_assets["bert"])
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    script = load_script("evaluate_generator")

    def run(out: str, *extra: str) -> dict:
        argv = ["--model", "pixel-diffusion", "--seed", "5", "--steps", "2", "--out", str(tmp_path / out),
                "--json-out", str(tmp_path / f"{out}.json"), *extra]  # fmt: skip
        script.main(script.parse_args(argv))
        return json.loads((tmp_path / f"{out}.json").read_text())

    whole = run("whole", "--n", "3")
    run("split", "--n", "2")
    run("split", "--n", "1", "--start", "2", "--json-out", str(tmp_path / "split_b.json"))
    parts = [str(tmp_path / "split.json"), str(tmp_path / "split_b.json")]
    merged = script.main(
        script.parse_args(
            ["--merge", *parts, "--json-out", str(tmp_path / "m.json"), "--out", str(tmp_path / "split")]
        )
    )
    for i in range(3):  # the same pictures as the single run, named by their index in the one sequence
        a = np.asarray(Image.open(tmp_path / "whole" / f"{i}.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "split" / f"{i}.png")))
    joined = json.loads((tmp_path / "m.json").read_text())
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in joined["images"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in whole["images"]]
    assert merged["n"] == 3 and merged["shape_acc"] == whole["shape_acc"] and len(merged["parts"]) == 2
    with (tmp_path / "split" / "prompts.csv").open() as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == ["0.png", "1.png", "2.png"]
    with pytest.raises(ValueError, match="exactly once"):
        script.merge_parts([tmp_path / "split.json", tmp_path / "split.json"])
    with pytest.raises(ValueError, match="--json-out"):
        script.parse_args(["--merge", *parts])
    with pytest.raises(ValueError, match="--json-out"):
        script.parse_args(["--model", "pixel-diffusion", "--out", str(tmp_path), "--start", "2"])
