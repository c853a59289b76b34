"""Scored candidate captions and per-word attention maps: the decoding and the maps on the shipped demo
checkpoints, and the ``/caption`` (``candidates``) and ``/attention`` endpoints through gradio_client."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import mmdemo
from mmdemo import attention, inputs
from mmdemo.registry import CAPTIONER_IDS
from mmdemo.service import load_examples


@pytest.fixture(scope="module")
def example() -> Image.Image:
    return Image.open(load_examples()[0].path).convert("RGB")


@pytest.fixture(scope="module")
def captioners() -> dict[str, mmdemo.interfaces.Captioner]:
    return {model_id: mmdemo.load_captioner(model_id, profile="demo") for model_id in CAPTIONER_IDS}


def independent_mean_logprob(network, features, caption: str) -> float:
    """The candidate's mean token log-probability recomputed from each family's own training-time pieces
    (its loss path without label smoothing), not through ``caption_logprobs``."""
    kind = type(network).__name__
    if kind == "XAttnCaptionNetwork":
        return -float(network(features, [caption]))  # its loss is the unsmoothed mean cross-entropy
    if kind == "QFormerLlamaNetwork":
        return -float(network(features, [caption]))  # the LLM's own loss over caption + "\n"
    input_ids, mask = network.encode_captions([caption])
    logits = network.text_logits(network.image_embeds(features), input_ids, mask)
    return -float(F.cross_entropy(logits[0, :-1], input_ids[0, 1:], reduction="mean"))


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
def test_candidates_are_distinct_sorted_and_scored_as_a_teacher_forced_pass(captioners, example, model_id):
    captioner = captioners[model_id]
    (plain,) = captioner.caption([example])  # what scripts call: no candidates, no scoring pass
    (one,) = captioner.caption([example], candidates=1)
    (three,) = captioner.caption([example], candidates=3)
    # candidates=1 is exactly today's caption, and the caption stays the same whatever is asked.
    assert plain.candidates == [] and one.caption == plain.caption
    assert [c.caption for c in one.candidates] == [one.caption]
    assert three.caption == one.caption
    texts = [c.caption for c in three.candidates]
    assert len(texts) == 3 and len(set(texts)) == 3 and one.caption in texts
    scores = [c.mean_logprob for c in three.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) and s < 0 for s in scores)
    network = captioner.network
    with torch.inference_mode():
        features = network.encode_images(network.preprocess([example]))
        for candidate in three.candidates:
            assert candidate.mean_logprob == pytest.approx(
                independent_mean_logprob(network, features, candidate.caption), abs=1e-4
            )
    assert all(c.match is None for c in three.candidates)  # no match head is loaded; the record says so


def test_xattn_n_best_are_the_beam_searchs_best_beams(captioners, example):
    """The alternatives are beams of one search: beam width 1's caption is greedy, and asking for n gives the
    n best of a width-n search, first of which is what num_beams=n decodes on its own."""
    captioner = captioners["resnet18-xattn"]
    (beam,) = captioner.caption([example], num_beams=3)
    network = captioner.network
    with torch.inference_mode():
        features = network.encode_images(network.preprocess([example]))
        (n_best,) = network.generate_candidates(features, 3, num_beams=3, max_new_tokens=31)
    assert n_best[0] == beam.caption and len(set(n_best)) == 3


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
def test_attention_maps_cover_the_grid_sum_to_one_and_differ_between_words(captioners, example, model_id):
    captioner = captioners[model_id]
    assert captioner.attention_note
    result = captioner.attend(example)
    assert result.caption == captioner.caption([example])[0].caption
    maps = result.attention
    words = result.caption.split()
    assert result.tokens == words  # Shapes captions: lower case, words and marks spaced
    side = math.isqrt(maps.shape[1] * maps.shape[2])
    expected = {"resnet18-xattn": 3, "clipb32-xattn": 6}.get(model_id, 8)  # 96/32, 96/16, 64/8 px grids
    assert maps.shape == (len(words), expected, expected) and side == expected
    assert (maps >= 0).all()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    spread = np.abs(maps[:, None] - maps[None]).max()
    assert spread > 1e-3, spread  # not one map for every word


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
def test_the_colour_word_looks_where_that_colour_is(captioners, model_id):
    """On a white picture with one square, the map of the caption's colour word peaks on a grid cell that
    overlaps the square, wherever the square is: the maps sit on the image the right way round."""
    from mmdemo.data.shapes import ShapeObject, ShapesScene, render_scene

    side, radius = 96, 12.0
    for colour, position, (x, y) in [("red", "left", (14, 48)), ("blue", "right", (82, 48)),
                                     ("green", "top", (48, 14)), ("yellow", "bottom", (48, 82))]:  # fmt: skip
        square = ShapeObject(colour, "square", "large", position, (x, y), radius)
        result = captioners[model_id].attend(render_scene(ShapesScene((square,), "white", side)))
        assert colour in result.tokens, result.caption
        heat = result.attention[result.tokens.index(colour)]
        row, column = np.unravel_index(heat.argmax(), heat.shape)
        cell = side / heat.shape[0]  # every demo model sees the whole square picture
        assert column * cell < x + 1.5 * radius and (column + 1) * cell > x - 1.5 * radius, (colour, heat)
        assert row * cell < y + 1.5 * radius and (row + 1) * cell > y - 1.5 * radius, (colour, heat)


def test_word_index_and_candidates_are_checked_with_the_value_named(captioners, example):
    with pytest.raises(inputs.InputError, match=r"candidates must be a whole number from 1 to 5, got 6"):
        captioners["resnet18-xattn"].caption([example], candidates=6)
    with pytest.raises(inputs.InputError, match=r"got 'many'"):
        inputs.check_candidates("many")
    assert inputs.check_candidates(None) == 1 and inputs.check_candidates(4.0) == 4
    with pytest.raises(
        inputs.InputError, match=r"word must be a whole number from 0 to 2, got 3 \(the caption has 3 words\)"
    ):
        attention.check_word_index(3, ["a", "red", "square"])


def test_overlay_is_the_models_view_enlarged_with_crisp_cells():
    picture = Image.new("RGB", (80, 64), (255, 255, 255))
    heat = np.zeros((2, 2))
    heat[0, 1] = 1.0
    overlay = attention.draw_overlay(picture, heat, view="centre")
    assert overlay.size == (448, 448)  # the centred 64 px square, 7 times
    pixels = np.asarray(overlay).astype(int)
    assert len({tuple(p) for p in pixels[:224, 224:].reshape(-1, 3)}) == 1  # one flat colour per cell
    assert pixels[:224, 224:].sum() > pixels[224:, :224].sum()  # the hot cell is the bright one
    whole = attention.draw_overlay(picture, heat, view="whole")
    assert whole.size == (480, 384)


# ------------------------------------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def client(app_server):
    import app

    with app_server(app.create_demo("demo")) as url:
        yield Client(url, verbose=False)


@pytest.mark.app
def test_caption_with_three_candidates_gives_three_scored_captions_per_record(client):
    example = load_examples()[0]
    _, _, records = client.predict(handle_file(str(example.path)), "all", 1, 30, 3, api_name="/caption")
    assert [r["model"] for r in records] == list(CAPTIONER_IDS)
    for record in records:
        candidates = record["candidates"]
        assert len(candidates) == 3 and len({c["caption"] for c in candidates}) == 3, record
        assert record["caption"] in [c["caption"] for c in candidates]
        scores = [c["mean_logprob"] for c in candidates]
        assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
        assert set(candidates[0]) == {"caption", "mean_logprob", "match"}


@pytest.mark.app
def test_the_readme_call_still_works_and_gives_one_candidate(client):
    example = load_examples()[0]
    table, references, records = client.predict(
        handle_file(str(example.path)), "resnet18-xattn", 1, 30, api_name="/caption"
    )
    assert [c["caption"] for c in records[0]["candidates"]] == [records[0]["caption"]]


@pytest.mark.app
@pytest.mark.parametrize("value", [0, 6, 2.5])
def test_out_of_range_candidates_is_our_own_clear_error(client, value):
    example = load_examples()[0]
    with pytest.raises(AppError, match=rf"candidates must be a whole number from 1 to 5, got {value!r}"):
        client.predict(handle_file(str(example.path)), "all", 1, 30, value, api_name="/caption")


@pytest.mark.app
def test_attention_endpoint_gives_a_heatmap_per_word(client):
    example = load_examples()[0]
    first, details, note = client.predict(
        handle_file(str(example.path)), "clipb32-xattn", "", 0, api_name="/attention"
    )
    words = details["words"]
    assert details["caption"].split() == words and details["grid"] == [6, 6]
    assert "not an explanation" in note
    last, details_last, _ = client.predict(
        handle_file(str(example.path)), "clipb32-xattn", "", len(words) - 1, api_name="/attention"
    )
    assert details_last["word"] == len(words) - 1
    a, b = (np.asarray(Image.open(path).convert("RGB")) for path in (first, last))
    assert a.shape == b.shape == (448, 448, 3) and np.abs(a.astype(int) - b).max() > 0
    with pytest.raises(AppError, match=rf"word must be a whole number from 0 to {len(words) - 1}"):
        client.predict(handle_file(str(example.path)), "clipb32-xattn", "", 99, api_name="/attention")


@pytest.mark.app
def test_every_output_of_the_new_endpoint_has_a_name(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    returns = [r["label"] for r in endpoints["/attention"]["returns"]]
    assert returns == ["Attention heatmap", "Attention: caption, words, word, grid, note", "What the map is"]
    parameters = {p["parameter_name"]: p for p in endpoints["/caption"]["parameters"]}
    assert (
        parameters["candidates"]["parameter_has_default"]
        and parameters["candidates"]["parameter_default"] == 1
    )


# ------------------------------------------------------------------------------------------------ ITM match score


@pytest.fixture(scope="module")
def tiny_itm_checkpoint(tmp_path_factory):
    """A random tiny ``Blip2ForImageTextRetrieval`` saved as the Hub folder is laid out (weights, config,
    tokenizer): the stand-in for Salesforce/blip2-itm-vit-g, which cannot be downloaded here."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig

    from mmdemo.models.qformer.network import VISION_PRESETS, build_shapes_wordpiece

    folder = tmp_path_factory.mktemp("blip2-itm-tiny")
    captions = ["a red circle on the left", "a blue square at the top", "a green triangle in the middle"] * 4
    tokenizer = build_shapes_wordpiece(captions, folder, vocab_size=80)
    config = Blip2Config(
        vision_config=VISION_PRESETS["eva-vit-tiny"],
        qformer_config=Blip2QFormerConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, encoder_hidden_size=VISION_PRESETS["eva-vit-tiny"]["hidden_size"],
            max_position_embeddings=64, use_qformer_text_input=True,
        ).to_dict(),
        num_query_tokens=4,
        image_text_hidden_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        reference.query_tokens.normal_(std=0.5)  # zeros at init would make every query alike
        reference.itm_head.weight.normal_(std=0.05)
    reference.save_pretrained(folder)
    return folder, reference, tokenizer


def reference_match(reference, tokenizer, pixels: torch.Tensor, caption: str) -> float:
    text = tokenizer([caption], return_tensors="pt")
    with torch.no_grad():
        out = reference(pixels, text["input_ids"], text["attention_mask"], use_image_text_matching_head=True)
    return float(out.logits_per_image.softmax(-1)[0, 1])


def test_itm_matcher_on_cached_trunk_features_equals_the_library_model(tiny_itm_checkpoint, example):
    from mmdemo.models.qformer.itm import ImageTextMatcher
    from mmdemo.models.qformer.network import _pil_to_tensor

    folder, reference, tokenizer = tiny_itm_checkpoint
    matcher = ImageTextMatcher.from_folder(folder)
    pixels = _pil_to_tensor([example, example], 64)
    with torch.no_grad():
        trunk = reference.vision_model.encoder(inputs_embeds=reference.vision_model.embeddings(pixels))
    captions = ["a red circle on the left", "a green triangle in the middle"]
    ours = matcher.probabilities(trunk.last_hidden_state, captions)
    expected = [reference_match(reference, tokenizer, pixels[i : i + 1], c) for i, c in enumerate(captions)]
    assert ours == pytest.approx(expected, abs=1e-5) and abs(ours[0] - ours[1]) > 1e-4, ours
    assert ImageTextMatcher.from_folder(folder / "missing") is None


def test_qformer_candidates_carry_the_itm_match_where_the_checkpoint_has_one(tiny_itm_checkpoint, example):
    from mmdemo.captioners.qformer import QFormerBertCaptioner
    from mmdemo.models.qformer.network import QFormerBertNetwork
    from mmdemo.registry import REGISTRY
    from mmdemo.weights import ResolvedWeights

    folder, reference, tokenizer = tiny_itm_checkpoint
    spec = REGISTRY["qformer-bert"]
    config = {**spec.tiny_config, "freeze_vision": True, "vocab_size": len(tokenizer)}
    network = QFormerBertNetwork.build(config, tokenizer=tokenizer)
    network.vision_model.load_state_dict(reference.vision_model.state_dict())  # the same frozen trunk
    full = QFormerBertCaptioner(
        spec, ResolvedWeights(spec.id, "full", {"vision": folder}), network.eval(), "cpu"
    )
    (result,) = full.caption([example], candidates=2, max_new_tokens=6)
    pixels = network.preprocess([example])
    for candidate in result.candidates:
        assert candidate.match == pytest.approx(
            reference_match(reference, tokenizer, pixels, candidate.caption), abs=1e-5
        )
    demo = QFormerBertCaptioner(spec, ResolvedWeights(spec.id, "demo", {"vision": folder}), network, "cpu")
    assert all(c.match is None for c in demo.caption([example], candidates=2, max_new_tokens=6)[0].candidates)


def test_full_size_cross_attention_maps_are_over_the_7x7_grid(example):
    """The full-size configuration (random weights: nothing is downloaded) maps each word onto ResNet-18's
    7 x 7 grid at 224 px, and its beam search returns the n best."""
    from mmdemo.captioners.vocab import Vocabulary
    from mmdemo.models.xattn.network import XAttnCaptionNetwork
    from mmdemo.registry import REGISTRY

    vocab = Vocabulary.build(["a red circle on the left", "a blue square at the top"] * 2, max_len=12)
    config = {
        **REGISTRY["resnet18-xattn"].full_config,
        "vocab_size": len(vocab),
        "max_len": 12,
        "num_layers": 2,
    }
    torch.manual_seed(0)
    network = XAttnCaptionNetwork.build(config, vocab=vocab).eval()
    with torch.inference_mode():
        features = network.encode_images(network.preprocess([example]))
        ((words, maps),) = network.attention_maps(features, ["a red circle on the left"])
        (n_best,) = network.generate_candidates(features, 3, max_new_tokens=5)
    assert words == ["a", "red", "circle", "on", "the", "left"] and maps.shape == (6, 7, 7)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(6))
    assert len(n_best) == 3 and network.attention_view == "centre"
