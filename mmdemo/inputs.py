"""Checking what people type or upload, before any model sees it.

Every check returns the value a model can use plus notices to show the user, or raises
:class:`InputError` whose message is fit for the UI. The rules (documented in the README):

* prompt: control characters removed, whitespace collapsed; empty after that is an error; longer than
  ``MAX_PROMPT_CHARS`` is cut with a notice (models cut further to their own token limits, also with a notice);
* seed: an integer in ``[0, 2**32 - 1]``; anything else (negative, huge, not a number) is an error;
* steps: an integer in ``[1, MAX_STEPS]``; ``None`` means the preset's default;
* guidance: a finite number in ``[0, MAX_GUIDANCE]``; NaN or infinity is an error;
* images: decoded with Pillow under a pixel limit, animated images use their first frame, every mode
  (grayscale, RGBA, palette, 16-bit) is converted to 8-bit RGB.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1  # torch.Generator accepts 64 bits, but numpy-based code and most UIs stop at 32
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_IMAGE_PIXELS = 40_000_000  # about 6300x6300; Pillow's own bomb check fires at 2x its default of 89M
MIN_IMAGE_SIDE = 8


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


def check_steps(steps: Any, *, max_steps: int = MAX_STEPS) -> Checked:
    if steps is None or steps == "":
        return Checked(None)
    value = _as_number(steps, "number of steps")
    if not float(value).is_integer() or not 1 <= value <= max_steps:
        raise InputError(f"The number of steps must be a whole number from 1 to {max_steps}, got {steps!r}.")
    return Checked(int(value))


def check_guidance(guidance: Any) -> Checked:
    if guidance is None or guidance == "":
        return Checked(None)
    value = float(_as_number(guidance, "guidance"))
    if not 0.0 <= value <= MAX_GUIDANCE:
        raise InputError(f"Guidance must be between 0 and {MAX_GUIDANCE}, got {guidance!r}.")
    return Checked(value)


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
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
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
