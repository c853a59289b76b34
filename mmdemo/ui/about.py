"""The About tab: the report's tables beside our measured numbers, parameter counts, model cards.

Our numbers are read from the JSON files our evaluation scripts write next to each checkpoint
(``eval_*.json``), never typed in by hand.
"""

from __future__ import annotations

import functools
import json

import gradio as gr

from mmdemo.registry import CAPTIONER_IDS, REGISTRY
from mmdemo.weights import checkpoint_root


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


def caption_table() -> list[list]:
    rows = []
    for model_id in CAPTIONER_IDS:
        spec = REGISTRY[model_id]
        report = spec.report.bleu
        report_text = " / ".join(f"{v:.1f}" for v in report) if report else "-"
        measured = [r for r in measured_results(model_id) if "bleu4" in r]
        if not measured:
            rows.append([spec.display_name, report_text, "-", "not measured yet"])
        for r in measured:
            ours = " / ".join(f"{r[f'bleu{n}']:.1f}" for n in range(1, 5))
            rows.append(
                [
                    spec.display_name,
                    report_text,
                    ours,
                    f"{r['profile']}: {r.get('data', r['file'])}, n={r.get('n')}",
                ]
            )
    return rows


def generator_table() -> list[list]:
    rows = []
    for model_id, spec in REGISTRY.items():
        if spec.kind != "generator":
            continue
        measured = [r for r in measured_results(model_id) if "color_acc" in r]
        if not measured:
            rows.append([spec.display_name, spec.report.settings or "-", "-", "not measured yet"])
        for r in measured:
            ours = (
                f"colour {r['color_acc']:.2f} · shape {r['shape_acc']:.2f} · position {r['position_acc']:.2f}"
            )
            rows.append(
                [
                    spec.display_name,
                    spec.report.settings or "-",
                    ours,
                    f"{r['profile']}: {r['file']}, n={r.get('n')}",
                ]
            )
    return rows


@functools.cache
def param_table() -> list[list]:
    """Built once per process: full-size models on the meta device (a few seconds, nothing downloaded)."""
    from mmdemo.params import param_row

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value / 1e6:,.1f}M"

    rows = []
    for spec in REGISTRY.values():
        try:
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
    gr.Markdown("### Image → Text: BLEU-1/2/3/4 (report: Flickr8k validation split)")
    gr.Dataframe(caption_table(), headers=["model", "report", "ours", "measured on"], wrap=True)
    gr.Markdown("### Text → Image")
    gr.Dataframe(
        generator_table(), headers=["model", "report settings", "ours (ShapesEval)", "measured on"], wrap=True
    )
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
            gr.Markdown(model_card(model_id, ctx.availability.get(model_id)))
    return params
