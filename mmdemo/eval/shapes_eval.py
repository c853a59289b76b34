"""ShapesEval: does a generated picture show the single Shapes object its prompt asks for?

A deterministic, classical-vision judge (no learned model, so it cannot share a generator's mistakes):

1. **Object pixels.** Shapes objects are saturated colours (``COLORS``); every Shapes background is grey,
   cream, dark or a grey texture, i.e. of low chroma (max - min channel). Pixels with chroma above
   ``CHROMA_THRESHOLD`` are object candidates; the largest 4-connected blob is the object.
2. **Colour.** The median colour of the blob's most saturated half, matched to the nearest ``COLORS`` entry.
3. **Coverage.** Each pixel near the blob is modelled as ``alpha * object + (1 - alpha) * background`` (how
   Shapes composites anti-aliased edges); solving for alpha gives a soft mask whose sum is the area and whose
   weighted mean is the centroid.
4. **Position.** The nearest ``POSITIONS`` anchor to the centroid.
5. **Shape.** For every shape in ``SHAPES`` a template is drawn with Shapes' own renderer at the measured
   centroid, with the radius that gives the measured area; the template closest to the soft mask (L1) wins.

Images of any size are box-resized to at most ``ANALYSIS_SIZE`` pixels first. Validated in
``tests/test_shapes_eval.py`` on rendered Shapes pictures (>= 95 % per attribute) and on wrong pictures.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmdemo.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapeObject,
    parse_prompt,
    render_object_mask,
)

CHROMA_THRESHOLD = 70.0  # Shapes objects have chroma >= 125, backgrounds <= 50
MIN_OBJECT_PIXELS = 3.0  # a blob smaller than this (in soft-mask area at 32 px) is "no object"
ANALYSIS_SIZE = 64
# Area of each shape in units of radius**2 (matches mmdemo.data.shapes' drawing).
_AREA_PER_R2 = {
    "circle": math.pi,
    "square": (2 * 0.86) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * 1.3**2,
    "diamond": 2 * 0.95 * 1.3,
}


@dataclass
class ShapesReading:
    """What the judge sees in one picture (``None`` everywhere when it finds no object)."""

    color: str | None
    shape: str | None
    position: str | None
    centroid: tuple[float, float] | None  # fractions of the image side (x right, y down)
    area: float  # soft-mask area in pixels of the analysed image
    shape_scores: dict[str, float] | None = None  # template distance per shape, lower is closer


@dataclass
class ShapesJudgement:
    prompt: str
    expected: dict[str, str | None]
    reading: ShapesReading
    color_ok: bool
    shape_ok: bool
    position_ok: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (BFS; images here are at most 64x64)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_size else np.zeros_like(mask)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def read_image(image: Image.Image) -> ShapesReading:
    """Find the main object of ``image`` and read its colour, shape and position."""
    image = image.convert("RGB")
    if max(image.size) > ANALYSIS_SIZE:
        image = image.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)
    elif image.size[0] != image.size[1]:
        side = max(image.size)
        image = image.resize((side, side), Image.Resampling.BOX)
    rgb = np.asarray(image, dtype=np.float32)
    n = rgb.shape[0]
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    blob = _largest_component(chroma > CHROMA_THRESHOLD)
    if blob.sum() == 0:
        return ShapesReading(None, None, None, None, 0.0)
    # Colour: the more saturated half of the blob is inside the object, away from blended edges.
    core = blob & (chroma >= np.median(chroma[blob]))
    object_rgb = np.median(rgb[core], axis=0)
    names = list(COLORS)
    palette = np.array([COLORS[c] for c in names], dtype=np.float32)
    color = names[int(np.argmin(((palette - object_rgb) ** 2).sum(axis=1)))]
    # Soft mask: alpha of each pixel on the segment background -> object colour, near the blob only.
    near = _dilate(blob, 2)
    ring = _dilate(blob, 4) & ~near
    outside = ring if ring.any() else ~near
    # A blob filling the whole picture (noise, a flat colour) has no outside: compare with the image median.
    background = np.median(rgb[outside] if outside.any() else rgb.reshape(-1, 3), axis=0)
    direction = object_rgb - background
    alpha = ((rgb - background) @ direction) / max(float(direction @ direction), 1e-6)
    alpha = np.clip(alpha, 0.0, 1.0) * near
    area = float(alpha.sum())
    if area * (32.0 / n) ** 2 < MIN_OBJECT_PIXELS:
        return ShapesReading(None, None, None, None, area)
    ys, xs = np.mgrid[0:n, 0:n]
    cx, cy = float((alpha * (xs + 0.5)).sum() / area), float((alpha * (ys + 0.5)).sum() / area)
    centroid = (cx / n, cy / n)
    position = min(
        POSITIONS, key=lambda p: (POSITIONS[p][0] - centroid[0]) ** 2 + (POSITIONS[p][1] - centroid[1]) ** 2
    )
    scores = {}
    for shape in SHAPES:
        radius = math.sqrt(area / _AREA_PER_R2[shape])
        template = render_object_mask(ShapeObject(color, shape, "small", position, (cx, cy), radius), n)
        scores[shape] = float(np.abs(template - alpha).sum() / area)
    shape = min(scores, key=scores.get)
    return ShapesReading(color, shape, position, centroid, area, scores)


def judge(image: Image.Image, prompt: str) -> ShapesJudgement:
    """Compare ``image`` with the colour, shape and position a single-object Shapes ``prompt`` names."""
    expected = parse_prompt(prompt)
    reading = read_image(image)
    return ShapesJudgement(
        prompt,
        expected,
        reading,
        color_ok=reading.color is not None and reading.color == expected["color"],
        shape_ok=reading.shape is not None and reading.shape == expected["shape"],
        position_ok=reading.position is not None and reading.position == expected["position"],
    )


def accuracies(judgements: list[ShapesJudgement]) -> dict[str, float]:
    n = max(1, len(judgements))
    return {
        "color_acc": sum(j.color_ok for j in judgements) / n,
        "shape_acc": sum(j.shape_ok for j in judgements) / n,
        "position_acc": sum(j.position_ok for j in judgements) / n,
        "n": len(judgements),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Judge one image against a single-object Shapes prompt.")
    parser.add_argument("image", type=Path)
    parser.add_argument("prompt")
    args = parser.parse_args(argv)
    print(json.dumps(judge(Image.open(args.image), args.prompt).to_json(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
