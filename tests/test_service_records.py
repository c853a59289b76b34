"""What each panel gets back from the service: its own picture, its own notices, and why a score is missing.

Scripted models stand in for the real ones, so each record can be compared whole (``==``): a notice that leaks
into another model's panel, or a picture lost because the judge failed, shows up as a difference.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mmdemo import service
from mmdemo.interfaces import GenerationResult, Generator
from mmdemo.registry import get_spec
from mmdemo.runtime import ModelManager
from mmdemo.weights import ResolvedWeights

PROMPT_WITH_CONTROL_CHARS = "a red\x00 circle"
PROMPT_NOTICE = "Control characters were removed from the prompt."


class ScriptedGenerator(Generator):
    """Draws a flat picture and reports its own notices, through the same interface as the real adapters."""

    def __init__(self, model_id: str, colour: tuple[int, int, int], notices: list[str]):
        self.spec = get_spec(model_id)
        self.weights = ResolvedWeights.demo(self.spec, Path("scripted"))
        self.device = "cpu"
        self.colour = colour
        self.notices = notices

    @classmethod
    def load(cls, spec, weights, *, device=None):
        raise NotImplementedError("built directly by the test")

    def sample(self, request, progress):
        return GenerationResult(Image.new("RGB", (8, 8), self.colour), notices=list(self.notices))


MODELS = {
    "pixel-diffusion": ScriptedGenerator("pixel-diffusion", (255, 0, 0), ["pixel-diffusion draws 32x32 only."]),
    "latent-diffusion": ScriptedGenerator("latent-diffusion", (0, 0, 255), ["latent-diffusion: prompt cut."]),
    "sdxl-base": ScriptedGenerator("sdxl-base", (0, 255, 0), []),
}


def _manager() -> ModelManager:
    return ModelManager("demo", device="cpu", loader=lambda model_id, profile, device: MODELS[model_id])


def _generate(scorer=None):
    settings = service.check_generate_settings(PROMPT_WITH_CONTROL_CHARS, 5, "fast", profiles="demo")
    assert settings.notices == [PROMPT_NOTICE]
    results = list(service.generate_images(_manager(), settings, list(MODELS), scorer=scorer))
    return settings, results


def test_each_record_carries_the_request_notices_and_only_its_own_model_notices():
    settings, results = _generate()
    notices = {model_id: record.notices for model_id, _, record in results}
    assert notices == {
        "pixel-diffusion": [PROMPT_NOTICE, "pixel-diffusion draws 32x32 only."],
        "latent-diffusion": [PROMPT_NOTICE, "latent-diffusion: prompt cut."],
        "sdxl-base": [PROMPT_NOTICE],
    }, "per-panel notices contract broken: a panel shows the request's notices and its own model's, no other's"
    assert settings.notices == [PROMPT_NOTICE], "generating must not change the request's own notices"


def test_records_are_whole_and_independent():
    _, results = _generate(scorer=lambda image, prompt, weights: (0.75, "ShapesEval"))
    records = [record.as_dict() for _, _, record in results]
    for record in records:
        assert isinstance(record.pop("seconds"), float)
    assert records == [
        {"model": model_id, "seed": 5, "weights": "demo", "score": 0.75, "score_name": "ShapesEval",
         "error": None, "notices": [PROMPT_NOTICE, *MODELS[model_id].notices],
         "settings": {"seed": 5, "preset": "fast"}}
        for model_id in MODELS
    ]
    assert [image.getpixel((0, 0)) for _, image, _ in results] == [m.colour for m in MODELS.values()]


def test_a_failing_scorer_keeps_the_picture_and_says_why():
    def broken_judge(image, prompt, weights):
        raise RuntimeError("the judge's weights are corrupt (simulated)")

    _, results = _generate(scorer=broken_judge)
    assert [model_id for model_id, _, _ in results] == list(MODELS)
    for model_id, image, record in results:
        assert image is not None and record.error is None, (
            f"alignment-scorer contract broken: a judge that fails must not cost {model_id} its picture "
            f"(error={record.error!r})"
        )
        assert image.getpixel((0, 0)) == MODELS[model_id].colour
        assert record.score is None
        assert record.score_name is not None and "unavailable" in record.score_name, record.score_name
        assert "RuntimeError" in record.score_name, (
            f"alignment-scorer contract broken: the panel must say why the score is missing, got {record.score_name!r}"
        )
