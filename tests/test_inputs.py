"""User input checks: prompts, seeds, steps, guidance and every kind of awkward image."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from mmdemo import inputs
from mmdemo.inputs import InputError
from mmdemo.registry import get_spec


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", "\x00\x01"])
def test_empty_prompts_are_refused(prompt):
    with pytest.raises(InputError, match="empty"):
        inputs.check_prompt(prompt)


def test_prompt_cleaning_keeps_emoji_and_reports_changes():
    checked = inputs.check_prompt("a red\x00 circle 🔴\u200b  ")
    assert checked.value == "a red circle 🔴"
    assert checked.notices and "Control characters" in checked.notices[0]
    long = inputs.check_prompt("x" * 10_000)
    assert len(long.value) == inputs.MAX_PROMPT_CHARS and "cut" in long.notices[0]
    assert inputs.check_prompt("a blue square").notices == []
    with pytest.raises(InputError, match="The prompt must be text"):
        inputs.check_prompt(None)


@pytest.mark.parametrize("seed", [-1, 2**32, 1e30, 1.5, "abc", float("nan"), None, True])
def test_bad_seeds(seed):
    with pytest.raises(InputError, match="seed"):
        inputs.check_seed(seed)


def test_good_seeds():
    assert inputs.check_seed(0).value == 0
    assert inputs.check_seed(2**32 - 1).value == 2**32 - 1
    assert inputs.check_seed(7.0).value == 7 and inputs.check_seed("12").value == 12


STEPS = get_spec("pixel-diffusion").options_for("demo")["steps"]
GUIDANCE = get_spec("pixel-diffusion").options_for("demo")["guidance"]


@pytest.mark.parametrize("steps", [0, -5, 10**6, 2.5, "x", float("inf"), True])
def test_bad_steps(steps):
    with pytest.raises(InputError, match=rf"pixel: steps must be .*, got {re.escape(repr(steps))}"):
        inputs.check_option(STEPS, steps, "pixel")


def test_steps_and_guidance_defaults_and_limits():
    assert inputs.check_option(STEPS, 25) == 25 and inputs.check_option(STEPS, "25") == 25
    assert inputs.check_option(GUIDANCE, 3) == 3.0 and isinstance(inputs.check_option(GUIDANCE, 3), float)
    for bad in [math.nan, math.inf, -1, 1000, "much"]:
        with pytest.raises(InputError, match="guidance"):
            inputs.check_option(GUIDANCE, bad)
    # Blank means "the model's default": the preset's, from the registry.
    request = inputs.check_generation(
        get_spec("pixel-diffusion"), prompt="a", seed=1, options={"steps": None, "guidance": ""},
        profile="demo", device="cpu",
    )  # fmt: skip
    assert request["steps"] == STEPS.default and request["guidance"] == GUIDANCE.default
    report = inputs.check_generation(
        get_spec("pixel-diffusion"), prompt="a", seed=1, preset="report", profile="demo", device="cpu"
    )
    assert report["steps"] == STEPS.report_default == 100


def test_choice_bool_text_and_stepped_options():
    spec = get_spec("infinity-2b")
    full, demo = spec.options_for("full"), spec.options_for("demo")
    assert inputs.check_option(full["pixel_budget"], "0.60M") == "0.60M"
    with pytest.raises(InputError, match=r"pixel_budget must be one of 0.06M, 0.25M, 1M, got '0.60M'"):
        inputs.check_option(demo["pixel_budget"], "0.60M")  # the demo model has no such budget
    assert inputs.check_option(full["free_text_encoder_after_encoding"], "true") is True
    with pytest.raises(InputError, match="true or false"):
        inputs.check_option(full["free_text_encoder_after_encoding"], "maybe")
    assert inputs.check_option(full["aspect_ratio"], " 16:9 ") == "16:9"
    for bad in ["wide", "0:1", "1.2.3", "16:"]:
        with pytest.raises(InputError, match="aspect_ratio"):
            inputs.check_option(full["aspect_ratio"], bad)
    width = get_spec("sdxl-base").options_for("demo")["width"]
    assert inputs.check_option(width, 48) == 48
    for bad in [33, 72, 0]:
        with pytest.raises(InputError, match="multiple of 8"):
            inputs.check_option(width, bad)


def test_unknown_options_are_notices_and_aliases_resolve():
    spec = get_spec("infinity-2b")
    checked = inputs.check_options(spec, {"cfg": 4, "steps": 30, "top_p": None}, profile="demo")
    assert checked.value == {"guidance": 4.0}  # the alias, resolved; blank left out
    (notice,) = checked.notices
    assert "no option 'steps'" in notice and "pixel budget" in notice and "30" in notice
    with pytest.raises(InputError, match="options must map"):
        inputs.check_options(spec, ["steps"], profile="demo")


def _png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_non_image_and_truncated_files_get_clear_messages(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        inputs.load_image(text)
    data = _png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable image"):
        inputs.load_image(truncated)
    with pytest.raises(InputError, match="No image"):
        inputs.load_image(None)
    with pytest.raises(InputError, match="Could not read"):
        inputs.load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # A tiny file that claims 20000x20000 pixels: the size check fires on the header alone.
    bomb = Image.new("1", (20_000, 20_000))
    path = tmp_path / "bomb.png"
    bomb.save(path, optimize=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match="too large"):
        inputs.load_image(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (20, 10), 128),
        lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0)),
        lambda: Image.new("P", (20, 10), 3),
        lambda: Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)),
        lambda: Image.new("1", (20, 10), 1),
        lambda: Image.new("CMYK", (20, 10), (0, 255, 0, 0)),
        lambda: Image.new("RGB", (1, 1), (1, 2, 3)),
    ],
)
def test_every_mode_becomes_rgb8(tmp_path, make):
    image = make()
    path = tmp_path / "img.png" if image.mode != "CMYK" else tmp_path / "img.tiff"
    image.save(path)
    out = inputs.load_image(path).value
    assert out.mode == "RGB" and out.size == image.size


def test_transparent_pixels_composite_on_white_and_16bit_scales():
    rgba = inputs.load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).value
    assert rgba.getpixel((0, 0)) == (255, 255, 255)
    sixteen = inputs.load_image(np.full((4, 4), 65535, dtype=np.uint16)).value
    assert sixteen.getpixel((0, 0)) == (255, 255, 255)


def test_animated_image_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    checked = inputs.load_image(path)
    r, g, b = checked.value.getpixel((8, 8))
    assert r > 200 and b < 50
    assert any("first frame" in n for n in checked.notices)
