"""Arena and Leaderboard tabs: blind battles for both tasks, votes, ratings with intervals.

Wiring only: every rule (who plays, one vote per battle, rate limits, what is revealed when) lives in
:mod:`mmdemo.arena`. Before a vote the page holds nothing but two outputs and a random battle id:
pictures go out as fresh metadata-free PNGs, the panels are labelled "Model A" / "Model B".
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from PIL import Image

from mmdemo.arena.battles import Arena, ArenaConfig, ArenaError, random_prompt
from mmdemo.arena.export import write_votes
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS
from mmdemo.ui.components import RawImageInput
from mmdemo.ui.handlers import AppContext, alignment_scorer, battle_gpu_seconds, on_gpu

log = logging.getLogger(__name__)
VOTE_BUTTONS = (
    ("👈 A is better", "A"),
    ("👉 B is better", "B"),
    ("🤝 Tie", "tie"),
    ("👎 Both bad", "both bad"),
)
TASK_CHOICES = [("Text → Image", "generate"), ("Image → Text", "caption")]
LEADERBOARD_COLUMNS = [
    "rank",
    "model",
    "rating",
    "ci_low",
    "ci_high",
    "elo",
    "battles",
    "wins",
    "ties",
    "losses",
    "win_rate",
]  # fmt: skip  (the API rows also carry each model's display name)


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def _buttons(enabled: bool) -> list[Any]:
    return [gr.Button(interactive=enabled) for _ in VOTE_BUTTONS]


def reveal_markdown(reveal: dict) -> str:
    """The names, times and scores of a battle, after its vote (or at once when a side failed)."""

    def side(letter: str) -> str:
        s = reveal[letter.lower()]
        head = f"**Model {letter}: {s['name']}** (`{s['model']}`)"
        if s["error"]:
            return f"{head}: ⚠️ {s['error']}"
        parts = [head, f"{s['seconds']:.2f} s", f"{s['weights']} weights"]
        if s["score"] is not None:
            parts.append(f"{reveal['score_name']}: {s['score']:.3f}")
        return " · ".join(parts)

    verdict = {"A": "A is better", "B": "B is better", "tie": "a tie", "both bad": "both bad"}
    head = f"Your vote: **{verdict[reveal['choice']]}**." if reveal["choice"] else "No vote for this battle."
    return "\n\n".join([head, side("A"), side("B"), "Start a new battle for another round."])


def generate_battle_gpu_seconds(*args, **kwargs) -> int:
    return battle_gpu_seconds(GENERATOR_IDS)


def caption_battle_gpu_seconds(*args, **kwargs) -> int:
    return battle_gpu_seconds(CAPTIONER_IDS)


class ArenaHandlers:
    """Event handlers over one arena (or over its absence: every event then says why)."""

    def __init__(self, arena: Arena | None, reason: str | None):
        self.arena, self.reason = arena, reason
        # On a ZeroGPU Space a battle asks for a GPU window (two models, one input); unchanged elsewhere.
        # The pair is drawn inside the call, so each asks for the two costliest models' declared costs.
        self.arena_generate = on_gpu(generate_battle_gpu_seconds)(self.arena_generate)
        self.arena_caption = on_gpu(caption_battle_gpu_seconds)(self.arena_caption)

    def need(self) -> Arena:
        if self.arena is None:
            raise gr.Error(f"The arena is unavailable on this server: {self.reason}")
        return self.arena

    def arena_generate(self, prompt: str, seed: float, request: gr.Request) -> tuple:
        """Two anonymous generators draw ``prompt`` with ``seed``: (picture A, picture B, battle id)."""
        try:
            view = self.need().start_generate(prompt, seed, _session(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from None
        return (*[Image.open(p) if p else None for p in view.outputs], view.battle_id)  # our clean PNGs

    def arena_caption(self, image: str, request: gr.Request) -> tuple:
        """Two anonymous captioners describe ``image``: (caption A, caption B, battle id)."""
        try:
            view = self.need().start_caption(image, _session(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from None
        return (*[c if c is not None else "⚠️ this model failed" for c in view.outputs], view.battle_id)

    def vote(self, battle_id: str, choice: str, request: gr.Request) -> dict:
        """Vote on a battle: choice is "A", "B", "tie" or "both bad". Returns the reveal as JSON."""
        try:
            return self.need().vote(battle_id, choice, _session(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from None

    def leaderboard(self, task: str) -> list[dict]:
        """Leaderboard rows for task "generate" or "caption" on this server's weights profile."""
        if task not in ("generate", "caption"):
            raise gr.Error(f"Unknown task {task!r}; choose 'generate' or 'caption'.")
        return self.need().leaderboard(task).rows

    # -------------------------------------------------------------------------------- page-only events

    @staticmethod
    def reset() -> tuple:
        return ("Running both models…", "", *_buttons(False))

    def after_battle(self, battle_id: str) -> tuple:
        """Status, reveal and vote buttons once a battle is on the page."""
        if self.arena is None or not battle_id:
            return ("", "", *_buttons(False))
        reveal = self.arena.battle_reveal(battle_id)
        if reveal is None:
            return ("**Which is better?** Vote to reveal the two models.", "", *_buttons(True))
        failed = " and ".join(s for s in ("A", "B") if reveal[s.lower()]["error"])
        status = f"⚠️ Model {failed} failed, so this battle cannot be voted on. Start a new battle."
        return (status, reveal_markdown(reveal), *_buttons(False))

    def vote_button(self, choice: str):
        def vote_from_button(battle_id: str, request: gr.Request) -> tuple:
            result = self.vote(battle_id, choice, request)
            return ("Thanks for voting!", reveal_markdown(result), *_buttons(False))

        return vote_from_button

    def show_leaderboard(self, task: str) -> tuple:
        arena = self.need()
        board = arena.leaderboard(task)
        profile = arena.pool(task)[0]
        if not board.rows:
            return (
                f"No votes yet for this task ({profile} weights): play a battle in the Arena tab.",
                [],
                None,
                None,
            )
        text = f"**{board.votes} votes** ({profile} weights) · computed {board.computed_at.replace('T', ' ').replace('+00:00', '')} UTC"
        rows = [[row[c] for c in LEADERBOARD_COLUMNS] for row in board.rows]
        return text, rows, heatmap(board, "win rate"), heatmap(board, "battles")

    def download(self, fmt: str) -> str:
        return str(write_votes(self.need().sessions, fmt))


# ------------------------------------------------------------------------------------------------ tabs


def _battle_block(
    handlers: ArenaHandlers,
    run,
    api_name: str,
    start: gr.Button,
    inputs: list,
    sides: list,
    concurrency: int,
    group: str,
):
    """Vote buttons, status and reveal under a battle's two outputs; the start and vote events."""
    status = gr.Markdown()
    with gr.Row():
        buttons = [gr.Button(label, interactive=False) for label, _ in VOTE_BUTTONS]
    reveal = gr.Markdown()
    battle_id = gr.Textbox(label="Battle id", interactive=False, max_lines=1)
    page = [status, reveal, *buttons]
    start.click(handlers.reset, outputs=page, queue=False, api_visibility="private").then(
        run, inputs=inputs, outputs=[*sides, battle_id], api_name=api_name, concurrency_id=group,
        concurrency_limit=concurrency,
    ).then(handlers.after_battle, inputs=battle_id, outputs=page, api_visibility="private")  # fmt: skip
    for button, (_, choice) in zip(buttons, VOTE_BUTTONS):
        button.click(
            handlers.vote_button(choice),
            inputs=battle_id,
            outputs=page,
            api_visibility="private",
            concurrency_limit=None,
        )


def create_arena_tab(ctx: AppContext, handlers: ArenaHandlers, concurrency: int, group: str) -> None:
    arena = handlers.arena
    gr.Markdown(
        "Two anonymous models answer the same input. Vote for the better one (or a tie, or both bad); "
        "the names are revealed after your vote and every vote feeds the **Leaderboard**."
        + (f"\n\n⚠️ The arena is unavailable on this server: {handlers.reason}" if arena is None else "")
    )
    profile = arena.pool("generate")[0] if arena else "demo"
    with gr.Tabs():
        with gr.Tab("Text → Image", id="arena-generate"):
            with gr.Row():
                prompt = gr.Textbox(
                    label="Prompt for both models", value="a small red circle on the left", lines=1, scale=4
                )
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1, scale=1)
            with gr.Row():
                dice = gr.Button("🎲 Random prompt", size="sm")
                start = gr.Button("⚔️ New battle", variant="primary")
            with gr.Row(equal_height=True):
                classes = ["generated", "demo-pixels"] if profile == "demo" else ["generated"]
                sides = [
                    gr.Image(
                        label=f"Model {s}",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=256,
                        buttons=["fullscreen"],
                        elem_classes=classes,
                    )  # fmt: skip
                    for s in ("A", "B")
                ]
            _battle_block(
                handlers,
                handlers.arena_generate,
                "arena_generate",
                start,
                [prompt, seed],
                sides,
                concurrency,
                group,
            )
            dice.click(lambda: random_prompt(profile), outputs=prompt, queue=False, api_visibility="private")
        with gr.Tab("Image → Text", id="arena-caption"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = RawImageInput(
                        type="filepath",
                        sources=["upload", "clipboard"],
                        label="Image for both models",
                        height=256,
                    )
                    start_caption = gr.Button("⚔️ New battle", variant="primary")
                    if ctx.examples:
                        gr.Examples([[str(e.path)] for e in ctx.examples], inputs=[image], label="Examples")
                with gr.Column(scale=2):
                    captions = [
                        gr.Textbox(label=f"Model {s}", lines=2, interactive=False) for s in ("A", "B")
                    ]
            _battle_block(
                handlers,
                handlers.arena_caption,
                "arena_caption",
                start_caption,
                [image],
                captions,
                concurrency,
                group,
            )
    gr.api(handlers.vote, api_name="vote", concurrency_limit=None)  # a vote is one short insert


def heatmap(board: Any, which: str):
    """A matplotlib heatmap of the leaderboard's win-rate (``"win rate"``) or battle-count matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    win_rate = which == "win rate"
    values = board.win_rate if win_rate else board.battles
    labels = board.models
    size = max(3.5, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(
        np.ma.masked_invalid(values.astype(float)),
        cmap="RdBu" if win_rate else "Blues",
        vmin=0 if win_rate else None,
        vmax=1 if win_rate else None,
    )
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and not np.isnan(values[i, j]):
                text = f"{values[i, j]:.2f}" if win_rate else f"{int(values[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_title("Share of battles the row model won (ties ½)" if win_rate else "Votes per pair", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def create_leaderboard_tab(handlers: ArenaHandlers, tab: gr.Tab) -> None:
    """The leaderboard, computed when ``tab`` is opened, when the task changes and on Refresh."""
    with gr.Row():
        task = gr.Radio(TASK_CHOICES, value="generate", label="Task")
        refresh = gr.Button("Refresh", size="sm")
    summary = gr.Markdown()
    table = gr.Dataframe(
        headers=LEADERBOARD_COLUMNS, label="Bradley-Terry ratings, 95 % bootstrap intervals", wrap=True
    )
    with gr.Row():
        win_rate = gr.Plot(label="Win rate")
        battles = gr.Plot(label="Battle counts")
    with gr.Row():
        csv_button = gr.Button("Download all votes (CSV)", size="sm")
        jsonl_button = gr.Button("Download all votes (JSON lines)", size="sm")
        download = gr.File(label="Votes", interactive=False, height=90)
    gr.Markdown(
        "Ratings: Bradley-Terry fitted by maximum likelihood on all votes (a tie or *both bad* counts as half "
        "a win for each side), on the Elo scale (400 points = 10× odds) centred on 1000; intervals from 200 "
        "bootstrap resamples of the votes. *Rank* is 1 + the number of models whose interval lies wholly above. "
        "*Elo* is the classic online rating (K = 4) in vote order. Demo-weight and full-weight votes never mix."
    )
    outputs = [summary, table, win_rate, battles]
    for trigger in (refresh.click, task.change, tab.select):
        trigger(handlers.show_leaderboard, inputs=task, outputs=outputs, api_visibility="private")
    csv_button.click(lambda: handlers.download("csv"), outputs=download, api_visibility="private")
    jsonl_button.click(lambda: handlers.download("jsonl"), outputs=download, api_visibility="private")
    gr.api(handlers.leaderboard, api_name="leaderboard", concurrency_limit=4)


def create_arena(ctx: AppContext, config: ArenaConfig | None) -> ArenaHandlers:
    """Handlers over the arena, or over its absence (e.g. an unreachable database): the other tabs work regardless."""
    try:
        arena = Arena(config or ArenaConfig(), ctx.manager, ctx.availability, scorer=alignment_scorer())
        return ArenaHandlers(arena, None)
    except Exception as err:  # noqa: BLE001 - a broken database disables the arena, never the app
        log.exception("arena unavailable")
        return ArenaHandlers(None, f"{type(err).__name__}: {err}")


def create_arena_tabs(
    ctx: AppContext, config: ArenaConfig | None, concurrency: int, model_group: str
) -> Arena | None:
    """The Arena and Leaderboard tabs (call inside ``gr.Tabs()``); battles share ``model_group``'s queue."""
    handlers = create_arena(ctx, config)
    with gr.Tab("Arena", id="arena", elem_id="arena"):
        create_arena_tab(ctx, handlers, concurrency, model_group)
    with gr.Tab("Leaderboard", id="leaderboard", elem_id="leaderboard") as tab:
        create_leaderboard_tab(handlers, tab)
    return handlers.arena
