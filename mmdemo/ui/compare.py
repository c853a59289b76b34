"""Views that help see and share a Text → Image comparison: an image slider between two finished panels,
"use this seed" per panel, and links that carry the page's settings (restored, and optionally run, on open).

Wiring only: which panels exist comes from the registry's generator list, never from a model's name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import gradio as gr
from PIL import Image

from mmdemo.registry import GENERATOR_IDS, REGISTRY
from mmdemo.ui.handlers import merged_options, parse_overrides

# Both sides of the slider are drawn at one size, at least this many pixels on their longer side: a 32 px
# demo picture is enlarged with nearest-neighbour resampling (crisp pixels, no blur), a 1024 px one is kept.
SLIDER_MIN_SIDE = 512
PRESETS = ("fast", "report")
TABS = ("caption", "generate")
# The query parameters a shared link may carry (anything else in the URL is ignored).
LINK_KEYS = ("tab", "prompt", "negative", "seed", "preset", "models", "options", "run")


# ------------------------------------------------------------------------------------------------ slider


def same_size(left: Image.Image, right: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Both pictures at one size (the larger of the two, at least ``SLIDER_MIN_SIDE``), scaled with
    nearest-neighbour so that small pictures stay crisp and pixels line up across the slider."""
    width = max(left.width, right.width)
    height = max(left.height, right.height)
    factor = max(1, -(-SLIDER_MIN_SIDE // max(width, height)))  # ceil: an integer factor keeps pixels square
    size = (width * factor, height * factor)
    return (
        left.convert("RGB").resize(size, Image.Resampling.NEAREST),
        right.convert("RGB").resize(size, Image.Resampling.NEAREST),
    )


def finished_ids(records: list[dict] | None, images: Sequence[Any]) -> list[str]:
    """Generator ids, in panel order, whose model finished this run with a picture: it has a record without an
    error and its panel holds the picture. A panel showing a live preview has no record yet, so it is not
    finished."""
    succeeded = {r.get("model") for r in records or [] if isinstance(r, dict) and not r.get("error")}
    return [
        model_id
        for model_id, image in zip(GENERATOR_IDS, images, strict=True)
        if image is not None and model_id in succeeded
    ]


def compare_pair(left: str | None, right: str | None, records: list[dict] | None, *images: Any):
    """The two dropdowns and the slider's pair. A choice whose panel is not finished moves to the first finished
    panel not already shown on the other side, so after a run the default is the first two finished panels."""
    done = finished_ids(records, images)
    if left not in done:
        left = next((m for m in done if m != right), left)
    if right not in done or right == left:
        right = next((m for m in done if m != left), right)
    if left in done and right in done and left != right:
        by_id = dict(zip(GENERATOR_IDS, images, strict=True))
        pair: tuple[Image.Image, Image.Image] | None = same_size(by_id[left], by_id[right])
        label = f"{REGISTRY[left].display_name} ◀ ▶ {REGISTRY[right].display_name}"
    else:
        pair, label = None, "Compare two pictures (needs two finished panels)"
    return gr.update(value=left), gr.update(value=right), gr.update(value=pair, label=label)


def create_slider(images: list[gr.Image], records: gr.JSON) -> None:
    """Two pickers and an image slider below the panels; refreshed when a model finishes (its record arrives,
    with its picture), when a new run clears the records, and on every pick."""
    choices = [(REGISTRY[m].display_name, m) for m in GENERATOR_IDS]
    with gr.Group(elem_id="compare"):
        with gr.Row():
            left = gr.Dropdown(
                choices, value=GENERATOR_IDS[0], label="Left of the slider", elem_id="compare-left"
            )
            right = gr.Dropdown(
                choices, value=GENERATOR_IDS[1], label="Right of the slider", elem_id="compare-right"
            )
        slider = gr.ImageSlider(
            label="Compare two pictures (needs two finished panels)",
            type="pil",
            format="png",
            interactive=False,
            max_height=SLIDER_MIN_SIDE,
            elem_id="compare-slider",
            elem_classes=["compare-slider"],
        )
    for trigger in (records, left, right):
        trigger.change(
            compare_pair,
            [left, right, records, *images],
            [left, right, slider],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        )


# ------------------------------------------------------------------------------------------------ seeds


def seed_of(model_id: str, records: list[dict] | None) -> int:
    """The seed the panel of ``model_id`` was made with (the last record of that model)."""
    for record in reversed(records or []):
        if record.get("model") == model_id and record.get("seed") is not None:
            return int(record["seed"])
    raise gr.Error("This panel has no picture yet: generate first.")


def seed_button() -> gr.Button:
    """A "use this seed" button for one panel (wired by :func:`wire_seed_buttons` once the records exist)."""
    return gr.Button("Use this seed", size="sm", elem_classes=["use-seed"])


def wire_seed_buttons(buttons: dict[str, gr.Button], records: gr.JSON, seed: gr.Number) -> None:
    """Each panel's button puts the seed its picture was made with into the seed field."""
    for model_id, button in buttons.items():
        button.click(
            lambda rows, model_id=model_id: seed_of(model_id, rows),
            records,
            seed,
            queue=False,
            api_visibility="private",
        )


# ------------------------------------------------------------------------------------------------ links


@dataclass
class LinkState:
    """What a shared link restores: the Text → Image settings and whether to run them on open."""

    tab: str = "generate"
    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    preset: str | None = None
    models: list[str] | None = None
    options: dict[str, dict[str, Any]] | None = None
    run: bool = False


def link_query(prompt: str, negative: str, seed: Any, preset: str, models: list[str], field_options: dict | None,
               overrides: str | dict | None, tab: str = "generate") -> str:  # fmt: skip
    """The URL query for the current settings: the option fields' values and the JSON box merged."""
    query: dict[str, str] = {"tab": tab, "prompt": prompt or "", "seed": str(int(seed or 0))}
    if negative:
        query["negative"] = negative
    if preset:
        query["preset"] = preset
    query["models"] = ",".join(m for m in models or [] if m in GENERATOR_IDS)
    options = merged_options(field_options, overrides)
    if options:
        query["options"] = json.dumps(options, separators=(",", ":"))
    return urlencode(query)


def parse_link(params: dict[str, str]) -> LinkState:
    """A link's query parameters as settings; a value that does not parse is left out (the page keeps its
    default), so an edited or truncated link still opens."""
    state = LinkState()
    if params.get("tab") in TABS:
        state.tab = params["tab"]
    if "prompt" in params:
        state.prompt = params["prompt"]
    if "negative" in params:
        state.negative = params["negative"]
    try:
        seed = int(params["seed"])
        state.seed = seed if 0 <= seed < 2**32 else None
    except (KeyError, ValueError):
        pass
    if params.get("preset") in PRESETS:
        state.preset = params["preset"]
    if "models" in params:
        state.models = [m for m in params["models"].split(",") if m in GENERATOR_IDS]
    if "options" in params:
        try:
            state.options = parse_overrides(params["options"])
        except gr.Error:
            state.options = None
    state.run = params.get("run", "") in ("1", "true", "yes")
    return state


def restore_from_link(request: gr.Request):
    """Page load: the tab and Text → Image settings from the URL's query (unchanged where absent)."""
    params = dict(request.query_params) if request is not None else {}
    if not any(key in params for key in LINK_KEYS):
        return (gr.update(),) * 7
    state = parse_link(params)

    def keep_or(value):
        return gr.update() if value is None else gr.update(value=value)

    return (
        gr.update(selected=state.tab),
        keep_or(state.prompt),
        keep_or(state.negative),
        keep_or(state.seed),
        keep_or(state.preset),
        keep_or(state.models),
        keep_or(None if state.options is None else json.dumps(state.options)),
    )


# Builds the full URL in the browser (the server does not know the address people reach it by), copies it
# and shows it; clipboard access can be refused (plain http, headless), so the box is the fallback.
_COPY_JS = """(query) => {
    const url = window.location.origin + window.location.pathname + "?" + query;
    if (navigator.clipboard) { navigator.clipboard.writeText(url).catch(() => {}); }
    return url;
}"""
# After restoring, a link with run=1 presses Generate, as a person would.
_RUN_JS = """() => {
    if (!["1", "true", "yes"].includes(new URLSearchParams(window.location.search).get("run") || "")) return;
    const press = () => {
        const button = document.querySelector("#generate-button");
        if (button) { button.click(); } else { setTimeout(press, 200); }
    };
    setTimeout(press, 300);
}"""


@dataclass
class GenerateInputs:
    """The Text → Image tab's components that a link carries."""

    prompt: gr.Textbox
    negative: gr.Textbox
    seed: gr.Number
    preset: gr.Radio
    models: gr.CheckboxGroup
    overrides: gr.Code
    field_options: gr.State


def create_link_row(inputs: GenerateInputs) -> None:
    """A "copy link" button and the link it made, for the Text → Image settings."""
    with gr.Row():
        copy = gr.Button("🔗 Copy link to this comparison", size="sm", elem_id="copy-link", scale=0)
        link = gr.Textbox(
            label="Link (settings; add &run=1 to run on open)",
            interactive=False,
            max_lines=1,
            elem_id="share-link",
            buttons=["copy"],
        )
    copy.click(
        link_query,
        [
            inputs.prompt,
            inputs.negative,
            inputs.seed,
            inputs.preset,
            inputs.models,
            inputs.field_options,
            inputs.overrides,
        ],  # fmt: skip
        link,
        queue=False,
        api_visibility="private",
    ).then(None, link, link, js=_COPY_JS)


def register_link_restore(demo: gr.Blocks, tabs: gr.Tabs, inputs: GenerateInputs) -> None:
    """On page load, restore a shared link's settings, then run them if the link asks to."""
    demo.load(
        restore_from_link,
        outputs=[
            tabs,
            inputs.prompt,
            inputs.negative,
            inputs.seed,
            inputs.preset,
            inputs.models,
            inputs.overrides,
        ],
        api_visibility="private",
        show_progress="hidden",
        queue=False,
    ).then(None, js=_RUN_JS)
