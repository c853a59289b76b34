"""Both ends of every checked input range are accepted, and one step past either end is refused.

The ranges are the ones the README promises: seed 0 to 2^32 - 1, steps 1 to 1000, guidance 0 to 50, prompts
up to 1000 characters (longer ones cut with a notice), images up to 40 megapixels, and every option a model
declares in the registry (its own minimum and maximum). An off-by-one at either end is a bug a user meets
(1000 steps is the report's setting for the latent model), so each end is pinned.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from mmdemo import inputs, service
from mmdemo.inputs import InputError
from mmdemo.registry import GENERATOR_IDS, REGISTRY


def _accepts(check, value, contract: str):
    try:
        return check(value)
    except InputError as err:
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else repr(value)
        pytest.fail(f"input range contract broken: {contract}; {shown} was refused: {err}")


def test_the_documented_limits():
    assert (inputs.MAX_SEED, inputs.MAX_PROMPT_CHARS, inputs.MAX_IMAGE_PIXELS) == (2**32 - 1, 1000, 40_000_000)
    for model_id in GENERATOR_IDS:
        for profile in ("full", "demo"):
            declared = REGISTRY[model_id].options_for(profile)
            if "steps" in declared:
                steps = declared["steps"]
                assert (steps.minimum, steps.maximum) == (1, 1000), (
                    f"input range contract broken: {model_id} ({profile}) must take 1 to 1000 steps, "
                    f"declares {steps.minimum} to {steps.maximum}"
                )
            guidance = declared["guidance"]
            assert (guidance.minimum, guidance.maximum) == (0.0, 50.0), (model_id, profile, guidance)


def test_seed_range_both_ends_and_one_past():
    contract = "seed accepts 0 to 2^32 - 1, both ends included"
    assert _accepts(inputs.check_seed, 0, contract).value == 0
    assert _accepts(inputs.check_seed, inputs.MAX_SEED, contract).value == inputs.MAX_SEED
    for past in (-1, inputs.MAX_SEED + 1):
        with pytest.raises(InputError, match=f"seed must be between 0 and {inputs.MAX_SEED}, got {past}"):
            inputs.check_seed(past)


def _numeric_options():
    """(model, profile, option) for every number a model declares, under both profiles."""
    for model_id, spec in REGISTRY.items():
        for profile in ("full", "demo"):
            for option in spec.options_for(profile).values():
                if option.type in ("int", "float") and (option.minimum is not None or option.maximum is not None):
                    yield pytest.param(spec, option, id=f"{model_id}-{profile}-{option.name}")


def _one_step(option) -> float:
    return option.step or (1 if option.type == "int" else 1e-6)


@pytest.mark.parametrize("spec, option", list(_numeric_options()))
def test_every_declared_number_takes_both_ends_and_refuses_one_past(spec, option):
    def check(value):
        return inputs.check_option(option, value, spec.display_name)

    contract = f"{spec.id} {option.name} accepts {option.minimum} to {option.maximum}, both ends included"
    for end in (option.minimum, option.maximum):
        if end is not None:
            assert _accepts(check, end, contract) == end
    step = _one_step(option)
    for past in (
        None if option.minimum is None else option.minimum - step,
        None if option.maximum is None else option.maximum + step,
    ):
        if past is None:
            continue
        with pytest.raises(InputError, match=rf"^{re.escape(spec.display_name)}: {option.name} must be .*, got "):
            check(past)


def _choice_options():
    for model_id, spec in REGISTRY.items():
        for option in spec.options_for("full").values():
            if option.type == "choice":
                yield pytest.param(spec, option, id=f"{model_id}-{option.name}")


@pytest.mark.parametrize("spec, option", list(_choice_options()))
def test_every_declared_choice_is_accepted_and_nothing_else(spec, option):
    for choice in option.choices:
        assert _accepts(lambda v: inputs.check_option(option, v, spec.display_name), choice, "a declared choice") == choice
    with pytest.raises(InputError, match=rf"{option.name} must be one of"):
        inputs.check_option(option, "not-a-choice", spec.display_name)


def test_steps_at_the_top_pass_the_whole_request_check():
    """The request path the app uses (one check for every model) lets 1000 steps through, and refuses 1001."""
    settings = service.check_generate_settings(
        "a red circle", 0, options={"latent-diffusion": {"steps": 1000}}, profiles="demo"
    )
    assert settings.requests["latent-diffusion"]["steps"] == 1000, (
        "input range contract broken: 1000 steps (the latent model's report setting) must reach the model"
    )
    with pytest.raises(InputError, match="steps must be a whole number from 1 to 1000, got 1001"):
        service.check_generate_settings("a red circle", 0, options={"latent-diffusion": {"steps": 1001}}, profiles="demo")


def test_prompt_length_limit_is_inclusive():
    exact = "a" * inputs.MAX_PROMPT_CHARS
    checked = inputs.check_prompt(exact)
    assert checked.value == exact and checked.notices == [], (
        "prompt contract broken: a prompt of exactly 1000 characters is kept whole, without a notice"
    )
    longer = inputs.check_prompt(exact + "b")
    assert longer.value == exact
    assert longer.notices == [f"The prompt was cut to its first {inputs.MAX_PROMPT_CHARS} characters."]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")  # a few kB however many pixels
    return buffer.getvalue()


def test_image_pixel_limit_is_inclusive():
    width = 8000
    height = inputs.MAX_IMAGE_PIXELS // width  # exactly 40 megapixels
    image = _accepts(inputs.load_image, _png(width, height), "images of exactly 40 megapixels are accepted").value
    assert image.size == (width, height) and image.mode == "RGB"
    with pytest.raises(InputError, match="too large"):
        inputs.load_image(_png(width, height + 1))


def test_one_pixel_images_are_accepted():
    assert inputs.load_image(_png(1, 1)).value.size == (1, 1)
