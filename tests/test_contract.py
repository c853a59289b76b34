"""One contract, the same checks for all nine models (in the spirit of diffusers' ``PipelineTesterMixin``).

Every generator and every captioner is loaded from its shipped demo checkpoint (``checkpoints/demo/<id>``, so
this runs offline) and called the same way: a valid request, an option the model does not have, values just
outside each declared option's range, the same seed twice, the result types, the notices. A new model, or an
adapter that drifts (re-checks its inputs, drops an option silently, returns a bare picture), fails here.

The reference outputs at the end were recorded with the code as it was before requests were typed and
checked once: the refactor did not change a single pixel or caption of the shipped demo checkpoints.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

import mmdemo
from mmdemo import inputs
from mmdemo.inputs import InputError
from mmdemo.interfaces import CaptionResult, GenerationRequest, GenerationResult
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, Option
from mmdemo.service import REPO_ROOT

PROMPT = "a small red circle on the left"
EXAMPLE_IMAGE = REPO_ROOT / "assets" / "examples" / "Images" / "shapes_000000.png"
NOT_AN_OPTION = "not_an_option_of_any_model"


@pytest.fixture(scope="module", autouse=True)
def shipped_checkpoints(monkeypatch_module):
    monkeypatch_module.delenv("MMDEMO_CHECKPOINTS", raising=False)  # the shipped checkpoints/demo/<id>


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


_LOADED: dict[str, object] = {}


def load(model_id: str):
    """The demo model, loaded once for the whole module."""
    if model_id not in _LOADED:
        kind = REGISTRY[model_id].kind
        loader = mmdemo.load_generator if kind == "generator" else mmdemo.load_captioner
        _LOADED[model_id] = loader(model_id, profile="demo", device="cpu")
    return _LOADED[model_id]


def quick(model_id: str) -> dict:
    """Options that make a call cheap where the model has a step count (the contract does not need quality)."""
    return {"steps": 2} if "steps" in REGISTRY[model_id].options_for("demo") else {}


def outside(option: Option) -> list:
    """Values a request may not give ``option``: one past each end of its range, the wrong type."""
    if option.type in ("int", "float"):
        step = option.step or (1 if option.type == "int" else 0.01)
        bad = [v for v in (option.minimum, option.maximum) if v is not None]
        values = [option.minimum - step] if option.minimum is not None else []
        values += [option.maximum + step] if option.maximum is not None else []
        if option.type == "int":
            values.append((bad[0] if bad else 1) + 0.5)  # not whole
        return [*values, "many", float("nan")]
    if option.type == "choice":
        return ["not-a-choice"]
    if option.type == "bool":
        return ["maybe"]
    return ["!!"]  # text: every text option declares the pattern it must match


def refuses_outside_values(model_id: str, call) -> None:
    """``call(**{option: value})`` raises an error naming the option and the value, for every value outside."""
    for name, option in REGISTRY[model_id].options_for("demo").items():
        for value in outside(option):
            with pytest.raises(
                InputError, match=rf"{re.escape(name)} must be .*got {re.escape(repr(value))}"
            ):
                call(**{name: value})


# ---------------------------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("profile", ["full", "demo"])
@pytest.mark.parametrize("model_id", list(REGISTRY))
def test_every_option_is_declared_completely(model_id, profile):
    spec = REGISTRY[model_id]
    declared = spec.options_for(profile)
    assert declared, f"{model_id} declares no options"
    assert set(spec.demo_options) <= set(declared), "demo overrides name only declared options"
    for name, option in declared.items():
        assert option.help, f"{model_id}.{name} has no help text"
        assert option.type in ("int", "float", "choice", "bool", "text")
        assert option.type != "choice" or option.choices
        assert option.type != "text" or option.pattern
        for preset in ("fast", "report"):
            for device in ("cpu", "cuda"):
                default = option.default_for(preset, device)
                if default is not None:  # None: the adapter derives it (Infinity's aspect from width/height)
                    assert inputs.check_option(option, default) == default, (model_id, name, preset, device)
    assert not set(spec.absent) & set(declared), "an option cannot be both declared and absent"


# ---------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("model_id", GENERATOR_IDS)
class TestGeneratorContract:
    def test_valid_request_gives_a_typed_result_with_the_settings_used(self, model_id):
        generator = load(model_id)
        steps_seen: list[tuple[int, int]] = []
        result = generator.generate(
            PROMPT, seed=5, progress=lambda d, n: steps_seen.append((d, n)), **quick(model_id)
        )
        assert isinstance(result, GenerationResult)
        assert isinstance(result.image, Image.Image) and result.image.mode == "RGB"
        assert min(result.image.size) >= 8
        assert result.notices == [] and result.seconds is not None and result.seconds >= 0
        assert result.settings["seed"] == 5 and result.settings["preset"] == "fast"
        assert steps_seen and steps_seen[-1][0] == steps_seen[-1][1], "progress reaches its total"
        declared = REGISTRY[model_id].options_for("demo")
        for name in ("steps", "guidance"):
            if name in declared:
                expected = quick(model_id).get(name, declared[name].default)
                assert result.settings[name] == expected, f"{name} actually used"
        assert not result.image.info.get("mmdemo_notices"), "notices travel in the result, not in image.info"

    def test_a_checked_request_runs_as_the_same_call(self, model_id):
        generator = load(model_id)
        request = inputs.check_generation(
            REGISTRY[model_id], prompt=PROMPT, seed=9, options=quick(model_id), profile="demo", device="cpu"
        )
        assert isinstance(request, GenerationRequest)
        assert set(request.options) == set(REGISTRY[model_id].options_for("demo")), "every option filled in"
        by_run = np.asarray(generator.run(request).image)
        by_generate = np.asarray(generator.generate(PROMPT, seed=9, **quick(model_id)).image)
        assert np.array_equal(by_run, by_generate)

    def test_an_option_the_model_lacks_is_a_notice_and_changes_nothing(self, model_id):
        generator = load(model_id)
        plain = generator.generate(PROMPT, seed=3, **quick(model_id))
        odd = generator.generate(PROMPT, seed=3, **quick(model_id), **{NOT_AN_OPTION: 7})
        (notice,) = odd.notices
        assert f"no option '{NOT_AN_OPTION}'" in notice and "7" in notice
        assert np.array_equal(np.asarray(plain.image), np.asarray(odd.image)), "ignored means ignored"

    def test_values_outside_each_declared_option_are_refused_naming_the_value(self, model_id):
        generator = load(model_id)
        refuses_outside_values(
            model_id, lambda **kw: generator.generate(PROMPT, seed=0, **{**quick(model_id), **kw})
        )
        for kwargs, what in (
            (dict(seed=-1), "seed"),
            (dict(seed=2**32), "seed"),
            (dict(preset="turbo"), "preset"),
        ):
            with pytest.raises(InputError, match=what):
                generator.generate(PROMPT, **{"seed": 0, **kwargs})
        with pytest.raises(InputError, match="empty"):
            generator.generate(" \n\t", seed=0)

    def test_same_seed_same_picture_other_seed_other_picture(self, model_id):
        generator = load(model_id)
        a, b, c = (
            np.asarray(generator.generate(PROMPT, seed=s, **quick(model_id)).image) for s in (11, 11, 12)
        )
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_long_prompts_are_cut_with_notices(self, model_id):
        result = load(model_id).generate("a small red circle on the left " * 40, seed=1, **quick(model_id))
        assert any("1000 characters" in n for n in result.notices)  # the shared check
        assert any("token" in n for n in result.notices)  # the model's own text-encoder limit


# ---------------------------------------------------------------------------------------------- captioners


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
class TestCaptionerContract:
    def test_valid_request_gives_typed_results_with_the_settings_used(self, model_id):
        captioner = load(model_id)
        results = captioner.caption([Image.open(EXAMPLE_IMAGE), Image.new("RGBA", (40, 30))])
        assert len(results) == 2 and all(isinstance(r, CaptionResult) for r in results)
        declared = REGISTRY[model_id].option_defaults("demo")
        declared.pop("batch_size")  # the adapter's chunking, not a decoding setting
        for result in results:
            assert isinstance(result.caption, str) and result.caption.strip()
            assert result.settings == declared
            assert result.notices == [] and result.seconds is not None and result.seconds >= 0

    def test_an_option_the_model_lacks_is_a_notice_and_changes_nothing(self, model_id):
        captioner = load(model_id)
        image = Image.open(EXAMPLE_IMAGE)
        (plain,) = captioner.caption([image])
        (odd,) = captioner.caption([image], **{NOT_AN_OPTION: "x"})
        (notice,) = odd.notices
        assert f"no option '{NOT_AN_OPTION}'" in notice
        assert odd.caption == plain.caption

    def test_values_outside_each_declared_option_are_refused_naming_the_value(self, model_id):
        captioner = load(model_id)
        refuses_outside_values(model_id, lambda **kw: captioner.caption([Image.open(EXAMPLE_IMAGE)], **kw))
        with pytest.raises(InputError, match="No image"):
            captioner.caption([])
        with pytest.raises(InputError, match="not a readable image"):
            captioner.caption([b"not an image"])

    def test_same_image_same_caption(self, model_id):
        captioner = load(model_id)
        image = Image.open(EXAMPLE_IMAGE)
        assert captioner.caption([image])[0].caption == captioner.caption([image])[0].caption

    def test_a_shorter_limit_is_honoured(self, model_id):
        (short,) = load(model_id).caption([Image.open(EXAMPLE_IMAGE)], max_new_tokens=3)
        (full,) = load(model_id).caption([Image.open(EXAMPLE_IMAGE)])
        assert short.settings["max_new_tokens"] == 3 and len(short.caption) < len(full.caption)


# ---------------------------------------------------------------------------------------------- reference outputs

# Recorded before the refactor that typed and checked requests once (prompt PROMPT, seed 1234, preset "fast",
# every option at its default, CPU, one thread): SHA-256 of the picture's RGB bytes.
REFERENCE_PICTURES = {
    "sdxl-base": "bd56296c8c38ab125d8f4c37ecf4c639a8041554a3384cd45366024776ca2eb0",
    "sdxl-lora": "3840079756c27f1e3d26ffb3466a898e1255c0793491c960aa587ef9935c97ff",
    "infinity-2b": "cacfd9ef9d256457a7cf2277fa92ad7bc88bce39bdc59570ba2308934abada24",
    "pixel-diffusion": "d27c5fe39f6acc693518ad72e1af76a23016e04494b2b69049461aa253ab5024",
    # Re-recorded when the latent demo was retrained on the report's VQ-VAE and UNet (a new model, new picture).
    "latent-diffusion": "63c176565ade3d4c1c9a072db929b642c4cee94e9537142a927e4d33fa16d934",
}
# The same, for the captions of EXAMPLE_IMAGE with every decoding option at its default.
REFERENCE_CAPTIONS = {
    "resnet18-xattn": "a large purple triangle on the left and a large green triangle at the top",
    "clipb32-xattn": "a large purple triangle on the left and a large green triangle at the top",
    "qformer-bert": "a grey gradient background with a large purple triangle above and to the left of a small "
    "green triangle",
    "qformer-tinyllama": "a large purple triangle on the left and a big green circle at the bottom",
}


def test_every_model_has_a_reference():
    assert set(REFERENCE_PICTURES) == set(GENERATOR_IDS) and set(REFERENCE_CAPTIONS) == set(CAPTIONER_IDS)


@pytest.fixture
def one_thread():
    """The references were recorded on one CPU thread: a matmul split over more threads may sum in another order
    and change a last bit, which a hash sees."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_id", GENERATOR_IDS)
def test_shipped_demo_generator_draws_its_reference_picture(model_id, one_thread):
    picture = np.asarray(load(model_id).generate(PROMPT, seed=1234, preset="fast").image)
    assert hashlib.sha256(picture.tobytes()).hexdigest() == REFERENCE_PICTURES[model_id]


@pytest.mark.parametrize("model_id", CAPTIONER_IDS)
def test_shipped_demo_captioner_writes_its_reference_caption(model_id, one_thread):
    assert load(model_id).caption([Image.open(EXAMPLE_IMAGE)])[0].caption == REFERENCE_CAPTIONS[model_id]


# ---------------------------------------------------------------------------------------------- the UI side


def test_the_generate_tab_renders_every_declared_option_and_hands_the_handler_a_dict():
    from mmdemo.ui.handlers import (
        GPU_SECONDS_BASE,
        generate_gpu_seconds,
        merged_options,
        option_fields,
        options_from_fields,
    )

    availability = {m: "demo" for m in GENERATOR_IDS}
    fields = option_fields(availability)
    expected = [(m, o.name) for m in GENERATOR_IDS for o in REGISTRY[m].options_for("demo").values() if o.ui]
    assert [(m, o.name) for m, o in fields] == expected
    values = [None] * len(fields)
    first_steps = next(i for i, (_, o) in enumerate(fields) if o.name == "steps")
    values[first_steps] = 7
    model_id = fields[first_steps][0]
    assert options_from_fields(fields, *values) == {model_id: {"steps": 7}}
    # The API's JSON text applies on top of the fields.
    merged = merged_options(options_from_fields(fields, *values), f'{{"{model_id}": {{"guidance": 2}}}}')
    assert merged == {model_id: {"steps": 7, "guidance": 2}}
    # ZeroGPU time comes from each model's declared cost: more steps ask for more time.
    cost = REGISTRY[model_id].gpu_cost
    for steps in (10, 1000):
        asked = generate_gpu_seconds(PROMPT, [model_id], 0, "fast", "", "{}", {model_id: {"steps": steps}})
        assert asked == int(GPU_SECONDS_BASE + cost.fixed + cost.per_step * steps)


def test_the_ui_knows_no_model_by_name():
    sources = [(REPO_ROOT / "mmdemo" / "ui" / name).read_text() for name in ("app.py", "handlers.py")]
    for model_id in REGISTRY:
        assert not any(f'"{model_id}"' in text for text in sources), f"{model_id} named in the UI"


def test_the_generate_handler_takes_the_fields_dict_and_the_api_json():
    from mmdemo.ui.handlers import AppContext, generate_handler

    generate = generate_handler(AppContext.create("demo"))
    model_id = next(m for m in GENERATOR_IDS if {"steps", "guidance"} <= set(REGISTRY[m].options_for("demo")))
    *_, last = generate(
        PROMPT, [model_id], 3, "fast", "", f'{{"{model_id}": {{"guidance": 2}}}}', {model_id: {"steps": 3}}
    )
    (record,) = last[2 * len(GENERATOR_IDS)]
    assert record["error"] is None
    settings = record["settings"]
    assert (settings["seed"], settings["steps"], settings["guidance"]) == (3, 3, 2.0)  # fields, then the JSON
