"""The real app, launched in-process on a free port and driven through gradio_client."""

from __future__ import annotations

import json
import socket
import zipfile

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY
from mmdemo.service import load_examples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    import app

    demo = app.create_demo("demo")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_api_names_are_stable(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/caption", "/generate"} <= set(endpoints)


def _check_caption_record(record: dict) -> None:
    spec = REGISTRY[record["model"]]
    if spec.implemented:
        assert record["error"] is None, record
        assert isinstance(record["caption"], str) and record["caption"].strip()
        assert record["weights"] == "demo" and record["seconds"] >= 0
    else:
        assert record["caption"] is None and "not implemented yet" in record["error"]


def test_caption_all_returns_one_record_per_captioner_with_bleu_for_examples(client):
    example = load_examples()[0]
    table, references_md, records = client.predict(
        handle_file(str(example.path)), "all", 1, 30, api_name="/caption"
    )
    assert [r["model"] for r in records] == list(CAPTIONER_IDS)
    assert len(table["data"]) == len(CAPTIONER_IDS)
    assert example.references[0] in references_md  # a dataset example shows its references
    for record in records:
        _check_caption_record(record)
        if record["caption"] is not None:
            assert set(record["bleu"]) >= {"bleu1", "bleu4"}


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
def test_caption_each_model(client, model_id, tmp_path):
    path = tmp_path / "upload.png"
    Image.new("RGB", (48, 40), (250, 250, 250)).save(path)
    _, references_md, records = client.predict(handle_file(str(path)), model_id, 1, 20, api_name="/caption")
    assert [r["model"] for r in records] == [model_id]
    _check_caption_record(records[0])
    assert records[0]["bleu"] is None and "No reference captions" in references_md


def test_caption_rejects_a_non_image_with_a_clear_message(client, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(Exception, match="not a readable image|Invalid image|cannot identify"):
        client.predict(handle_file(str(path)), "all", 1, 30, api_name="/caption")


def test_generate_five_models_fills_every_panel_or_explains(client):
    outputs = client.predict(
        "a small red circle on the left", list(GENERATOR_IDS), 1234, "fast", "", "{}", api_name="/generate"
    )
    n = len(GENERATOR_IDS)
    images, texts, records, archive = outputs[:n], outputs[n : 2 * n], outputs[2 * n], outputs[2 * n + 1]
    assert [r["model"] for r in records] == list(GENERATOR_IDS)
    for model_id, image, text, record in zip(GENERATOR_IDS, images, texts, records):
        assert record["seed"] == 1234
        if REGISTRY[model_id].implemented:
            assert record["error"] is None, record
            assert image is not None and Image.open(image).format == "PNG"
            assert record["weights"] == "demo" and "seed 1234" in text
        else:
            assert image is None and "not implemented yet" in record["error"] and "not implemented" in text
    if any(REGISTRY[m].implemented for m in GENERATOR_IDS):
        with zipfile.ZipFile(archive) as z:
            meta = json.loads(z.read("settings.json"))
            assert meta["settings"]["seed"] == 1234


@pytest.mark.parametrize(
    "prompt, seed, overrides, message",
    [
        ("   ", 1, "{}", "prompt is empty"),
        ("a red circle", -3, "{}", "seed must be between|less than minimum value 0"),
        ("a red circle", 1, '{"pixel-diffusion": {"steps": 0}}', "steps must be"),
        ("a red circle", 1, "{not json", "must be JSON"),
    ],
)
def test_generate_bad_input_is_one_clear_error(client, prompt, seed, overrides, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, ["pixel-diffusion"], seed, "fast", "", overrides, api_name="/generate")
