"""The About tab: the report's tables beside our measured numbers, parameter counts, model cards.

Our numbers are read from the JSON records shipped next to each checkpoint (``eval_*.json``, written by
the evaluation scripts with ``--update-shipped``), never typed in by hand; each row says which command,
seed and n produced it, and the 95 % bootstrap intervals the scripts recorded.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import gradio as gr

from mmdemo.registry import CAPTIONER_IDS, REGISTRY
from mmdemo.runtime import BUILD_LOCK
from mmdemo.weights import REPO_ROOT, checkpoint_root


def measured_results(model_id: str) -> list[dict]:
    """Every ``eval_*.json`` under the model's demo and full checkpoint folders, with where it came from."""
    results = []
    for folder, profile in (
        (checkpoint_root() / "demo" / model_id, "demo"),
        (checkpoint_root() / model_id, "full"),
    ):
        for path in sorted(folder.glob("eval_*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):
                results.append({"profile": profile, "file": path.name, **data})
    return results


CAPTION_HEADERS = ["model", "report BLEU-1/2/3/4", "ours BLEU-1/2/3/4", "BLEU-4 (95 % interval)", "METEOR",
                   "ROUGE-L", "CIDEr-D", "measured by"]  # fmt: skip
GENERATOR_HEADERS = ["model", "report settings", "ours (ShapesEval)", "95 % intervals", "measured by"]


def _provenance(record: dict) -> str:
    """Which command, seed and n produced a record (older records name only their file)."""
    where = f"{record['profile']}: {record['file']}"
    command = record.get("command")
    seed = f", seed {record['seed']}" if record.get("seed") is not None else ""
    return f"{where}, n={record.get('n')}{seed}" + (f": `{command}`" if command else "")


def _ci(record: dict, key: str, digits: int = 1) -> str:
    from mmdemo.eval.bootstrap import with_interval

    return with_interval(record.get(key), record.get("intervals", {}).get(key), digits)


def caption_table() -> list[list]:
    rows = []
    for model_id in CAPTIONER_IDS:
        spec = REGISTRY[model_id]
        report = spec.report.bleu
        report_text = " / ".join(f"{v:.1f}" for v in report) if report else "-"
        measured = [r for r in measured_results(model_id) if "bleu4" in r]
        if not measured:
            rows.append([spec.display_name, report_text, "-", "-", "-", "-", "-", "not measured yet"])
        for r in measured:
            ours = " / ".join(f"{r[f'bleu{n}']:.1f}" for n in range(1, 5))
            rows.append([spec.display_name, report_text, ours, _ci(r, "bleu4"), _ci(r, "meteor"),
                         _ci(r, "rouge_l"), _ci(r, "cider"), _provenance(r)])  # fmt: skip
    return rows


def generator_table() -> list[list]:
    rows = []
    for model_id, spec in REGISTRY.items():
        if spec.kind != "generator":
            continue
        measured = [r for r in measured_results(model_id) if "color_acc" in r or "clip_score" in r]
        if not measured:
            rows.append([spec.display_name, spec.report.settings or "-", "-", "-", "not measured yet"])
        for r in measured:
            if "color_acc" in r:
                ours = f"colour {r['color_acc']:.2f} · shape {r['shape_acc']:.2f} · position {r['position_acc']:.2f}"
                keys = ("color_acc", "shape_acc", "position_acc")
            else:
                ours, keys = f"CLIP score {r['clip_score']:.2f}", ("clip_score",)
            keys += tuple(k for k in ("fid", "kid") if r.get(k) is not None)
            intervals = " · ".join(f"{k}: {_ci(r, k, 2)}" for k in keys) if r.get("intervals") else "-"
            rows.append([spec.display_name, spec.report.settings or "-", ours, intervals, _provenance(r)])
    return rows


def comparisons() -> list[str]:
    """Do two models' 95 % intervals overlap? BLEU-4 for captioners, ShapesEval shape accuracy for generators
    (records measured the same way only: same dataset/preset and n)."""
    from mmdemo.eval.bootstrap import compare

    lines = []
    for ids, key, group in (
        (CAPTIONER_IDS, "bleu4", ("profile", "dataset", "n")),
        ([m for m, s in REGISTRY.items() if s.kind == "generator"], "shape_acc", ("profile", "preset", "n")),
    ):
        records = [(m, r) for m in ids for r in measured_results(m) if r.get("intervals", {}).get(key)]
        for i, (a, ra) in enumerate(records):
            for b, rb in records[i + 1 :]:
                if a != b and all(ra.get(g) == rb.get(g) for g in group):
                    lines.append(
                        f"{key}: "
                        + compare(a, ra[key], ra["intervals"][key], b, rb[key], rb["intervals"][key])
                    )
    return lines


def latest_gallery() -> Path | None:
    """The newest comparison gallery (``train/evaluate_generator.py --models ...``) under ``runs/``."""
    root = Path(os.environ.get("MMDEMO_RUNS", REPO_ROOT / "runs"))
    pages = [p for pattern in ("gallery.html", "*/gallery.html", "*/*/gallery.html", "*/*/*/gallery.html")
             for p in root.glob(pattern)]  # fmt: skip
    return max(pages, key=lambda p: p.stat().st_mtime) if pages else None


@functools.cache
def param_table() -> list[list]:
    """Built once per process: full-size models on the meta device (a few seconds, nothing downloaded)."""
    from mmdemo.params import param_row

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value / 1e6:,.1f}M"

    rows = []
    for spec in REGISTRY.values():
        try:
            with BUILD_LOCK:  # not at the same time as a model load (see BUILD_LOCK)
                row = param_row(spec)
        except Exception as err:  # noqa: BLE001 - one broken build must not hide the others
            rows.append(
                [
                    spec.id,
                    "-",
                    "-",
                    fmt(spec.report.total_params),
                    fmt(spec.report.trainable_params),
                    str(err),
                ]
            )
            continue
        rows.append(
            [
                row.id,
                fmt(row.total),
                fmt(row.trainable),
                fmt(row.report_total),
                fmt(row.report_trainable),
                row.note,
            ]
        )
    return rows


def model_card(model_id: str, in_use: str | None) -> str:
    spec = REGISTRY[model_id]
    sources = "\n".join(
        f"- {s.role}: `{s.repo_id}`{'/' + s.subfolder if s.subfolder else ''}" for s in spec.sources
    )
    text = (
        f"### {spec.display_name} (`{spec.id}`)\n{spec.description}\n\n**Licence:** {spec.licence}\n\n"
        f"**Weights in use:** {in_use or 'unavailable'}\n\n"
        f"**Full-size sources:**\n{sources}\n"
    )
    card = checkpoint_root() / "demo" / model_id / "README.md"
    if card.is_file():
        text += f"\n<details><summary>Demo checkpoint card</summary>\n\n{card.read_text()}\n\n</details>\n"
    return text


def training_curves() -> list[tuple[str, str]]:
    curves = []
    for model_id in REGISTRY:
        for path in sorted((checkpoint_root() / "demo" / model_id).glob("*loss*.png")):
            curves.append((str(path), f"{model_id}: {path.stem}"))
    return curves


def create_about_tab(ctx) -> gr.Dataframe:
    """Builds the tab; returns the parameter table, which ``build_app`` fills once the page has loaded
    (counting parameters imports every model family: not something to do before the server is up)."""
    gr.Markdown(
        "Numbers below come from the course report (Tables 1 and 2) and from the JSON files our evaluation "
        "scripts write (`train/evaluate_captioner.py`, `train/evaluate_generator.py`). Demo numbers are measured "
        "on the Shapes dataset with tiny models: they prove the pipelines learn, they are not comparable to "
        "the report's Flickr8k numbers."
    )
    gr.Markdown(
        "### Image → Text (report: Flickr8k validation split)\n"
        "BLEU as the report computed it; METEOR, ROUGE-L and CIDEr-D from the COCO caption evaluation code "
        "(pycocoevalcap), all 0-100, each with its 95 % bootstrap interval over images. SPICE is not shown: "
        "it needs Stanford CoreNLP models downloaded on first use."
    )
    gr.Dataframe(caption_table(), headers=CAPTION_HEADERS, wrap=True)
    gr.Markdown("### Text → Image (95 % bootstrap intervals over prompts)")
    gr.Dataframe(generator_table(), headers=GENERATOR_HEADERS, wrap=True)
    lines = comparisons()
    if lines:
        gr.Markdown("**Do the intervals overlap?**\n\n" + "\n".join(f"- {line}" for line in lines))
    gallery = latest_gallery()
    if gallery is not None:
        gr.Markdown(
            f"**Latest comparison gallery:** `{gallery}` (a self-contained page: open it in a browser; "
            "made by `train/evaluate_generator.py --models ...`)"
        )
        gr.File(value=str(gallery), label="gallery.html", interactive=False)
    gr.Markdown("### Parameters (full-size configurations, built on the meta device)")
    params = gr.Dataframe(
        headers=["model", "total", "trainable", "report total", "report trainable", "note"], wrap=True
    )
    curves = training_curves()
    if curves:
        gr.Markdown("### Training curves (demo checkpoints)")
        gr.Gallery(curves, columns=4, height=300, label="Loss curves")
    gr.Markdown("### Model cards")
    for model_id in REGISTRY:
        with gr.Accordion(REGISTRY[model_id].display_name, open=False):
            gr.Markdown(model_card(model_id, ctx.weights_note(model_id)))
    return params
