"""Image → Text views beyond one caption per model: scored candidate captions, and where a captioner looked
for each word of a caption (a heatmap over the picture when a word is clicked).

Wiring only: the captioners come from the registry's list and every score, word and map from the service
(:mod:`mmdemo.service`, :mod:`mmdemo.attention`); whether a model can show where it looked is its own answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from mmdemo import attention, inputs
from mmdemo.interfaces import MAX_CANDIDATES
from mmdemo.registry import CAPTIONER_IDS, REGISTRY
from mmdemo.runtime import OutOfMemory
from mmdemo.ui.handlers import AppContext, caption_gpu_seconds, on_gpu
from mmdemo.weights import WeightsUnavailable

CANDIDATE_HEADERS = ["model", "rank", "candidate caption", "mean log-prob", "ITM match"]
SCORE_NOTE = (
    "**Mean log-prob**: the mean natural-log probability per token of the candidate (its words and end mark) "
    "under the model, from one teacher-forced pass through its decoder; closer to 0 is more likely. Candidates "
    "are the model's caption and the best others of a beam search (n-best). **ITM match**: the probability that "
    "the caption matches the picture from an image-text match head, where the model has one loaded (`-`: none, "
    "as for every demo-weight model; then the log-probability is the only score shown)."
)
ATTENTION_INTRO = (
    "Pick a captioner, then click a word of its caption to see the image regions it attended to when it wrote "
    "that word (brighter = more weight). Paste any caption, such as one of the candidates, to see it explained."
)


def candidates_field() -> gr.Number:
    """The ``candidates`` input of ``/caption``: deliberately without a range or rounding, so that a wrong value
    (0, 6, 2.5) reaches our own check, one message naming the value, instead of Gradio's generic one or a
    silent rounding."""
    return gr.Number(
        value=1,
        step=1,
        label="Candidates per captioner",
        info=f"1 to {MAX_CANDIDATES}: that many scored captions per model (beam search n-best) below the table",
        elem_id="caption-candidates",
    )


def candidate_rows(records: list[dict[str, Any]] | None) -> Any:
    """The candidates table (hidden while every record has at most one candidate: the default view)."""
    rows = [
        [
            REGISTRY[record["model"]].display_name if record["model"] in REGISTRY else record["model"],
            rank,
            candidate["caption"],
            candidate["mean_logprob"],
            "-" if candidate.get("match") is None else f"{candidate['match']:.3f}",
        ]
        for record in records or []
        for rank, candidate in enumerate(record.get("candidates") or [], 1)
    ]
    several = any(len(record.get("candidates") or []) > 1 for record in records or [])
    return gr.update(value=rows, visible=several), gr.update(visible=several)


@dataclass
class AttentionInputs:
    model: gr.Dropdown
    caption: gr.Textbox
    words: gr.Radio
    heatmap: gr.Image
    note: gr.Markdown


def attention_handlers(ctx: AppContext):
    """(words for a caption, one word's map, the ``/attention`` endpoint), sharing one cached model run."""

    def view(image: str | None, model: str, caption: str | None, word: Any) -> attention.AttentionView:
        try:
            return attention.caption_attention(ctx.manager, image, model, caption, word)
        except (inputs.InputError, WeightsUnavailable, OutOfMemory) as err:  # each says what to do
            raise gr.Error(str(err)) from None

    @on_gpu(caption_gpu_seconds, lambda image=None, model=None, *a, **k: ctx.prepare([model]))
    def words_for(image: str | None, model: str, caption: str | None):
        """The caption explained and its words to click; the map waits for a click."""
        if not image or model not in CAPTIONER_IDS:
            return gr.update(), gr.update(choices=[], value=None), None, ""
        shown = view(image, model, caption, 0)
        choices = [(word, index) for index, word in enumerate(shown.words)]
        return shown.caption, gr.update(choices=choices, value=None), None, shown.note

    @on_gpu(caption_gpu_seconds, lambda image=None, model=None, *a, **k: ctx.prepare([model]))
    def show(image: str | None, model: str, caption: str | None, word: Any):
        """Where ``model`` looked for word number ``word`` (0 = the first) of ``caption`` (blank: its own caption):
        the heatmap over the picture, the caption's words with the map's grid, and what the map is."""
        shown = view(image, model, caption, word)
        return shown.overlay, shown.as_dict(), shown.note

    return words_for, show


def caption_of(records: list[dict[str, Any]] | None, model: str) -> str:
    """``model``'s caption in the records of the last run (empty when it has none)."""
    for record in records or []:
        if record.get("model") == model and record.get("caption"):
            return str(record["caption"])
    return ""


def create_candidates_table() -> tuple[gr.Dataframe, gr.Markdown]:
    table = gr.Dataframe(
        headers=CANDIDATE_HEADERS,
        datatype=["str", "number", "str", "number", "str"],
        label="Candidate captions with scores",
        wrap=True,
        column_widths=["17%", "7%", "50%", "13%", "13%"],
        visible=False,
        interactive=False,
        elem_id="caption-candidates-table",
    )
    note = gr.Markdown(SCORE_NOTE, visible=False)
    return table, note


def create_attention_view(
    ctx: AppContext,
    image: gr.components.Component,
    records: gr.JSON,
    candidate_table: gr.Dataframe | None = None,
    **events: Any,
) -> None:
    """The "Where it looked" panel and the ``/attention`` endpoint; clicking a row of ``candidate_table`` explains
    that candidate. ``events``: keywords of every model-running event (its concurrency group)."""
    words_for, show = attention_handlers(ctx)
    with gr.Accordion("Where each captioner looked, word by word", open=True, elem_id="attention"):
        gr.Markdown(ATTENTION_INTRO)
        with gr.Row():
            model = gr.Dropdown(
                [(REGISTRY[m].display_name, m) for m in CAPTIONER_IDS],
                value=CAPTIONER_IDS[0],
                label="Captioner to look into",
                elem_id="attention-model",
            )
            caption = gr.Textbox(
                label="Caption to explain (blank: the captioner's own; press Enter after editing)",
                elem_id="attention-caption",
            )
        # Interactive although no event reads its value: a click's index arrives with the select event.
        words = gr.Radio([], label="Words: click one", interactive=True, elem_id="attention-words")
        with gr.Row():
            heatmap = gr.Image(
                label="Attention heatmap", type="pil", format="png", interactive=False, height=320,
                buttons=["download", "fullscreen"], elem_id="attention-map", elem_classes=["attention-map"],
            )  # fmt: skip
            note = gr.Markdown(label="What the map is", elem_id="attention-note")
        # The API's way in (a word by its number); the page uses the words above.
        word = gr.Number(value=0, precision=0, label="Word number (0 = the first)", visible=False)
        details = gr.JSON(label="Attention: caption, words, word, grid, note", visible=False)
        api_trigger = gr.Button(visible=False)

    def refill(image: str | None, records: list[dict[str, Any]] | None, model: str):
        """After a run (or a new pick): the picked captioner's caption from the records and its words. A
        captioner that did not run gives way to the first that did."""
        ran = [r.get("model") for r in records or [] if r.get("caption")]
        if ran and model not in ran:
            model = ran[0]
        return (model, *words_for(image, model, caption_of(records, model)))

    targets = [caption, words, heatmap, note]
    records.change(refill, [image, records, model], [model, *targets], api_visibility="private", **events)

    def pick(image: str | None, records: list[dict[str, Any]] | None, model: str):
        return words_for(image, model, caption_of(records, model))

    model.input(pick, [image, records, model], targets, api_visibility="private", **events)
    caption.submit(words_for, [image, model, caption], targets, api_visibility="private", **events)

    def clicked(image: str | None, model: str, caption: str | None, evt: gr.SelectData):
        overlay, _, explanation = show(image, model, caption, evt.index)
        return overlay, explanation

    words.select(clicked, [image, model, caption], [heatmap, note], api_visibility="private", **events)

    if candidate_table is not None:
        by_name = {REGISTRY[m].display_name: m for m in CAPTIONER_IDS}

        def explain_candidate(image: str | None, evt: gr.SelectData):
            """A clicked candidate row: its captioner and caption go to the panel, with their words."""
            name, _, text = (list(evt.row_value or []) + [None] * 3)[:3]
            if name not in by_name or not text:
                return (gr.update(),) * 5
            return (by_name[name], *words_for(image, by_name[name], str(text)))

        candidate_table.select(
            explain_candidate, [image], [model, *targets], api_visibility="private", **events
        )
    api_trigger.click(
        show, [image, model, caption, word], [heatmap, details, note], api_name="attention", **events
    )
