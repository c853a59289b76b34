"""Live previews through the real app and gradio_client: ``/generate`` streams pictures of the samples while they
form only when its last parameter, ``previews``, asks for them; the README's call without it is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gradio_client import Client

from mmdemo.registry import GENERATOR_IDS

pytestmark = pytest.mark.app

N = len(GENERATOR_IDS)
MODELS = ["pixel-diffusion", "infinity-2b"]


@pytest.fixture(scope="module")
def client(app_server):
    import app

    with app_server(app.create_demo("demo")) as url:
        yield Client(url, verbose=False)


def _digest(image) -> str | None:
    """The bytes of a streamed picture (a downloaded file path), or None for an empty panel."""
    return None if image is None else hashlib.sha256(Path(image).read_bytes()).hexdigest()


def _stream(client: Client, *previews) -> list[tuple]:
    job = client.submit(PROMPT, MODELS, 5, "fast", "", "{}", *previews, api_name="/generate")
    job.result(timeout=300)
    return job.outputs()


PROMPT = "a small red circle on the left"


def _early_pictures(outputs: list[tuple], model_id: str) -> list[str]:
    """Distinct pictures a model's panel showed before that model's record arrived."""
    panel = GENERATOR_IDS.index(model_id)
    seen: list[str] = []
    for output in outputs:
        finished = {r["model"] for r in output[2 * N]}
        digest = _digest(output[panel])
        if model_id not in finished and digest is not None and digest not in seen:
            seen.append(digest)
    return seen


def test_previews_is_the_last_parameter_and_off_by_default(client):
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"][
        "parameters"
    ]
    assert parameters[-1]["parameter_name"] == "previews"
    assert parameters[-1]["parameter_has_default"] and parameters[-1]["parameter_default"] is False


@pytest.fixture(scope="module")
def with_previews(client) -> list[tuple]:
    return _stream(client, True)


@pytest.fixture(scope="module")
def without_previews(client) -> list[tuple]:
    return _stream(client)  # the README's call: the parameter left out


@pytest.mark.slow
def test_asked_for_previews_the_api_streams_pictures_forming_in_the_working_panel(with_previews):
    final = with_previews[-1]
    for model_id in MODELS:
        early = _early_pictures(with_previews, model_id)
        assert len(early) >= 2, f"{model_id}: {len(early)} intermediate pictures"
        assert _digest(final[GENERATOR_IDS.index(model_id)]) not in early[:-1]  # the final one came after
    # while pixel diffusion samples, its caption counts steps and the next model's is still waiting
    working = [o for o in with_previews if "step" in o[N + GENERATOR_IDS.index("pixel-diffusion")]]
    assert working and all("running" not in o[N + GENERATOR_IDS.index("infinity-2b")] for o in working)
    assert [r["model"] for r in final[2 * N]] == MODELS and all(r["error"] is None for r in final[2 * N])


def test_without_the_flag_no_picture_comes_before_its_model_finishes(without_previews):
    for model_id in MODELS:
        assert _early_pictures(without_previews, model_id) == []
    assert [r["model"] for r in without_previews[-1][2 * N]] == MODELS


def test_previews_do_not_change_the_final_pictures(with_previews, without_previews):
    for model_id in MODELS:
        panel = GENERATOR_IDS.index(model_id)
        assert _digest(with_previews[-1][panel]) == _digest(without_previews[-1][panel]) is not None
