"""Several simultaneous users, and one model failing while the others keep answering."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS
from mmdemo.runtime import ModelManager, _load_by_kind
from mmdemo.service import load_examples

FAILING_MODEL = "resnet18-xattn"
FAILING_GENERATOR = "latent-diffusion"


pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def url_with_failing_model(app_server):
    import app

    def loader(model_id, profile, device):
        if model_id in (FAILING_MODEL, FAILING_GENERATOR):
            raise RuntimeError("simulated failure: this model is broken on purpose")
        return _load_by_kind(model_id, profile, device)

    demo = app.create_demo("demo", manager=ModelManager("demo", device="cpu", loader=loader))
    with app_server(demo) as url:
        yield url


def _caption_all(url: str, image: str) -> list[dict]:
    # Eight uploads at once on two busy cores can take longer than the client's default time-out; what this
    # test checks is that every user gets the right answer, not how fast.
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    _, _, records = client.predict(handle_file(image), "all", 1, 30, api_name="/caption")
    return records


@pytest.mark.slow
def test_eight_simultaneous_users_all_get_answers_and_a_broken_model_stays_contained(url_with_failing_model):
    example = str(load_examples()[0].path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: _caption_all(url_with_failing_model, example), range(8)))
    first = answers[0]
    for records in answers:
        assert [r["model"] for r in records] == list(CAPTIONER_IDS)
        by_id = {r["model"]: r for r in records}
        assert "simulated failure" in by_id[FAILING_MODEL]["error"] and by_id[FAILING_MODEL]["caption"] is None
        for model_id in CAPTIONER_IDS:
            if model_id != FAILING_MODEL:
                assert by_id[model_id]["error"] is None and by_id[model_id]["caption"], by_id[model_id]
        # Greedy decoding with the same weights: every user gets the same captions.
        assert [r["caption"] for r in records] == [r["caption"] for r in first]


@pytest.mark.slow
def test_generate_still_answers_for_every_model_beside_a_failing_one(url_with_failing_model):
    client = Client(url_with_failing_model, verbose=False)
    outputs = client.predict("a blue square at the top", list(GENERATOR_IDS), 7, "fast", "", "{}", api_name="/generate")
    records = outputs[2 * len(GENERATOR_IDS)]
    assert [r["model"] for r in records] == list(GENERATOR_IDS)
    images = outputs[: len(GENERATOR_IDS)]
    for image, record in zip(images, records):
        if record["model"] == FAILING_GENERATOR:
            assert image is None and "simulated failure" in record["error"]
        else:
            assert record["error"] is None and image is not None, record
