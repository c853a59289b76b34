"""A static comparison gallery: one HTML page (prompt x model grid) and a CSV, for sharing without the app.

:func:`write_gallery` writes ``gallery.html`` and ``gallery.csv`` into a folder. The page needs no server
and no network: pictures are inlined as ``data:`` URIs (or, for large runs, linked as files beside the page),
every cell names the picture's seed, its generation time and its alignment score, and a few lines of inline
JavaScript sort the prompts by any model's score (or by prompt order again).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INLINE_AT_MOST = 400  # pictures; above this the page links the PNG files beside it instead


@dataclass(frozen=True)
class GalleryCell:
    """One generated picture: which prompt (and prompt index), model and seed; its file, time and score."""

    prompt_index: int
    prompt: str
    model: str
    seed: int
    file: Path | None  # None: the model failed on this prompt, ``error`` says why
    seconds: float | None
    score: float | None
    score_name: str = ""
    error: str = ""


def _image_src(path: Path, page_dir: Path, inline: bool) -> str:
    if inline:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return html.escape(path.resolve().relative_to(page_dir.resolve()).as_posix(), quote=True)


_SCRIPT = """
function sortBy(model) {
  const body = document.querySelector("#grid tbody");
  const rows = Array.from(body.rows);
  const key = (row) => {
    if (model === null) return Number(row.dataset.index);
    const value = row.dataset["score" + model];
    return value === "" || value === undefined ? Infinity : -Number(value);  // best first, unscored last
  };
  rows.sort((a, b) => key(a) - key(b) || Number(a.dataset.index) - Number(b.dataset.index));
  rows.forEach((row) => body.appendChild(row));
  document.querySelectorAll("th button").forEach((b) => b.classList.toggle("active", b.dataset.model === String(model)));
}
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: center; }
td.prompt { text-align: left; max-width: 18em; }
img { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.meta { font-size: 12px; color: #555; }
.error { color: #a00; font-size: 12px; max-width: 160px; }
button.active { font-weight: bold; }
"""


def write_gallery(
    folder: str | Path,
    cells: Sequence[GalleryCell],
    models: Sequence[str],
    *,
    title: str = "Text-to-image comparison",
    summary: dict[str, dict] | None = None,
    command: str = "",
    inline: bool | None = None,
) -> tuple[Path, Path]:
    """Write ``folder/gallery.html`` and ``folder/gallery.csv``; returns both paths.

    Args:
        cells: every picture (several seeds of one prompt and model become several pictures in one cell).
        models: the column order.
        summary: per model, the headline scores shown under its name (e.g. ``{"shape_acc": ...}``).
        command: the command that made the run, printed on the page.
        inline: embed the pictures as data URIs; default: when there are at most ``INLINE_AT_MOST``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = list(models)
    cells = [c for c in cells if c.model in models]  # the columns asked for, in their order
    pictures = [c for c in cells if c.file is not None]
    inline = len(pictures) <= INLINE_AT_MOST if inline is None else inline
    prompts: dict[int, str] = {}
    for cell in sorted(cells, key=lambda c: c.prompt_index):
        prompts.setdefault(cell.prompt_index, cell.prompt)
    by_slot: dict[tuple[int, str], list[GalleryCell]] = {}
    for cell in cells:
        by_slot.setdefault((cell.prompt_index, cell.model), []).append(cell)

    head = "".join(
        f'<th>{html.escape(m)}<br><button data-model="{i}" onclick="sortBy({i})">sort by score</button>'
        + (
            f'<div class="meta">{html.escape(", ".join(f"{k} {v}" for k, v in summary[m].items()))}</div>'
            if summary and m in summary
            else ""
        )
        + "</th>"
        for i, m in enumerate(models)
    )
    rows = []
    for index, prompt in prompts.items():
        tds, data = [], []
        for i, model in enumerate(models):
            slot = sorted(by_slot.get((index, model), []), key=lambda c: c.seed)
            scores = [c.score for c in slot if c.score is not None]
            data.append(f'data-score{i}="{sum(scores) / len(scores) if scores else ""}"')
            parts = []
            for cell in slot:
                if cell.file is None:
                    parts.append(f'<div class="error">seed {cell.seed}: {html.escape(cell.error)}</div>')
                    continue
                score = "-" if cell.score is None else f"{cell.score:.3g}"
                seconds = "-" if cell.seconds is None else f"{cell.seconds:.2f} s"
                parts.append(
                    f'<figure><img alt="{html.escape(model)} seed {cell.seed}" '
                    f'src="{_image_src(folder / cell.file, folder, inline)}">'
                    f'<figcaption class="meta">seed {cell.seed} · {seconds} · '
                    f'<span title="{html.escape(cell.score_name)}">score {score}</span></figcaption></figure>'
                )
            tds.append(f"<td>{''.join(parts) or '-'}</td>")
        rows.append(
            f'<tr data-index="{index}" {" ".join(data)}><td class="prompt">{index}. {html.escape(prompt)}</td>'
            + "".join(tds)
            + "</tr>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body><h1>{html.escape(title)}</h1>
<p class="meta">{len(prompts)} prompts × {len(models)} models, {len(pictures)} pictures.
<code>{html.escape(command)}</code></p>
<p><button data-model="null" onclick="sortBy(null)">prompt order</button></p>
<table id="grid"><thead><tr><th>prompt</th>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<script>window.galleryData = {json.dumps({"models": list(models), "prompts": len(prompts)})};</script>
</body></html>
"""
    page_path = folder / "gallery.html"
    page_path.write_text(page, encoding="utf-8")
    csv_path = folder / "gallery.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["prompt_index", "prompt", "model", "seed", "file", "seconds", "score", "score_name", "error"]
        )
        for c in sorted(cells, key=lambda c: (c.prompt_index, models.index(c.model), c.seed)):
            writer.writerow(
                [c.prompt_index, c.prompt, c.model, c.seed, c.file.as_posix() if c.file else "",
                 "" if c.seconds is None else c.seconds, "" if c.score is None else c.score,
                 c.score_name, c.error]
            )  # fmt: skip
    return page_path, csv_path
