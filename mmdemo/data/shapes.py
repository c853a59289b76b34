"""Shapes: a procedurally drawn, offline stand-in for Flickr8k.

Every image shows one or two flat objects (a colour, a shape, a size and one of five positions) on a
background, and comes with five captions of genuinely different sentence structure. The dataset is
written in the Flickr8k Kaggle layout, so every loader, trainer and evaluator runs on it unchanged::

    python -m mmdemo.data.shapes --out DIR --n 2000 --seed 0 [--size 64] [--max-objects 2] [--style plain]

    DIR/Images/shapes_000000.png ...   lossless RGB pictures
    DIR/captions.txt                   image,caption (5 rows per image)
    DIR/scenes.jsonl                   the ground truth of every picture (see ShapesScene)

Everything is a pure function of the seed: ``random.Random(seed)`` draws the scenes and captions in
order (so the first k images of a run with n > k equal a run with n = k), and background textures use
``numpy.random.default_rng`` seeded from the scene. The vocabulary below is public so that
evaluators can check generated pictures against prompts (:func:`parse_prompt`,
:func:`sample_single_object_prompts`, :func:`render_object_mask`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmdemo.data.flickr8k import CAPTIONS_FILE, IMAGES_DIR, write_captions_txt

RGB = tuple[int, int, int]

# Saturated hues that stay apart from each other after downsampling to 32 px and from every
# background below (light, dark or grey tints); white and black are backgrounds, never objects.
COLORS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 205, 20),
    "green": (35, 160, 55),
    "blue": (35, 85, 225),
    "purple": (145, 55, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Object "radius" as a fraction of the image side: the radius of a circle of the same visual size.
SIZES: dict[str, float] = {"small": 0.11, "large": 0.17}
# Anchor (x, y) of each position as fractions of the image (y grows downwards); objects sit at their
# anchor plus a small jitter, so the position is always the nearest anchor.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.21, 0.5),
    "right": (0.79, 0.5),
    "top": (0.5, 0.21),
    "bottom": (0.5, 0.79),
    "center": (0.5, 0.5),
}
POSITION_JITTER = 0.04  # max offset from the anchor, fraction of the image side
MIN_GAP = 0.05  # two objects stay this far apart (fraction of the side) so they read as two things
STYLES: tuple[str, ...] = ("plain", "dark", "textured")

# How far each shape reaches from its centre, in units of the object radius (the circle reaches 1).
# Square, triangle and diamond are drawn a bit larger than their inscribed circle so that all shapes
# of one size look about as big.
_SQUARE_HALF_SIDE = 0.86
_TRIANGLE_CIRCUMRADIUS = 1.3
_DIAMOND_HALF_WIDTH, _DIAMOND_HALF_HEIGHT = 0.95, 1.3
SHAPE_EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": _SQUARE_HALF_SIDE * 2**0.5,
    "triangle": _TRIANGLE_CIRCUMRADIUS,
    "diamond": _DIAMOND_HALF_HEIGHT,
}
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-averaged: exact coverage, no ringing at the edges


@dataclass(frozen=True)
class BackgroundSpec:
    """How one background looks and how captions name it.

    Args:
        phrase: The words captions use before "background" ("light grey"); never a vocabulary word.
        style: Which ``--style`` draws it: ``plain`` (light tints and gradients), ``dark`` or ``textured``.
        kind: ``flat``, ``vertical_gradient`` (first colour at the top), ``horizontal_gradient`` (first
            colour on the left), ``speckle`` (first colour plus per-pixel grain), ``stripes`` (diagonal)
            or ``checks``.
        colors: One or two RGB colours, as ``kind`` needs.
    """

    phrase: str
    style: str
    kind: str
    colors: tuple[RGB, ...]


BACKGROUNDS: dict[str, BackgroundSpec] = {
    "white": BackgroundSpec("white", "plain", "flat", ((248, 248, 246),)),
    "light_grey": BackgroundSpec("light grey", "plain", "flat", ((212, 212, 210),)),
    "cream": BackgroundSpec("cream", "plain", "flat", ((244, 234, 206),)),
    "grey_gradient": BackgroundSpec(
        "grey gradient", "plain", "vertical_gradient", ((250, 250, 250), (185, 188, 192))
    ),
    "sand_gradient": BackgroundSpec(
        "sandy gradient", "plain", "horizontal_gradient", ((246, 238, 220), (212, 196, 164))
    ),
    "black": BackgroundSpec("black", "dark", "flat", ((16, 16, 18),)),
    "dark_grey": BackgroundSpec("dark grey", "dark", "flat", ((58, 58, 62),)),
    "navy": BackgroundSpec("navy", "dark", "flat", ((18, 24, 56),)),
    "dark_gradient": BackgroundSpec("dark gradient", "dark", "vertical_gradient", ((8, 8, 24), (70, 70, 78))),
    "speckled_white": BackgroundSpec("speckled white", "textured", "speckle", ((236, 236, 232),)),
    "striped_grey": BackgroundSpec("striped grey", "textured", "stripes", ((226, 226, 226), (176, 176, 180))),
    "checkered_cream": BackgroundSpec(
        "checkered cream", "textured", "checks", ((246, 238, 214), (206, 194, 168))
    ),
}
_SPECKLE_AMPLITUDE = 28  # +- grey levels of grain; keeps the speckled white far from every object colour

# Words that name vocabulary items in captions (several per item); parse_prompt maps them back.
COLOR_WORDS: dict[str, str] = {name: name for name in COLORS}
SHAPE_WORDS: dict[str, str] = {
    "circle": "circle", "disc": "circle", "ball": "circle", "round": "circle", "circular": "circle",
    "square": "square", "box": "square", "block": "square",
    "triangle": "triangle", "triangular": "triangle",
    "diamond": "diamond", "rhombus": "diamond",
}  # fmt: skip
SIZE_WORDS: dict[str, str] = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
POSITION_WORDS: dict[str, str] = {
    "left": "left", "right": "right",
    "top": "top", "upper": "top",
    "bottom": "bottom", "lower": "bottom",
    "center": "center", "centre": "center", "middle": "center", "central": "center",
}  # fmt: skip


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object and the ground truth about it.

    Args:
        color: A key of ``COLORS``.
        shape: One of ``SHAPES``.
        size: A key of ``SIZES``.
        position: A key of ``POSITIONS``: the anchor the object was placed at.
        center_xy: Centre in pixels of the scene's image (x right, y down); the shape's centroid.
        radius_px: Radius in pixels (``SIZES[size] * image_size``); the shape reaches
            ``SHAPE_EXTENT[shape] * radius_px`` from its centre.
    """

    color: str
    shape: str
    size: str
    position: str
    center_xy: tuple[float, float]
    radius_px: float


@dataclass(frozen=True)
class ShapesScene:
    """Everything needed to redraw one Shapes picture.

    Args:
        objects: One or two objects; two objects are at least ``MIN_GAP`` apart, never share a position and
            differ in colour or in shape so that captions can tell them apart.
        background: A key of ``BACKGROUNDS``.
        image_size: Side of the square image in pixels, the unit of the objects' coordinates.
        texture_seed: Seeds the grain of ``speckle`` backgrounds (unused by the others).
    """

    objects: tuple[ShapeObject, ...]
    background: str
    image_size: int
    texture_seed: int = 0

    def resized(self, image_size: int) -> ShapesScene:
        """The same scene with pixel coordinates scaled to a ``image_size`` x ``image_size`` image."""
        scale = image_size / self.image_size
        objects = tuple(
            replace(
                o, center_xy=(o.center_xy[0] * scale, o.center_xy[1] * scale), radius_px=o.radius_px * scale
            )
            for o in self.objects
        )
        return replace(self, objects=objects, image_size=image_size)

    def to_json(self) -> dict:
        """A JSON-ready dict (the ``scenes.jsonl`` record without ``file``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> ShapesScene:
        """Inverse of :meth:`to_json`; extra keys such as ``file`` are ignored."""
        objects = tuple(
            ShapeObject(**{**o, "center_xy": tuple(o["center_xy"]), "radius_px": float(o["radius_px"])})
            for o in record["objects"]
        )
        return cls(
            objects, record["background"], int(record["image_size"]), int(record.get("texture_seed", 0))
        )


# ---------------------------------------------------------------------------------------------------
# Drawing


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``shape`` centred (centroid) at ``(cx, cy)``; ``None`` for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = _SQUARE_HALF_SIDE * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up
        big_r = _TRIANGLE_CIRCUMRADIUS * r
        return [(cx, cy - big_r), (cx + big_r * 0.866, cy + big_r / 2), (cx - big_r * 0.866, cy + big_r / 2)]
    if shape == "diamond":
        w, h = _DIAMOND_HALF_WIDTH * r, _DIAMOND_HALF_HEIGHT * r
        return [(cx, cy - h), (cx + w, cy), (cx, cy + h), (cx - w, cy)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_object_mask(obj: ShapeObject, image_size: int) -> np.ndarray:
    """Coverage of ``obj`` on an ``image_size`` image as float32 in [0, 1], shape (H, W).

    ``obj``'s coordinates must be in pixels of that image size (see ``ShapesScene.resized``).
    """
    big = image_size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = (
        obj.center_xy[0] * _SUPERSAMPLE,
        obj.center_xy[1] * _SUPERSAMPLE,
        obj.radius_px * _SUPERSAMPLE,
    )
    outline = _shape_outline(obj.shape, cx, cy, r)
    if outline is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(outline, fill=255)
    # BOX averages each 4x4 block: the pixel's exact covered fraction, without LANCZOS overshoot.
    small = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_background(spec: BackgroundSpec, image_size: int, texture_seed: int = 0) -> np.ndarray:
    """The background as float32 RGB, shape (H, W, 3), values in [0, 255]."""
    first = np.array(spec.colors[0], dtype=np.float32)
    second = np.array(spec.colors[-1], dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    ys, xs = np.mgrid[0:image_size, 0:image_size]
    if spec.kind == "flat":
        weight = np.zeros((image_size, image_size), dtype=np.float32)
    elif spec.kind == "vertical_gradient":
        weight = np.broadcast_to(ramp[:, None], (image_size, image_size))
    elif spec.kind == "horizontal_gradient":
        weight = np.broadcast_to(ramp[None, :], (image_size, image_size))
    elif spec.kind == "stripes":
        period = max(2, image_size // 8)  # 8 stripe pairs per side at any resolution
        weight = (((xs + ys) // period) % 2).astype(np.float32)
    elif spec.kind == "checks":
        cell = max(2, image_size // 8)
        weight = ((xs // cell + ys // cell) % 2).astype(np.float32)
    elif spec.kind == "speckle":
        grain = np.random.default_rng(texture_seed).uniform(
            -_SPECKLE_AMPLITUDE, _SPECKLE_AMPLITUDE, (image_size, image_size, 1)
        )
        return np.clip(first + grain.astype(np.float32), 0, 255)
    else:
        raise ValueError(f"unknown background kind {spec.kind!r}")
    weight = weight[..., None]
    return first * (1.0 - weight) + second * weight


def render_scene(scene: ShapesScene, size: int | None = None) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels (default: ``scene.image_size``).

    Objects are composited with their anti-aliased coverage, so every pixel fully inside an object has
    exactly the object's ``COLORS`` value.
    """
    if size is not None and size != scene.image_size:
        scene = scene.resized(size)
    n = scene.image_size
    canvas = render_background(BACKGROUNDS[scene.background], n, scene.texture_seed)
    for obj in scene.objects:
        alpha = render_object_mask(obj, n)[..., None]
        canvas = canvas * (1.0 - alpha) + np.array(COLORS[obj.color], dtype=np.float32) * alpha
    return Image.fromarray(np.rint(canvas).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------------------
# Sampling scenes


def _place(
    rng: random.Random, color: str, shape: str, size: str, position: str, image_size: int
) -> ShapeObject:
    radius = SIZES[size] * image_size
    reach = SHAPE_EXTENT[shape] * radius + 1.0  # keep a pixel of margin to the image border
    anchor_x, anchor_y = POSITIONS[position]
    center = []
    for anchor in (anchor_x, anchor_y):
        value = (anchor + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * image_size
        center.append(min(max(value, reach), image_size - reach))
    return ShapeObject(color, shape, size, position, (center[0], center[1]), radius)


def _too_close(a: ShapeObject, b: ShapeObject, image_size: int) -> bool:
    """True when the drawn objects would come nearer than ``MIN_GAP``: each is grown by half the gap
    (radius scaled so its outline moves outwards by that much) and their masks share a pixel."""
    masks = []
    for obj in (a, b):
        grow = MIN_GAP * image_size / 2 / SHAPE_EXTENT[obj.shape]
        masks.append(render_object_mask(replace(obj, radius_px=obj.radius_px + grow), image_size) > 0)
    return bool(np.any(masks[0] & masks[1]))


def sample_scene(
    rng: random.Random,
    image_size: int = 64,
    max_objects: int = 2,
    style: str = "plain",
) -> ShapesScene:
    """Draw a random scene: 1 or (when ``max_objects`` is 2, with probability 1/2) 2 objects.

    Colours, shapes, sizes and positions are drawn uniformly; a pair that shares colour and shape or
    comes nearer than ``MIN_GAP`` is drawn again. Because of that rejection, the center position shows
    up in two-object scenes about half as often as the others, and then with small objects (two large
    ones do not fit side by side with the center). The background is uniform among the ``style``'s.
    """
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    backgrounds = [name for name, spec in BACKGROUNDS.items() if spec.style == style]
    background = rng.choice(backgrounds)
    n_objects = 1 if max_objects == 1 else rng.choice((1, 2))
    for _attempt in range(100):
        positions = rng.sample(list(POSITIONS), n_objects)
        objects = [
            _place(
                rng,
                rng.choice(list(COLORS)),
                rng.choice(SHAPES),
                rng.choice(list(SIZES)),
                position,
                image_size,
            )
            for position in positions
        ]
        if n_objects == 2:
            a, b = objects
            if (a.color, a.shape) == (b.color, b.shape) or _too_close(a, b, image_size):
                continue
        return ShapesScene(tuple(objects), background, image_size, rng.randrange(2**31))
    # Unreachable in practice: a left/right or top/bottom pair always fits at these sizes.
    raise RuntimeError("could not place two non-overlapping objects in 100 attempts")


# ---------------------------------------------------------------------------------------------------
# Captions
#
# Each template is a different sentence structure; per caption the words for size, shape and position
# are drawn from small synonym lists that parse_prompt maps back. Colour words are never varied, so a
# captioner that names the wrong colour always loses n-gram matches.

_SIZE_ADJ = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
_SIZE_PLAIN = {"small": ("small",), "large": ("large", "big")}  # after "quite" / "of ... size"
_SHAPE_NOUN = {
    "circle": ("circle", "circle", "disc", "ball"),
    "square": ("square", "square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "diamond", "rhombus"),
}
_SHAPE_ADJ = {
    "circle": ("round", "circular"),
    "square": ("square",),
    "triangle": ("triangular",),
    "diamond": ("diamond",),
}
# "where" phrases, each usable in several frames: "<noun> ON_SIDE", "placed SHORT", "... EDGE".
_ON_SIDE = {
    "left": ("on the left side", "on the left"),
    "right": ("on the right side", "on the right"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the middle", "in the center"),
}
_SHORT = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center",),
}
_EDGE = {
    "left": ("near the left edge",),
    "right": ("near the right edge",),
    "top": ("near the top edge",),
    "bottom": ("near the bottom edge",),
    "center": ("close to the center",),
}
_PART = {"left": "left", "right": "right", "top": "upper", "bottom": "lower", "center": "central"}


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _single_templates(rng: random.Random, obj: ShapeObject, bg: str) -> list[str]:
    """All single-object sentence structures, each with freshly drawn synonyms."""
    c, p = obj.color, obj.position

    def z() -> str:
        return _pick(rng, _SIZE_ADJ[obj.size])

    def s() -> str:
        return _pick(rng, _SHAPE_NOUN[obj.shape])

    return [
        f"a {z()} {c} {s()} {_pick(rng, _ON_SIDE[p])} of a {bg} background",
        f"there is a {z()} {c} {s()} {_EDGE[p][0]}",
        f"the picture shows one {c} {s()} , {z()} , placed {_SHORT[p][0]}",
        f"{_pick(rng, _ON_SIDE[p])} sits a {z()} {s()} colored {c}",
        f"a {z()} {c} {_pick(rng, _SHAPE_ADJ[obj.shape])} shape in the {_PART[p]} part of the image",
        f"{c} {s()} , {z()} , against a {bg} background , {_SHORT[p][0]}",
        f"you can see a {c} {s()} that is quite {_pick(rng, _SIZE_PLAIN[obj.size])} , located {_SHORT[p][0]}",
        f"a {bg} background with a {z()} {c} {s()} {_pick(rng, _ON_SIDE[p])}",
        f"the {z()} {s()} {_SHORT[p][0]} is {c}",
    ]


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, from their anchors (not the jittered centres)."""
    (ax, ay), (bx, by) = POSITIONS[a.position], POSITIONS[b.position]
    vertical = "above" if ay < by else "below" if ay > by else ""
    horizontal = "to the left of" if ax < bx else "to the right of" if ax > bx else ""
    return " and ".join(word for word in (vertical, horizontal) if word)


def _pair_templates(rng: random.Random, a: ShapeObject, b: ShapeObject, bg: str) -> list[str]:
    """All two-object sentence structures; ``a`` is mentioned first."""

    def z(o: ShapeObject) -> str:
        return _pick(rng, _SIZE_ADJ[o.size])

    def s(o: ShapeObject) -> str:
        return _pick(rng, _SHAPE_NOUN[o.shape])

    def short(o: ShapeObject) -> str:
        return _SHORT[o.position][0]

    # The shorter way to tell the two apart in "the X one is ... the Y one".
    if a.color != b.color:
        name_a, name_b = f"the {a.color} one", f"the {b.color} one"
    else:
        name_a, name_b = f"the {a.shape}", f"the {b.shape}"
    rel = _relation(a, b)
    lead_a, lead_b = _pick(rng, _ON_SIDE[a.position]), _pick(rng, _ON_SIDE[b.position])
    return [
        f"a {z(a)} {a.color} {s(a)} {short(a)} and a {z(b)} {b.color} {s(b)} {short(b)}",
        f"a {z(a)} {a.color} {s(a)} {rel} a {z(b)} {b.color} {s(b)} on a {bg} background",
        f"two shapes on a {bg} background : a {a.color} {s(a)} {short(a)} and a {b.color} {s(b)} {short(b)}",
        f"there are two objects , the {a.color} {s(a)} is {short(a)} while the {b.color} {s(b)} is {short(b)}",
        f"{lead_a} is a {z(a)} {a.color} {s(a)} and {lead_b} a {z(b)} {b.color} {s(b)}",
        f"the picture shows a {a.color} {s(a)} and a {b.color} {s(b)} , {name_a} is {rel} {name_b}",
        f"a {bg} background with a {z(a)} {a.color} {s(a)} {rel} a {z(b)} {b.color} {s(b)}",
    ]


def scene_captions(scene: ShapesScene, rng: random.Random) -> list[str]:
    """Five distinct lower-case captions of ``scene``, each from a different sentence structure.

    Every caption names each object's colour (the ``COLORS`` word), its shape (a ``SHAPE_WORDS`` word)
    and its position (a ``POSITION_WORDS`` word, or for two objects possibly a relation such as "to the
    left of"). Single-object captions always name the size too. Punctuation is space-separated like
    Flickr8k's, so whitespace tokenisation gives words.
    """
    bg = BACKGROUNDS[scene.background].phrase
    if len(scene.objects) == 1:
        captions = rng.sample(_single_templates(rng, scene.objects[0], bg), 5)
    else:
        captions = []
        for index in rng.sample(range(7), 5):
            # Which object is mentioned first varies per caption, as it would between human annotators.
            a, b = scene.objects if rng.random() < 0.5 else scene.objects[::-1]
            captions.append(_pair_templates(rng, a, b, bg)[index])
    # "a orange square" -> "an orange square"; no other vocabulary word starts with a vowel.
    return [re.sub(r"\ba (?=[aeiou])", "an ", caption) for caption in captions]


def parse_prompt(text: str) -> dict[str, str | None]:
    """Recover ``color``, ``shape``, ``size`` and ``position`` from a caption or prompt.

    Each value is the canonical vocabulary name (``COLORS`` key, ``SHAPES`` item, ``SIZES`` key,
    ``POSITIONS`` key) of the first word of its kind in ``text``, or ``None`` when no such word occurs.
    Meant for single-object prompts; in two-object captions it reports the first object mentioned.
    """
    found: dict[str, str | None] = {"color": None, "shape": None, "size": None, "position": None}
    for word in re.findall(r"[a-z]+", text.lower()):
        for key, table in (
            ("color", COLOR_WORDS),
            ("shape", SHAPE_WORDS),
            ("size", SIZE_WORDS),
            ("position", POSITION_WORDS),
        ):
            if found[key] is None and word in table:
                found[key] = table[word]
    return found


def sample_single_object_prompts(
    n: int, seed: int, image_size: int = 64, style: str = "plain"
) -> list[tuple[str, ShapesScene]]:
    """``n`` single-object ``(prompt, scene)`` pairs for checking text-to-image models.

    The prompt is one of the scene's five captions, so colour, shape, size and position can be read back
    with :func:`parse_prompt` and compared with the scene (or with ``render_scene(scene)``).
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        scene = sample_scene(rng, image_size, max_objects=1, style=style)
        pairs.append((_pick(rng, scene_captions(scene, rng)), scene))
    return pairs


# ---------------------------------------------------------------------------------------------------
# Writing and reading a dataset folder

SCENES_FILE = "scenes.jsonl"


def image_name(index: int) -> str:
    """File name of the ``index``-th picture, e.g. ``shapes_000042.png``."""
    return f"shapes_{index:06d}.png"


def generate_shapes_dataset(
    out: str | Path,
    n: int,
    seed: int,
    size: int = 64,
    max_objects: int = 2,
    style: str = "plain",
    progress: bool = False,
) -> Path:
    """Write ``n`` pictures, their captions and ground truth to ``out`` (see the module docstring).

    Existing files of an earlier Shapes run in ``out`` are overwritten. Refuses (``FileExistsError``) to
    write into a folder whose ``captions.txt`` did not come from this generator, so a real dataset is
    never clobbered. Returns ``out`` as a ``Path``.
    """
    _check_arguments(n, size, max_objects, style)
    out = Path(out)
    if (out / CAPTIONS_FILE).exists() and not (out / SCENES_FILE).exists():
        raise FileExistsError(
            f"{out / CAPTIONS_FILE} exists and is not from a Shapes run (no {SCENES_FILE}); choose an empty --out"
        )
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    indices: Iterable[int] = range(n)
    if progress:
        try:
            from tqdm import tqdm  # optional nicety

            indices = tqdm(indices, desc="shapes", unit="img")
        except ImportError:
            pass
    with (out / SCENES_FILE).open("w", encoding="utf-8") as scenes_file:
        for index in indices:
            scene = sample_scene(rng, size, max_objects, style)
            name = image_name(index)
            render_scene(scene).save(images_dir / name, format="PNG")
            rows.extend((name, caption) for caption in scene_captions(scene, rng))
            scenes_file.write(json.dumps({"file": name, **scene.to_json()}) + "\n")
    write_captions_txt(out / CAPTIONS_FILE, rows)
    return out


def load_scenes(folder: str | Path) -> dict[str, ShapesScene]:
    """The ground truth written by :func:`generate_shapes_dataset`: image file name -> scene."""
    path = Path(folder) / SCENES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; generate the folder with `python -m mmdemo.data.shapes --out DIR`"
        )
    scenes: dict[str, ShapesScene] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                scenes[record["file"]] = ShapesScene.from_json(record)
    return scenes


NO_OBJECT = "<none>"  # the label of an empty position
LABELLED_ATTRIBUTES = ("color", "shape", "size")


def scene_labels(scenes: Iterable[ShapesScene]) -> tuple[list[list[int]], dict[str, list[str]]]:
    """What a vision encoder pretrained to recognise scenes predicts: per scene, for each of ``POSITIONS`` the
    class ids of its object's colour, shape and size (``NO_OBJECT`` where the position is empty), then the
    background's; and the classes, by attribute (``"bg"``: the background)."""
    classes = {a: [NO_OBJECT, *values] for a, values in zip(LABELLED_ATTRIBUTES, (COLORS, SHAPES, SIZES))}
    classes["bg"] = list(BACKGROUNDS)
    rows = []
    for scene in scenes:
        by_position = {o.position: o for o in scene.objects}
        row = []
        for position in POSITIONS:
            obj = by_position.get(position)
            row += [classes[a].index(getattr(obj, a) if obj else NO_OBJECT) for a in LABELLED_ATTRIBUTES]
        rows.append([*row, classes["bg"].index(scene.background)])
    return rows, classes


def _check_arguments(n: int, size: int, max_objects: int, style: str) -> None:
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels (shapes are unreadable below), got {size}")
    if max_objects not in (1, 2):
        raise ValueError(f"--max-objects must be 1 or 2, got {max_objects}")
    if style not in STYLES:
        raise ValueError(f"--style must be one of {', '.join(STYLES)}, got {style!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the Shapes dataset in the Flickr8k Kaggle layout.")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (Images/, captions.txt, scenes.jsonl)"
    )
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="everything is a function of this seed")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (>= 16)")
    parser.add_argument(
        "--max-objects", type=int, default=2, choices=(1, 2), help="objects per image at most"
    )
    parser.add_argument("--style", default="plain", choices=STYLES, help="background family")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    _check_arguments(args.n, args.size, args.max_objects, args.style)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = generate_shapes_dataset(
        args.out, args.n, args.seed, args.size, args.max_objects, args.style, progress=not args.no_progress
    )
    print(f"wrote {args.n} images and {5 * args.n} captions to {out}")


if __name__ == "__main__":
    main()
