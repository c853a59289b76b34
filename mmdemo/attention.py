"""Where a captioner looked: one attention map per word of a caption, drawn over the picture.

A captioner whose network can say where it looked (``Captioner.attention_note`` is not empty) answers
:meth:`~mmdemo.interfaces.Captioner.attend` with the caption's words and one map per word over its image grid,
each map summing to 1; what the map is differs by family and is in that note. This module keeps the last
answers (clicking through the words of one caption runs the model once) and draws a map as a heatmap over the
part of the picture the model saw, enlarged with whole-pixel steps so small pictures and grid cells stay crisp.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmdemo import inputs
from mmdemo.registry import Option, get_spec

if TYPE_CHECKING:
    from PIL import Image

    from mmdemo.interfaces import CaptionResult
    from mmdemo.runtime import ModelManager

CAVEAT = (
    "Attention is not an explanation: the map shows how the decoder weighted the image regions at the step that "
    "wrote this word, not why it chose the word; the feed-forward layers and the image encoder, which mixes "
    "regions before the decoder sees them, shape the word too."
)
OVERLAY_SIDE = 448  # pixels: the drawn square is enlarged to about this side
CACHE_SIZE = 32


@dataclass
class AttentionView:
    """One word's map: the caption explained, its words, the picked word and the heatmap over the picture."""

    model: str
    caption: str
    words: list[str]
    word: int
    grid: tuple[int, int]
    overlay: Image.Image
    note: str  # what the map is (the family's note) and what it is not

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "caption": self.caption, "words": self.words, "word": self.word,
                "grid": list(self.grid), "note": self.note}  # fmt: skip


_cache: OrderedDict[tuple[str, str, str], CaptionResult] = OrderedDict()
_lock = threading.Lock()


def check_word_index(value: Any, words: list[str]) -> int:
    """A word's position in the caption (0 = the first; blank: 0), or an :class:`~mmdemo.inputs.InputError`."""
    if inputs.is_blank(value):
        return 0
    position = Option("word", "int", 0, minimum=0, maximum=len(words) - 1)
    try:
        return inputs.check_option(position, value)
    except inputs.InputError as err:
        raise inputs.InputError(f"{str(err).rstrip('.')} (the caption has {len(words)} words).") from None


def caption_attention(
    manager: ModelManager, image: Any, model_id: str, caption: str | None = None, word: Any = 0
) -> AttentionView:
    """Where ``model_id`` looked for word ``word`` of ``caption`` (blank: its own caption of ``image``).

    Input mistakes (no image, an unknown model, a word index outside the caption, a model that cannot show
    where it looked) raise :class:`~mmdemo.inputs.InputError`.
    """
    try:
        spec = get_spec(model_id, "captioner")
    except (KeyError, ValueError) as err:
        raise inputs.InputError(str(err).strip("'\"")) from None
    checked = inputs.load_image(image)
    text = " ".join(str(caption or "").split())
    digest = hashlib.sha256(checked.value.tobytes() + str(checked.value.size).encode()).hexdigest()
    key = (spec.id, digest, text)
    with _lock:
        result = _cache.get(key)
    if result is None:

        def attend(model: Any) -> CaptionResult:
            if not model.attention_note:
                raise inputs.InputError(f"{spec.display_name} cannot show where it looked.")
            return model.attend(checked.value, text or None)

        result = manager.run(spec.id, attend, action="attention")
        with _lock:
            _cache[key] = result
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    if not result.tokens:
        raise inputs.InputError(f"{spec.display_name}: the caption {result.caption!r} has no words to show.")
    index = check_word_index(word, result.tokens)
    heat = np.asarray(result.attention[index], dtype=np.float64)
    note = f"{result.settings.get('note', '')} {CAVEAT}".strip()
    return AttentionView(
        spec.id, result.caption, list(result.tokens), index, tuple(heat.shape),
        overlay=draw_overlay(checked.value, heat, view=result.settings.get("view", "whole")), note=note,
    )  # fmt: skip


def model_view(image: Image.Image, view: str) -> Image.Image:
    """The square the model saw: the centred square of the shorter side (``"centre"``), or the whole picture."""
    if view != "centre":
        return image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def draw_overlay(
    image: Image.Image, heat: np.ndarray, *, view: str = "whole", side: int = OVERLAY_SIDE
) -> Image.Image:
    """``heat`` (rows, cols) coloured (matplotlib's ``inferno``, scaled to its maximum) over the square the model
    saw; small pictures are enlarged by a whole factor with nearest-neighbour resampling, grid cells stay sharp."""
    import matplotlib
    from PIL import Image as PILImage

    square = model_view(image.convert("RGB"), view)
    width, height = square.size
    if max(width, height) < side:
        factor = math.ceil(side / max(width, height))
        square = square.resize((width * factor, height * factor), PILImage.NEAREST)
    else:
        scale = side / max(width, height)
        square = square.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), PILImage.LANCZOS
        )
    peak = float(heat.max())
    levels = np.clip(heat / peak if peak > 0 else heat, 0.0, 1.0)
    cells = PILImage.fromarray((levels * 255).round().astype(np.uint8)).resize(square.size, PILImage.NEAREST)
    colours = matplotlib.colormaps["inferno"](np.asarray(cells) / 255.0)[..., :3]
    blended = 0.5 * (np.asarray(square, dtype=np.float64) / 255.0) + 0.5 * colours
    return PILImage.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8))
