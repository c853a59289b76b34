"""Both ends of every checked input range are accepted, and one step past either end is refused.

The ranges are the ones the README promises: seed 0 to 2^32 - 1, steps 1 to 1000, guidance 0 to 50, prompts
up to 1000 characters (longer ones cut with a notice), images up to 40 megapixels. An off-by-one at either
end is a bug a user meets (the top step count of the report's latent model is 1000), so each end is pinned.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmdemo import inputs
from mmdemo.inputs import InputError


def _accepts(check, value, contract: str):
    try:
        return check(value)
    except InputError as err:
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else repr(value)
        pytest.fail(f"input range contract broken: {contract}; {shown} was refused: {err}")


# (check, lowest accepted, highest accepted, just below, just above, the message the refusal must carry)
RANGES = {
    "seed": (inputs.check_seed, 0, inputs.MAX_SEED, -1, inputs.MAX_SEED + 1, "seed must be between 0 and"),
    "steps": (inputs.check_steps, 1, inputs.MAX_STEPS, 0, inputs.MAX_STEPS + 1, "steps must be a whole number from 1"),
    "guidance": (inputs.check_guidance, 0.0, inputs.MAX_GUIDANCE, -1e-6, inputs.MAX_GUIDANCE + 1e-6,
                 "Guidance must be between 0 and"),
}


def test_the_documented_limits():
    assert (inputs.MAX_SEED, inputs.MAX_STEPS, inputs.MAX_GUIDANCE) == (2**32 - 1, 1000, 50.0)
    assert (inputs.MAX_PROMPT_CHARS, inputs.MAX_IMAGE_PIXELS) == (1000, 40_000_000)


@pytest.mark.parametrize("name", list(RANGES))
def test_both_ends_of_each_range_are_accepted(name):
    check, low, high, _, _, _ = RANGES[name]
    contract = f"{name} accepts {low} to {high}, both ends included"
    assert _accepts(check, low, contract).value == low
    assert _accepts(check, high, contract).value == high


@pytest.mark.parametrize("name", list(RANGES))
@pytest.mark.parametrize("end", ["below", "above"])
def test_one_past_either_end_is_refused_with_the_range_named(name, end):
    check, _, _, below, above, message = RANGES[name]
    with pytest.raises(InputError, match=message):
        check(below if end == "below" else above)


def test_steps_at_the_top_pass_the_shared_request_check():
    """The whole request path (one check for every model) lets 1000 steps through, and refuses 1001."""
    from mmdemo import service

    settings = service.check_generate_settings("a red circle", 0, steps={"latent-diffusion": 1000})
    assert settings.steps == {"latent-diffusion": 1000}, (
        "input range contract broken: 1000 steps (the latent model's report setting) must reach the model"
    )
    with pytest.raises(InputError, match="steps must be a whole number from 1 to 1000"):
        service.check_generate_settings("a red circle", 0, steps={"latent-diffusion": 1001})


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
