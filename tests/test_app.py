"""The real app, launched in-process and driven through gradio_client: what the README promises about it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY
from mmdemo.service import load_examples

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def client(app_server):
    import app

    with app_server(app.create_demo("demo")) as url:
        yield Client(url, verbose=False)


def test_api_names_are_stable(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/caption", "/generate"} <= set(endpoints)


def _check_caption_record(record: dict) -> None:
    assert record["error"] is None, record
    assert isinstance(record["caption"], str) and record["caption"].strip()
    assert record["weights"] == "demo" and record["seconds"] >= 0


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
    with pytest.raises(AppError, match="This file is not a readable image"):
        client.predict(handle_file(str(path)), "all", 1, 30, api_name="/caption")


def test_generate_five_models_fills_every_panel_or_explains(client):
    outputs = client.predict(
        "a small red circle on the left", list(GENERATOR_IDS), 1234, "fast", "", "{}", api_name="/generate"
    )
    n = len(GENERATOR_IDS)
    images, texts, records, archive = outputs[:n], outputs[n : 2 * n], outputs[2 * n], outputs[2 * n + 1]
    assert [r["model"] for r in records] == list(GENERATOR_IDS)
    for image, text, record in zip(images, texts, records):
        assert record["seed"] == 1234 and record["error"] is None, record
        assert image is not None and Image.open(image).format == "PNG"
        assert record["weights"] == "demo" and "seed 1234" in text
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted([f"{m}.png" for m in GENERATOR_IDS] + ["settings.json"])
        meta = json.loads(z.read("settings.json"))
        assert meta["settings"]["seed"] == 1234


@pytest.mark.parametrize(
    "prompt, overrides, message",
    [
        ("   ", "{}", "The prompt is empty: type what the image should show"),
        ("a red circle", '{"pixel-diffusion": {"steps": 0}}', "steps must be a whole number from 1 to 1000, got 0"),
        ("a red circle", '{"pixel-diffusion": {"steps": 1001}}', "steps must be a whole number from 1 to 1000, got 1001"),
        ("a red circle", '{"pixel-diffusion": {"guidance": 51}}', r"(?i)guidance must be .*50.*got 51"),
        ("a red circle", "{not json", "Per-model overrides must be JSON"),
        ("a red circle", '{"dall-e": {"steps": 3}}', "Per-model overrides name unknown model"),
    ],
)
def test_generate_bad_input_is_one_clear_error(client, prompt, overrides, message):
    with pytest.raises(AppError, match=message):
        client.predict(prompt, ["pixel-diffusion"], 1, "fast", "", overrides, api_name="/generate")


def test_the_seed_field_refuses_a_seed_outside_its_range(client):
    # The seed field declares the same range as our own check, so Gradio refuses a negative seed before the
    # handler runs (our check's message is pinned in test_input_bounds.py).
    with pytest.raises(AppError, match="less than minimum value 0"):
        client.predict("a red circle", ["pixel-diffusion"], -3, "fast", "", "{}", api_name="/generate")


# ------------------------------------------------------------------------------------------------ README promises


def _components(client, kind: str) -> list[dict]:
    """Every component of ``kind`` in the page the server sends (what a browser renders)."""
    return [c.get("props", {}) for c in client.config["components"] if c.get("type") == kind]


def _markdown_texts(client) -> list[str]:
    return [str(props.get("value") or "") for props in _components(client, "markdown")]


def test_banner_says_which_weights_run(client):
    banners = [p["value"] for p in _components(client, "markdown") if p.get("elem_id") == "profile-banner"]
    assert len(banners) == 1
    banner = banners[0]
    assert "Profile: `demo`" in banner and "Demo weights in use" in banner
    for model_id in REGISTRY:
        assert f"`{model_id}`" in banner, f"the banner must name {model_id} among the demo-weight models"
    assert "unavailable" not in banner.lower(), "every demo checkpoint ships with the repository"


def _table_rows(client) -> list[list[str]]:
    rows = []
    for props in _components(client, "dataframe"):
        value = props.get("value") or {}
        rows += [[str(cell) for cell in row] for row in value.get("data", [])]
    return rows


def test_about_tab_shows_report_and_measured_numbers_and_a_card_per_model(client):
    from mmdemo.ui.about import measured_results

    rows = _table_rows(client)
    for model_id in CAPTIONER_IDS:
        spec = REGISTRY[model_id]
        mine = [row for row in rows if row and row[0] == spec.display_name]
        assert mine, f"the About tab's BLEU table has no row for {model_id}"
        report = " / ".join(f"{v:.1f}" for v in spec.report.bleu)
        assert any(report in row for row in mine), f"{model_id}: the report's BLEU {report} is not shown"
        measured = [r for r in measured_results(model_id) if "bleu4" in r]
        assert measured, f"{model_id} ships an evaluation JSON"
        for result in measured:  # the numbers our evaluation script wrote, not typed in by hand
            ours = " / ".join(f"{result[f'bleu{n}']:.1f}" for n in range(1, 5))
            assert any(ours in row for row in mine), f"{model_id}: measured BLEU {ours} is not shown"
    for model_id in GENERATOR_IDS:
        for result in measured_results(model_id):
            if "color_acc" in result:
                colour = f"colour {result['color_acc']:.2f}"
                assert any(
                    row[0] == REGISTRY[model_id].display_name and any(colour in cell for cell in row)
                    for row in rows
                ), f"{model_id}: measured ShapesEval ({colour}) is not shown"
    texts = _markdown_texts(client)
    for model_id, spec in REGISTRY.items():
        cards = [t for t in texts if t.startswith(f"### {spec.display_name} (`{model_id}`)")]
        assert len(cards) == 1, f"one model card for {model_id}"
        assert spec.licence in cards[0] and "**Weights in use:** demo" in cards[0]


def _generate_one(client, model_id: str, overrides: dict, seed: int = 7) -> tuple[np.ndarray, dict]:
    n = len(GENERATOR_IDS)
    outputs = client.predict(
        "a small red circle on the left", [model_id], seed, "fast", "", json.dumps(overrides), api_name="/generate"
    )
    (record,) = outputs[2 * n]
    assert record["error"] is None, record
    picture = outputs[GENERATOR_IDS.index(model_id)]
    return np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16), record


def test_valid_overrides_reach_the_model_and_guidance_changes_the_picture(client):
    model = "pixel-diffusion"
    default, _ = _generate_one(client, model, {})
    again, _ = _generate_one(client, model, {})
    assert np.array_equal(default, again), "same seed, same settings, same picture: what differs below is the override"

    def differs(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    unguided, record = _generate_one(client, model, {model: {"guidance": 0}})
    assert record["notices"] == [], record  # a valid override is taken as it is, without a notice
    strong, _ = _generate_one(client, model, {model: {"guidance": 12}})
    fewer_steps, _ = _generate_one(client, model, {model: {"steps": 2}})
    assert differs(default, unguided) > 1.0, "guidance 0 (unconditional) must change the picture"
    assert differs(unguided, strong) > 1.0, "guidance must change the picture"
    assert differs(default, fewer_steps) > 1.0, "a steps override must reach the sampler"


MISSING = "latent-diffusion"


@pytest.fixture(scope="module")
def client_without_latent_weights(app_server, tmp_path_factory):
    """The app over a checkpoint folder where latent-diffusion's demo weights are missing."""
    import app
    from mmdemo.weights import checkpoint_root

    root = tmp_path_factory.mktemp("checkpoints")
    (root / "demo").mkdir()
    for folder in (checkpoint_root() / "demo").iterdir():
        if folder.name != MISSING:
            (root / "demo" / folder.name).symlink_to(folder, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMDEMO_CHECKPOINTS", str(root))
        patch.setenv("HF_HUB_OFFLINE", "1")
        with app_server(app.create_demo("demo")) as url:
            yield Client(url, verbose=False), root


def test_an_unavailable_model_explains_itself_in_its_panel_and_the_others_still_run(client_without_latent_weights):
    client, root = client_without_latent_weights
    banner = next(p["value"] for p in _components(client, "markdown") if p.get("elem_id") == "profile-banner")
    assert "unavailable" in banner.lower() and f"`{MISSING}`" in banner
    n = len(GENERATOR_IDS)
    outputs = client.predict(
        "a small red circle on the left", ["pixel-diffusion", MISSING], 3, "fast", "", "{}", api_name="/generate"
    )
    images, texts, records = outputs[:n], outputs[n : 2 * n], outputs[2 * n]
    by_id = {r["model"]: r for r in records}
    assert by_id["pixel-diffusion"]["error"] is None and images[GENERATOR_IDS.index("pixel-diffusion")]
    missing = by_id[MISSING]
    assert images[GENERATOR_IDS.index(MISSING)] is None
    assert "weights unavailable" in missing["error"] and "Looked in" in missing["error"]
    assert str(root / "demo" / MISSING) in missing["error"] and "What to do:" in missing["error"]
    assert "What to do:" in texts[GENERATOR_IDS.index(MISSING)], "the panel itself says what to do"
