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
        (p, s)
        for p, s in sample_single_object_prompts(50, seed=6)
        if s.objects[0].color != scene.objects[0].color
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


def test_clip_score_network_uses_quickgelu_like_openais_weights(tmp_path):
    """OpenAI's CLIP weights were trained with QuickGELU: the same weights under GELU give other features."""
    import open_clip
    import torch
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference, _, _ = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=None, force_quick_gelu=True
    )
    (tmp_path / "open_clip_config.json").write_text("{}")  # must never be taken for the weights
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(tmp_path / "open_clip_model.safetensors"),
    )
    assert alignment.clip_weights_file(tmp_path).name == "open_clip_model.safetensors"

    model, preprocess, tokenizer = alignment.build_clip(alignment.clip_weights_file(tmp_path))
    activations = {
        type(block.mlp.gelu) for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    }
    assert activations == {QuickGELU}

    plain_gelu, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    plain_gelu.load_state_dict(reference.state_dict())
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.encode_image(pixels)
        assert torch.allclose(ours, reference.eval().encode_image(pixels), atol=1e-5)
        assert not torch.allclose(ours, plain_gelu.eval().encode_image(pixels), atol=1e-3)


def test_clip_weights_file_never_picks_a_config(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="open_clip_model.safetensors"):
        alignment.clip_weights_file(tmp_path)
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"")
    assert alignment.clip_weights_file(tmp_path).name == "open_clip_pytorch_model.bin"
