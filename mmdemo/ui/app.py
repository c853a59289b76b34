"""The three tabs, assembled. Each ``create_*_tab`` builds components and wires events; no model code here."""

from __future__ import annotations

import os
from collections.abc import Callable

import gradio as gr

from mmdemo.arena.battles import ArenaConfig
from mmdemo.monitoring import OpsSettings
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, Option
from mmdemo.ui import about, captions, compare, ops
from mmdemo.ui import arena as arena_ui
from mmdemo.ui.components import RawImageInput
from mmdemo.ui.handlers import (
    AppContext,
    caption_handler,
    generate_handler,
    option_fields,
    options_from_fields,
    random_seed,
)

# Every model-running event shares one concurrency group: on a GPU they take turns on the card.
MODEL_CONCURRENCY_ID = "models"

# Demo generators draw 32 px pictures, which Gradio shows at their native size: a thumbnail lost in a
# 256 px panel. Panels of demo-weight models scale the picture up to the panel, with crisp pixels (the
# downloaded PNG keeps the native size). Gradio 6 takes CSS at launch: ``demo.launch(css=APP_CSS)``.
APP_CSS = """
.generated.demo-pixels .image-frame, .generated.demo-pixels img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
.caption-input.demo-pixels .image-frame, .caption-input.demo-pixels img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
.compare-slider img { image-rendering: pixelated; }
.attention-map img { image-rendering: pixelated; }
"""


def create_caption_tab(ctx: AppContext, concurrency: int) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            # Demo examples are 64 px Shapes pictures: shown enlarged to the box, with crisp pixels.
            demo_pixels = any(ctx.availability.get(m) == "demo" for m in CAPTIONER_IDS)
            image = RawImageInput(
                type="filepath",
                sources=["upload", "clipboard"],
                label="Image",
                height=320,
                elem_classes=["caption-input"] + (["demo-pixels"] if demo_pixels else []),
            )
            model = gr.Radio(
                [("All four, side by side", "all")] + [(REGISTRY[m].display_name, m) for m in CAPTIONER_IDS],
                value="all",
                label="Captioner",
            )
            with gr.Accordion("Decoding options (blank = each model's own default)", open=False):
                # Beams: up to the most any captioner takes (one that decodes greedily only says so in its row).
                # Length: up to the least any takes, so "all" never asks a captioner for more than it can write.
                num_beams = _caption_option_field(
                    ctx, "num_beams", "Beams (1 = greedy, as in the report)", max
                )
                max_new_tokens = _caption_option_field(ctx, "max_new_tokens", "Max new tokens", min)
            candidates = captions.candidates_field()
            button = gr.Button("Caption", variant="primary")
            if ctx.examples:
                gr.Examples(
                    [[str(e.path)] for e in ctx.examples],
                    inputs=[image],
                    label="Dataset examples (with references)",
                )
        with gr.Column(scale=2):
            table = gr.Dataframe(
                headers=["model", "caption", "seconds", "weights", "BLEU-4"],
                datatype=["str", "str", "number", "str", "str"],
                label="Captions",
                wrap=True,
                # Captions wrap in the wide column; the numbers keep narrow columns that stay in view.
                column_widths=["17%", "47%", "10%", "12%", "14%"],
            )
            candidate_table, score_note = captions.create_candidates_table()
            references = gr.Markdown(label="Reference captions")
            with gr.Accordion("Records (API)", open=False):
                records = gr.JSON(label="Records (API)", open=False, elem_id="caption-records")
    button.click(
        caption_handler(ctx),
        inputs=[image, model, num_beams, max_new_tokens, candidates],
        outputs=[table, references, records],
        api_name="caption",
        concurrency_id=MODEL_CONCURRENCY_ID,
        concurrency_limit=concurrency,
    )
    records.change(
        captions.candidate_rows, records, [candidate_table, score_note], api_visibility="private", queue=False
    )
    captions.create_attention_view(
        ctx, image, records, candidate_table, concurrency_id=MODEL_CONCURRENCY_ID, concurrency_limit=concurrency
    )


def example_prompts(ctx: AppContext) -> list[list[str]]:
    shapes = [
        "a small red circle on the left",
        "a large blue square at the top",
        "a yellow triangle in the center",
        "a big green diamond on the right",
    ]
    flickr = [
        "A black dog is running through the grass .",
        "A little girl in a pink dress is climbing stairs .",
        "Two men are playing soccer on a field .",
    ]
    return [[p] for p in (shapes + flickr if "full" in ctx.availability.values() else shapes)]


def _caption_option_field(ctx: AppContext, name: str, label: str, highest: Callable) -> gr.Number:
    """A blank number field for a decoding option every captioner declares; its maximum is ``highest`` of theirs."""
    declared = [
        (REGISTRY[m].display_name, REGISTRY[m].options_for(ctx.availability.get(m) or "full")[name])
        for m in CAPTIONER_IDS
    ]
    defaults = ", ".join(f"{model} {option.default}" for model, option in declared)
    return gr.Number(
        value=None,
        precision=0,
        label=label,
        info=f"defaults: {defaults}",
        minimum=min(option.minimum for _, option in declared),
        maximum=highest(option.maximum for _, option in declared),
    )


def _option_field(option: Option) -> gr.components.Component:
    """The input for one declared option; blank / "default" leaves the model's default."""
    label, info = option.name.replace("_", " "), option.help
    if option.type == "choice":
        return gr.Dropdown(["default", *option.choices], value="default", label=label, info=info)
    if option.type == "bool":
        return gr.Checkbox(value=bool(option.default), label=label, info=info)
    if option.type == "text":
        return gr.Textbox(value="", label=label, info=info, max_lines=1)
    return gr.Number(
        value=None,
        precision=0 if option.type == "int" else None,
        label=label,
        info=info,
        minimum=option.minimum,
        maximum=option.maximum,
        step=option.step or (1 if option.type == "int" else 0.1),
    )


def create_generate_tab(ctx: AppContext, concurrency: int) -> tuple[compare.GenerateInputs, gr.Checkbox]:
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", value="a small red circle on the left", lines=2, max_lines=6)
            negative = gr.Textbox(value="", label="Negative prompt (models that support it)", lines=1)
        with gr.Column(scale=2):
            models = gr.CheckboxGroup(
                [(REGISTRY[m].display_name, m) for m in GENERATOR_IDS],
                value=list(GENERATOR_IDS),
                label="Models",
            )
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
                dice = gr.Button("🎲 Random seed", size="sm")
            preset = gr.Radio(
                [("fast (multistep solver, ≤ 25 steps)", "fast"), ("report settings", "report")],
                value="fast",
                label="Preset",
            )
    # One field per option each model declares in the registry (blank = the preset's default); their values
    # reach the handler as a dict in ``field_options``. The JSON box is the API's per-model options argument.
    declared = option_fields(ctx.availability)
    with gr.Accordion("Per-model options (blank = the preset's default)", open=False):
        fields = []
        for model_id in GENERATOR_IDS:
            with gr.Row():
                gr.Markdown(f"**{REGISTRY[model_id].display_name}**")
                fields += [_option_field(option) for m, option in declared if m == model_id]
        overrides = gr.Code(
            value="{}",
            language="json",
            label="More options as JSON (the API's per-model options)",
            interactive=True,
        )
    field_options = gr.State({})

    def collect(*values):
        return options_from_fields(declared, *values)

    for field in fields:
        field.change(collect, fields, field_options, queue=False, api_visibility="private")
    with gr.Row():
        button = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=4)
        previews = live_previews_checkbox()
    link_inputs = compare.GenerateInputs(prompt, negative, seed, preset, models, overrides, field_options)
    compare.create_link_row(link_inputs)
    images, texts, seed_buttons = [], [], {}
    with gr.Row(equal_height=True):
        for model_id in GENERATOR_IDS:
            with gr.Column(min_width=180):
                images.append(
                    gr.Image(
                        label=REGISTRY[model_id].display_name,
                        type="pil",
                        format="png",
                        buttons=["download", "fullscreen"],
                        interactive=False,
                        height=256,
                        elem_classes=["generated"]
                        + (["demo-pixels"] if ctx.availability.get(model_id) == "demo" else []),
                    )
                )
                texts.append(
                    gr.Markdown(
                        label=f"{REGISTRY[model_id].display_name}: time, seed, weights, score",
                        elem_classes=["panel-caption"],
                    )
                )
                seed_buttons[model_id] = compare.seed_button()
    # The slider (under the panels) reads the records, which are shown further down.
    records = gr.JSON(label="Records (API)", open=False, elem_id="generate-records", render=False)
    compare.create_slider(images, records)
    with gr.Row():
        with gr.Accordion("Records (API)", open=False):
            records.render()
        archive = gr.File(label="Download all (PNG + settings JSON)")
    compare.wire_seed_buttons(seed_buttons, records, seed)
    dice.click(random_seed, outputs=seed, api_name="random_seed", queue=False)
    generate = generate_handler(ctx)

    def run_example(example_prompt: str):
        """An example prompt with every model, seed 0 and the fast preset (what a cached example shows)."""
        yield from generate(example_prompt, list(GENERATOR_IDS), 0, "fast", "", "{}", None)

    # The table lists prompts only (as text); the other settings stay as they are on the page.
    gr.Examples(
        example_prompts(ctx),
        inputs=[prompt],
        outputs=[*images, *texts, records, archive],
        fn=run_example,
        # On a Space, an example runs once, the first time someone picks it, and is served from the cache
        # after that; locally picking an example only fills the inputs.
        cache_examples=bool(os.environ.get("SPACE_ID")),
        cache_mode="lazy",
        label="Example prompts (Shapes for demo weights, Flickr8k test prompts for full weights)",
    )
    button.click(
        generate,
        # ``previews`` last: an API call that leaves it out gets the default, no previews.
        inputs=[prompt, models, seed, preset, negative, overrides, field_options, previews],
        outputs=[*images, *texts, records, archive],
        api_name="generate",
        concurrency_id=MODEL_CONCURRENCY_ID,
        concurrency_limit=concurrency,
        # Progress shows in the working panel's caption, not as an overlay on every panel of the page.
        show_progress="hidden",
    )
    return link_inputs, previews


def live_previews_checkbox() -> gr.Checkbox:
    """Whether the panels show their pictures forming: on in the page, off for API calls unless asked for.

    An API parameter's default is its component's initial value, so the box starts unticked (what
    ``view_api()`` shows) and the page ticks it in the browser as it loads.
    """
    box = gr.Checkbox(
        value=False,
        label="Live previews",
        info="show each picture forming while its model samples",
        elem_id="live-previews",
        scale=1,
    )
    return box


def tick_on_page_load(demo: gr.Blocks, box: gr.Checkbox) -> None:
    """Tick ``box`` in the browser when the page loads (no server round trip)."""
    demo.load(None, outputs=box, js="() => true", api_visibility="private", queue=False)


def build_app(
    ctx: AppContext,
    *,
    concurrency: int = 1,
    settings: OpsSettings | None = None,
    arena_config: ArenaConfig | None = None,
) -> gr.Blocks:
    """The whole app for ``ctx``; ``concurrency`` model runs at once (1 on a single GPU).

    ``settings`` (default: from the environment): generated files and uploads are deleted after its cache time.
    """
    settings = settings or OpsSettings.from_env()
    with gr.Blocks(title="mmdemo: compare multimodal models", delete_cache=settings.delete_cache) as demo:
        gr.Markdown("# mmdemo: try and compare captioners and image generators")
        gr.Markdown(ctx.banner(), elem_id="profile-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Image → Text", id="caption"):
                create_caption_tab(ctx, concurrency)
            with gr.Tab("Text → Image", id="generate"):
                link_inputs, previews = create_generate_tab(ctx, concurrency)
            # Arena + Leaderboard: blind battles and their votes (database: ``arena_config``).
            arena_ui.create_arena_tabs(ctx, arena_config, concurrency, MODEL_CONCURRENCY_ID)
            with gr.Tab("About", id="about"):
                params = about.create_about_tab(ctx)
                ops.create_live_stats(ctx, demo)
        ops.register_endpoints(ctx, settings)
        compare.register_link_restore(demo, tabs, link_inputs)  # settings from a shared link's URL
        tick_on_page_load(demo, previews)  # the page shows pictures forming; the API asks for it
        demo.load(about.param_table, outputs=params, api_visibility="private", show_progress="hidden")
    return demo
