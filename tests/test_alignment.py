"""The panel's alignment score: ShapesEval for demo weights, CLIP score (unavailable offline) for full."""

from __future__ import annotations

import pytest

from mmdemo.data.shapes import render_scene, sample_single_object_prompts
from mmdemo.eval import alignment
from mmdemo.weights import hub_reachable


def test_demo_images_are_judged_by_shapes_eval():
    prompt, scene = sample_single_object_prompts(1, seed=5)[0]
    score, name = alignment.score_alignment(render_scene(scene), prompt, "demo")
    assert name.startswith("ShapesEval") and score == pytest.approx(1.0)
    wrong_prompt, wrong_scene = next(
        (p, s) for p, s in sample_single_object_prompts(50, seed=6) if s.objects[0].color != scene.objects[0].color
    )
    score_wrong, _ = alignment.score_alignment(render_scene(scene), wrong_prompt, "demo")
    assert score_wrong < 1.0
    none_score, none_name = alignment.score_alignment(render_scene(scene), "a photograph of a dog", "demo")
    assert none_score is None and "names no Shapes" in none_name


def test_full_weights_without_clip_say_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub_reachable.cache_clear()
    monkeypatch.setattr(alignment, "_CLIP", alignment.ClipScorer())
    prompt, scene = sample_single_object_prompts(1, seed=5)[0]
    score, name = alignment.score_alignment(render_scene(scene), prompt, "full")
    assert score is None and name == "CLIP score unavailable"
    assert "timm/vit_base_patch32_clip_224.openai" in alignment._CLIP.unavailable_reason
    hub_reachable.cache_clear()
