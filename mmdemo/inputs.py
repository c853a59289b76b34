"""Checking what people type or upload, before any model sees it.

Every check returns the value a model can use plus notices to show the user, or raises
:class:`InputError` whose message is fit for the UI. The rules (documented in the README):

* prompt: control characters removed, whitespace collapsed; empty after that is an error; longer than
  ``MAX_PROMPT_CHARS`` is cut with a notice (models cut further to their own token limits, also with a notice);
* seed: an integer in ``[0, 2**32 - 1]``; anything else (negative, huge, not a number) is an error;
* model options (steps, guidance, pixel budget, decoding length, ...): checked against the model's declaration in
  the registry (:class:`~mmdemo.registry.Option`: type, range or choices); a value outside it is an error that
  names the model, the option and the value; blank (``None``, ``""``) means the model's default; an option the
  model does not take is ignored with a notice;
* images: decoded with Pillow under a pixel limit, animated images use their first frame, every mode
  (grayscale, RGBA, palette, 16-bit) is converted to 8-bit RGB.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdemo.interfaces import MAX_CANDIDATES, PRESETS, CaptionRequest, GenerationRequest

if TYPE_CHECKING:
    from mmdemo.registry import ModelSpec, Option

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1  # torch.Generator accepts 64 bits, but numpy-based code and most UIs stop at 32
MAX_IMAGE_PIXELS = 40_000_000  # about 6300x6300; Pillow's own bomb check fires at 2x its default of 89M


class InputError(ValueError):
    """A user input that cannot be used; the message is written for the person who typed it."""


@dataclass
class Checked:
    value: Any
    notices: list[str] = field(default_factory=list)


def check_prompt(prompt: Any, *, max_chars: int = MAX_PROMPT_CHARS) -> Checked:
    if not isinstance(prompt, str):
        raise InputError("The prompt must be text.")
    # Control and format characters (NUL, escape sequences, zero-width marks) only confuse tokenizers.
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in prompt)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    if not cleaned:
        raise InputError("The prompt is empty: type what the image should show.")
    notices = []
    if cleaned != re.sub(r"\s+", " ", prompt).strip():
        notices.append("Control characters were removed from the prompt.")
    if len(cleaned) > max_chars:
        cleaned = cleaned[:max_chars].rstrip()
        notices.append(f"The prompt was cut to its first {max_chars} characters.")
    return Checked(cleaned, notices)


def check_negative_prompt(prompt: Any) -> Checked:
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return Checked("")
    return check_prompt(prompt)


def check_seed(seed: Any) -> Checked:
    value = _as_number(seed, "seed")
    if not float(value).is_integer():
        raise InputError(f"The seed must be a whole number, got {seed!r}.")
    value = int(value)
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"The seed must be between 0 and {MAX_SEED}, got {value}.")
    return Checked(value)


def check_preset(preset: Any) -> str:
    if preset not in PRESETS:
        raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return preset


# ------------------------------------------------------------------------------------------------ model options


def is_blank(value: Any) -> bool:
    """``None`` or empty text: "use the model's default"."""
    return value is None or (isinstance(value, str) and not value.strip())


def check_option(option: Option, value: Any, model: str = "") -> Any:
    """``value`` as ``option``'s type, or an :class:`InputError` naming the model, the option and the value."""
    where = f"{model}: " if model else ""

    def fail(requirement: str) -> InputError:
        return InputError(f"{where}{option.name} must be {requirement}, got {value!r}.")

    if option.type in ("int", "float"):
        if isinstance(value, bool):
            raise fail("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise fail("a number") from None
        low, high = option.minimum, option.maximum
        whole = option.type == "int"
        span = (
            f" from {_fmt(low)} to {_fmt(high)}" if low is not None and high is not None
            else f" of at least {_fmt(low)}" if low is not None
            else f" of at most {_fmt(high)}" if high is not None else ""
        )  # fmt: skip
        requirement = f"{'a whole' if whole else 'a finite'} number{span}"
        if option.step:
            requirement += f", a multiple of {_fmt(option.step)}"
        if not math.isfinite(number) or (whole and not number.is_integer()):
            raise fail(requirement)
        if (low is not None and number < low) or (high is not None and number > high):
            raise fail(requirement)
        if option.step and not (number / option.step).is_integer():
            raise fail(requirement)
        return int(number) if whole else number
    if option.type == "choice":
        for choice in option.choices:
            if value == choice or str(value).strip() == str(choice):
                return choice
        raise fail(f"one of {', '.join(map(str, option.choices))}")
    if option.type == "bool":
        if isinstance(value, bool):
            return value
        if value in (0, 1) or str(value).strip().lower() in ("true", "false", "0", "1"):
            return str(value).strip().lower() in ("true", "1")
        raise fail("true or false")
    if option.type == "text":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail("text")
        text = str(value).strip()
        if option.pattern and not re.fullmatch(option.pattern, text):
            raise fail(f"text like {option.help.split(';')[0]}" if option.help else "valid text")
        return text
    raise ValueError(f"unknown option type {option.type!r} of {option.name}")


def _fmt(number: float | None) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def check_options(spec: ModelSpec, options: Mapping[str, Any] | None, *, profile: str) -> Checked:
    """The options given for ``spec`` checked against its declaration under ``profile``.

    Returns the given (non-blank) values by declared name, aliases resolved, and notices for the options the
    model does not take (ignored, never silently). Raises :class:`InputError` for a value outside its declaration.
    """
    if options is not None and not isinstance(options, Mapping):
        raise InputError(f"{spec.display_name}: options must map names to values, got {options!r}.")
    declared = spec.options_for(profile)
    by_alias = {alias: o.name for o in declared.values() for alias in o.aliases}
    values: dict[str, Any] = {}
    notices: list[str] = []
    for key, value in (options or {}).items():
        name = by_alias.get(key, key)
        if is_blank(value):
            continue
        if name not in declared:
            why = spec.absent.get(name, "")
            takes = ", ".join(o for o in declared) or "none"
            notices.append(
                f"{spec.display_name} has no option {name!r}"
                + (f": {why}" if why else f" (it takes: {takes})")
                + f"; the value {value!r} was ignored."
            )
            continue
        if name in values:
            notices.append(f"{spec.display_name}: {key!r} is another name for {name!r}; {name!r} given twice, "
                           f"the value {value!r} was ignored.")  # fmt: skip
            continue
        values[name] = check_option(declared[name], value, spec.display_name)
    return Checked(values, notices)


@dataclass(frozen=True)
class CommonSettings:
    """What one text-to-image request shares between every model it is sent to, checked."""

    prompt: str
    seed: int
    preset: str = "fast"
    negative_prompt: str = ""
    notices: tuple[str, ...] = ()


def check_common(prompt: Any, seed: Any, preset: Any = "fast", negative_prompt: Any = "") -> CommonSettings:
    checked_preset = check_preset(preset)
    checked_prompt = check_prompt(prompt)
    checked_negative = check_negative_prompt(negative_prompt)
    return CommonSettings(
        prompt=checked_prompt.value,
        seed=check_seed(seed).value,
        preset=checked_preset,
        negative_prompt=checked_negative.value,
        notices=(*checked_prompt.notices, *(f"Negative prompt: {n}" for n in checked_negative.notices)),
    )


def generation_request(
    spec: ModelSpec, common: CommonSettings, options: Mapping[str, Any] | None, *, profile: str, device: str
) -> GenerationRequest:
    """The typed request ``spec``'s adapter samples from: every declared option, given or default."""
    checked = check_options(spec, options, profile=profile)
    values = {**spec.option_defaults(profile, common.preset, device), **checked.value}
    return GenerationRequest(
        model=spec.id,
        prompt=common.prompt,
        seed=common.seed,
        preset=common.preset,
        negative_prompt=common.negative_prompt,
        options=values,
        notices=(*common.notices, *checked.notices),
        profile=profile,
        device=str(device),
    )


def check_generation(
    spec: ModelSpec,
    *,
    prompt: Any,
    seed: Any,
    preset: Any = "fast",
    negative_prompt: Any = "",
    options: Mapping[str, Any] | None = None,
    profile: str,
    device: str,
) -> GenerationRequest:
    """Check a whole text-to-image call for one model (what :meth:`Generator.generate` does first)."""
    common = check_common(prompt, seed, preset, negative_prompt)
    return generation_request(spec, common, options, profile=profile, device=device)


def check_candidates(value: Any) -> int:
    """How many scored captions per captioner: blank is 1, else a whole number from 1 to ``MAX_CANDIDATES``."""
    from mmdemo.registry import Option

    if is_blank(value):
        return 1
    return check_option(Option("candidates", "int", 1, minimum=1, maximum=MAX_CANDIDATES), value)


def caption_request(
    spec: ModelSpec, options: Mapping[str, Any] | None, *, profile: str, candidates: Any = None
) -> CaptionRequest:
    """The typed decoding request for ``spec``: every declared option, given or default; ``candidates`` checked
    (``None``: no scored candidates)."""
    checked = check_options(spec, options, profile=profile)
    values = {**spec.option_defaults(profile), **checked.value}
    return CaptionRequest(
        model=spec.id, options=values, notices=tuple(checked.notices), profile=profile,
        candidates=0 if candidates is None else check_candidates(candidates),
    )  # fmt: skip


def _as_number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"The {what} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"The {what} must be a finite number, got {value!r}.")
    return number


def load_image(source: Any) -> Checked:
    """An 8-bit RGB PIL image from a path, bytes, numpy array or PIL image, or an :class:`InputError`."""
    import numpy as np
    from PIL import Image, ImageSequence, UnidentifiedImageError

    notices: list[str] = []
    if source is None:
        raise InputError("No image was given: upload, paste or pick an example image.")
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
        except OSError as err:
            raise InputError(f"Could not read the image file: {err.strerror or err}.") from None
        try:
            image = Image.open(io.BytesIO(data))
            _check_size(image.size)
            image.load()
        except InputError:
            raise
        except Image.DecompressionBombError:
            raise InputError(
                f"The image is too large (more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels). Resize it and try again."
            ) from None
        except UnidentifiedImageError:
            # Pillow's own message names the in-memory buffer (``<_io.BytesIO object at 0x...>``): say it in words.
            raise InputError(
                "This file is not a readable image (not a format we know): upload a PNG, JPEG, WebP, GIF or BMP picture."
            ) from None
        except (OSError, SyntaxError, ValueError) as err:
            raise InputError(f"This file is not a readable image ({type(err).__name__}: {err}).") from None
    _check_size(image.size)
    if getattr(image, "is_animated", False):
        image = next(ImageSequence.Iterator(image)).copy()
        notices.append("Animated image: the first frame was used.")
    return Checked(_to_rgb8(image), notices)


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"The image is too large ({width}x{height} pixels); the limit is {MAX_IMAGE_PIXELS // 1_000_000} "
            "megapixels. Resize it and try again."
        )
    if min(width, height) < 1:
        raise InputError(f"The image is empty ({width}x{height}).")


def _from_array(array: Any) -> Any:
    import numpy as np
    from PIL import Image

    if array.ndim not in (2, 3) or array.size == 0:
        raise InputError(f"Expected an image array of shape (H, W) or (H, W, C), got {array.shape}.")
    if array.dtype != np.uint8:
        # Gradio hands numpy arrays for 16-bit and float images: bring them to 0..255.
        array = array.astype(np.float64)
        top = 65535.0 if array.max() > 255 else 255.0 if array.max() > 1.0 else 1.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb8(image: Any) -> Any:
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent pixels are often black underneath, which a captioner would describe.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
