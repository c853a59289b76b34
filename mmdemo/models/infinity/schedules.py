"""Scale schedules of Infinity: which token grids are predicted, coarse to fine, for a shape and budget.

Infinity predicts an image as a sequence of residual bit maps of growing size. The grids depend on the
aspect ratio (one table per height/width "template") and on the pixel budget: 0.06M uses the first 7
grids of a table, 0.25M the first 10, 0.60M the first 12 and 1M all 13. One latent token covers a
16x16 pixel patch in the official VAE, so the 1:1 table ends at 64x64 tokens = 1024x1024 pixels.

The tables are the upstream ones (facts from FoundationVision/Infinity ``dynamic_resolution.py``);
templates below 1 are the transposed tables of their reciprocal.
"""

from __future__ import annotations

from dataclasses import dataclass

# h/w template -> the (h, w) token grid of each of the 13 scales.
_TALL_TABLES: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: (
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ),
    1.250: (
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ),
    1.333: (
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ),
    1.500: (
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ),
    1.750: (
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ),
    2.000: (
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ),
    2.500: (
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ),
    3.000: (
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ),
}


def _all_tables() -> dict[float, tuple[tuple[int, int], ...]]:
    tables = dict(_TALL_TABLES)
    for ratio, grids in _TALL_TABLES.items():
        if ratio != 1.0:
            # Upstream truncates 1/ratio to three decimals (0.8, 0.75, 0.666, 0.571, 0.5, 0.4, 0.333).
            tables[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return dict(sorted(tables.items()))


TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = _all_tables()
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(TEMPLATES)
# Number of scales per pixel budget for the official model (a prefix of each table).
OFFICIAL_BUDGET_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
PIXEL_BUDGETS: tuple[str, ...] = ("0.06M", "0.25M", "1M")  # the ones offered to users


@dataclass(frozen=True)
class Schedule:
    """One generation's token grids.

    Args:
        template: the h/w template used.
        scales: ``(h, w)`` token grid per scale, coarse to fine (the first is always ``(1, 1)``).
        rope_grid: the final grid of the template's largest schedule; 2D RoPE positions of every scale are
            spread over this grid, so a smaller budget reuses the positions of the full-size one.
        stride: pixels per latent token of the VAE.
    """

    template: float
    scales: tuple[tuple[int, int], ...]
    rope_grid: tuple[int, int]
    stride: int

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.scales)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        h, w = self.scales[-1]
        return h * self.stride, w * self.stride


def nearest_template(h_div_w: float) -> float:
    """The template closest to ``h_div_w`` (absolute difference, as upstream)."""
    if not h_div_w > 0:
        raise ValueError(f"aspect ratio (height / width) must be positive, got {h_div_w!r}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(t - h_div_w))


def get_schedule(
    h_div_w: float, pixel_budget: str, budget_scales: dict[str, int], stride: int = 16
) -> Schedule:
    """The schedule for an aspect ratio (snapped to the nearest template) and a pixel budget.

    ``budget_scales`` maps each budget name to how many scales of the template table it uses (the official
    model: :data:`OFFICIAL_BUDGET_SCALES`; the tiny demo model has its own, smaller numbers).
    """
    if pixel_budget not in budget_scales:
        raise ValueError(f"unknown pixel budget {pixel_budget!r}; choose one of {', '.join(budget_scales)}")
    template = nearest_template(h_div_w)
    table = TEMPLATES[template]
    count = budget_scales[pixel_budget]
    largest = max(budget_scales.values())
    if not 1 <= count <= len(table) or largest > len(table):
        raise ValueError(f"budget {pixel_budget!r} asks for {count} scales; templates have {len(table)}")
    return Schedule(template, table[:count], table[largest - 1], stride)


def full_size_rope_grid(scales: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The grid the official model spreads RoPE positions over for ``scales``: its template's 1M grid.

    Upstream builds one RoPE table per template from the template's 1M schedule (its 13th scale) and looks it
    up for every budget of that template, so a 0.06M picture uses the positions of the matching 1M patches.
    ``scales`` must be the start of exactly one template's table (every official schedule is).
    """
    scales = tuple(tuple(s) for s in scales)
    matches = [table[-1] for table in TEMPLATES.values() if table[: len(scales)] == scales]
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        raise ValueError(
            f"scales {list(scales)} begin {found} template tables; pass rope_grid explicitly "
            "(Schedule.rope_grid from get_schedule)"
        )
    return matches[0]


def parse_aspect_ratio(
    value: str | float | None, width: int | None = None, height: int | None = None
) -> float:
    """Height / width from ``"16:9"``-style text (width:height), a number (h/w), or width and height."""
    if value is None or value == "":
        if width and height:
            return float(height) / float(width)
        return 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ratio = float(value)
    elif isinstance(value, str) and ":" in value:
        left, _, right = value.partition(":")
        try:
            w, h = float(left), float(right)
        except ValueError:
            raise ValueError(f"aspect ratio {value!r} is not of the form W:H, e.g. 16:9") from None
        if not (w > 0 and h > 0):
            raise ValueError(f"aspect ratio {value!r} needs two positive numbers")
        ratio = h / w
    else:
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"aspect ratio {value!r} is not a number or W:H text") from None
    if not (ratio > 0 and ratio < float("inf")):
        raise ValueError(f"aspect ratio (height / width) must be a positive finite number, got {value!r}")
    return ratio


def describe_template(template: float) -> str:
    """A template as people read it: ``"1:1"``, ``"4:3"`` (width:height)."""
    h, w = TEMPLATES[template][-1]
    from math import gcd

    g = gcd(h, w)
    return f"{w // g}:{h // g}"
