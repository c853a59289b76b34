"""The comparison views' logic (slider pair, shared links, seed reuse) and the API's names and defaults,
through gradio_client on the demo app."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from mmdemo.registry import GENERATOR_IDS
from mmdemo.ui import compare


def _picture(size: int, colour: tuple[int, int, int]) -> Image.Image:
    array = np.zeros((size, size, 3), np.uint8)
    array[: size // 2] = colour  # top half coloured: a sharp edge to check for blur
    return Image.fromarray(array)


# ------------------------------------------------------------------------------------------------ slider


def test_slider_pictures_share_one_size_and_stay_crisp():
    small, large = _picture(32, (255, 0, 0)), _picture(64, (0, 0, 255))
    left, right = compare.same_size(small, large)
    assert left.size == right.size and left.size[0] >= compare.SLIDER_MIN_SIDE
    for picture, colour in ((left, (255, 0, 0)), (right, (0, 0, 255))):
        values = np.asarray(picture)
        # Nearest-neighbour only: no colour that was not in the source (a smoothing filter would blend the edge).
        assert {tuple(v) for v in values.reshape(-1, 3)} == {colour, (0, 0, 0)}
    big = _picture(1024, (0, 255, 0))
    assert compare.same_size(big, big)[0].size == (1024, 1024)  # large pictures are not enlarged


def _records(*indices: int) -> list[dict]:
    return [{"model": GENERATOR_IDS[i], "error": None} for i in indices]


def test_slider_defaults_to_the_first_two_finished_panels_and_keeps_a_valid_pick():
    pictures = [None] * len(GENERATOR_IDS)
    pictures[1], pictures[3], pictures[4] = (_picture(32, (i * 60, 0, 0)) for i in (1, 2, 3))
    done = _records(1, 3, 4)
    # Both picks on empty panels: the first two finished panels, in panel order.
    left, right, slider = compare.compare_pair(GENERATOR_IDS[0], GENERATOR_IDS[2], done, *pictures)
    assert (left["value"], right["value"]) == (GENERATOR_IDS[1], GENERATOR_IDS[3])
    pair = slider["value"]
    assert np.array_equal(np.asarray(pair[0])[0, 0], [60, 0, 0])
    assert np.array_equal(np.asarray(pair[1])[0, 0], [120, 0, 0])
    # One pick finished: it stays; the other moves to the first finished panel not already shown.
    left, right, _ = compare.compare_pair(GENERATOR_IDS[0], GENERATOR_IDS[1], done, *pictures)
    assert (left["value"], right["value"]) == (GENERATOR_IDS[3], GENERATOR_IDS[1])
    left, right, _ = compare.compare_pair(GENERATOR_IDS[4], GENERATOR_IDS[1], done, *pictures)
    assert (left["value"], right["value"]) == (GENERATOR_IDS[4], GENERATOR_IDS[1])
    only_one = [None] * len(GENERATOR_IDS)
    only_one[2] = _picture(32, (9, 9, 9))
    _, _, slider = compare.compare_pair(GENERATOR_IDS[0], GENERATOR_IDS[1], _records(2), *only_one)
    assert slider["value"] is None


def test_a_panel_showing_a_live_preview_is_not_compared_until_its_model_finishes():
    pictures = [_picture(32, (i * 40, 0, 0)) for i in range(len(GENERATOR_IDS))]  # every panel shows one
    # Models 0 and 2 finished (a record each); 1 is still sampling (a preview), 3 failed, 4 has not started.
    records = _records(0, 2) + [{"model": GENERATOR_IDS[3], "error": "out of memory"}]
    left, right, slider = compare.compare_pair(GENERATOR_IDS[0], GENERATOR_IDS[1], records, *pictures)
    assert (left["value"], right["value"]) == (GENERATOR_IDS[0], GENERATOR_IDS[2])
    assert np.array_equal(np.asarray(slider["value"][1])[0, 0], [80, 0, 0])
    # A new run cleared the records: nothing is finished, whatever the panels still show.
    assert compare.compare_pair(GENERATOR_IDS[0], GENERATOR_IDS[1], [], *pictures)[2]["value"] is None


def test_use_this_seed_reads_the_panels_own_record():
    records = [{"model": GENERATOR_IDS[0], "seed": 7}, {"model": GENERATOR_IDS[1], "seed": 99}]
    assert compare.seed_of(GENERATOR_IDS[1], records) == 99
    with pytest.raises(gr.Error, match="no picture yet"):
        compare.seed_of(GENERATOR_IDS[2], records)


# ------------------------------------------------------------------------------------------------ links


def test_a_link_carries_every_setting_and_restores_it():
    fields = {GENERATOR_IDS[3]: {"steps": 12}}
    overrides = json.dumps({GENERATOR_IDS[4]: {"steps": 8}})
    query = compare.link_query("a red circle & more", "blurry", 41, "report", list(GENERATOR_IDS[2:4]),
                               fields, overrides)  # fmt: skip
    params = {key: values[0] for key, values in parse_qs(query).items()}
    state = compare.parse_link({**params, "run": "1"})
    assert state.prompt == "a red circle & more" and state.negative == "blurry"
    assert (state.seed, state.preset, state.tab, state.run) == (41, "report", "generate", True)
    assert state.models == list(GENERATOR_IDS[2:4])
    assert state.options == {GENERATOR_IDS[3]: {"steps": 12}, GENERATOR_IDS[4]: {"steps": 8}}


def test_a_damaged_link_keeps_the_page_defaults_for_what_does_not_parse():
    state = compare.parse_link(
        {"seed": "-3", "preset": "turbo", "models": "nope," + GENERATOR_IDS[0], "options": "{bad", "tab": "x"}
    )
    assert state.seed is None and state.preset is None and state.options is None and not state.run
    assert state.models == [GENERATOR_IDS[0]] and state.tab == "generate"


# ------------------------------------------------------------------------------------------------ API


@pytest.fixture(scope="module")
def client(app_server):
    import app

    with app_server(app.create_demo("demo")) as url:
        yield Client(url, verbose=False)


@pytest.mark.app
def test_every_output_is_named_and_generate_settings_are_optional(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    unnamed = [name for name in endpoints if re.fullmatch(r"/(lambda|fn|predict)(_\d+)?", name)]
    assert not unnamed, f"page wiring leaked into the public API: {unnamed}"
    for name in ("/caption", "/generate"):
        labels = [r["label"] for r in endpoints[name]["returns"]]
        assert all(label and not re.fullmatch(r"value_\d+", label) for label in labels), (name, labels)
        assert len(set(labels)) == len(labels), labels
    parameters = {p["parameter_name"]: p for p in endpoints["/generate"]["parameters"]}
    for name, default in (("negative_prompt", ""), ("overrides", "{}"), ("preset", "fast")):
        assert parameters[name]["parameter_has_default"], name
        assert parameters[name]["parameter_default"] == default, name


@pytest.mark.app
def test_generate_with_prompt_models_and_seed_only_uses_the_defaults(client):
    model = GENERATOR_IDS[3]
    outputs = client.predict("a small red circle on the left", [model], 5, api_name="/generate")
    record = outputs[10][0]
    assert record["model"] == model and record["error"] is None and record["seed"] == 5
    assert record["settings"]["preset"] == "fast"


@pytest.mark.app
def test_a_non_image_upload_gets_a_message_without_object_reprs(client, tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"\x00\x01 certainly not a picture " * 20)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(path)), "all", 1, 30, api_name="/caption")
    message = str(caught.value)
    assert "readable image" in message and "PNG" in message
    assert not re.search(r"<[\w.]+ object at 0x[0-9a-f]+>", message), message
