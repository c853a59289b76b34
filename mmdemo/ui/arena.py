"""Arena and Leaderboard tabs: blind battles for both tasks, votes, ratings with intervals.

Wiring only: every rule (who plays, one vote per battle, rate limits, what is revealed when) lives in
:mod:`mmdemo.arena`. Before a vote the page holds nothing but two outputs and a random battle id:
pictures go out as fresh metadata-free PNGs, the panels are labelled "Model A" / "Model B".
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image

from mmdemo.arena.battles import Arena, ArenaConfig, ArenaError, BattleView, random_prompt
from mmdemo.arena.export import write_votes
from mmdemo.ui.components import RawImageInput
from mmdemo.ui.handlers import AppContext, alignment_scorer

log = logging.getLogger(__name__)
VOTE_BUTTONS = (
    ("👈 A is better", "A"),
    ("👉 B is better", "B"),
    ("🤝 Tie", "tie"),
    ("👎 Both bad", "both bad"),
)
TASK_CHOICES = [("Text → Image", "generate"), ("Image → Text", "caption")]


def create_arena(ctx: AppContext, config: ArenaConfig | None) -> tuple[Arena | None, str | None]:
    """The arena, or None and the reason (e.g. an unreachable database): the other tabs work regardless."""
    try:
        return Arena(config or ArenaConfig(), ctx.manager, ctx.availability, scorer=alignment_scorer()), None
    except Exception as err:  # noqa: BLE001 - a broken database disables the arena, never the app
        log.exception("arena unavailable")
        return None, f"{type(err).__name__}: {err}"


def _need(arena: Arena | None, reason: str | None) -> Arena:
    if arena is None:
        raise gr.Error(f"The arena is unavailable on this server: {reason}")
    return arena


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def _reveal_markdown(reveal: dict) -> str:
    def side(letter: str) -> str:
        s = reveal[letter.lower()]
        if s["error"]:
            return f"**Model {letter}: {s['name']}** (`{s['model']}`): ⚠️ {s['error']}"
        parts = [
            f"**Model {letter}: {s['name']}** (`{s['model']}`)",
            f"{s['seconds']:.2f} s",
            f"{s['weights']} weights",
        ]
        if s["score"] is not None:
            parts.append(f"{reveal['score_name']}: {s['score']:.3f}")
        return " · ".join(parts)

    verdict = {"A": "A is better", "B": "B is better", "tie": "a tie", "both bad": "both bad"}
    head = f"Your vote: **{verdict[reveal['choice']]}**." if reveal["choice"] else "No vote for this battle."
    return "\n\n".join([head, side("A"), side("B"), "Start a new battle for another round."])


def _buttons(enabled: bool) -> list[Any]:
    return [gr.Button(interactive=enabled) for _ in VOTE_BUTTONS]


def _after_battle(arena: Arena | None, battle_id: str) -> tuple:
    """Status, reveal and vote buttons once a battle is on the page."""
    if arena is None or not battle_id:
        return ("", "", *_buttons(False))
    reveal = arena.battle_reveal(battle_id)
    if reveal is None:
        return ("**Which is better?** Vote to reveal the two models.", "", *_buttons(True))
    failed = " and ".join(s for s in ("A", "B") if reveal[s.lower()]["error"])
    status = f"⚠️ Model {failed} failed, so this battle cannot be voted on. Start a new battle."
    return (status, _reveal_markdown(reveal), *_buttons(False))


def _reset() -> tuple:
    return ("Running both models…", "", *_buttons(False))


def create_arena_tab(
    ctx: AppContext, arena: Arena | None, reason: str | None, concurrency: int, model_group: str
) -> None:
    gr.Markdown(
        "Two anonymous models answer the same input. Vote for the better one (or a tie, or both bad); "
        "the names are revealed after your vote and every vote feeds the **Leaderboard**."
        + (f"\n\n⚠️ The arena is unavailable on this server: {reason}" if arena is None else "")
    )
    profile = arena.pool("generate")[0] if arena else ctx.profile
    with gr.Tabs():
        with gr.Tab("Text → Image", id="arena-generate"):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value="a small red circle on the left", lines=1, scale=4)
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1, scale=1)
            with gr.Row():
                dice = gr.Button("🎲 Random prompt", size="sm")
                start = gr.Button("⚔️ New battle", variant="primary")
            with gr.Row(equal_height=True):
                sides = [
                    gr.Image(
                        label=f"Model {s}",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=256,
                        buttons=["fullscreen"],
                        elem_classes=["generated", "demo-pixels"] if profile == "demo" else ["generated"],
                    )
                    for s in ("A", "B")
                ]
            _battle_block(
                arena, reason, start, [prompt, seed], sides, "arena_generate", concurrency, model_group
            )
            dice.click(lambda: random_prompt(profile), outputs=prompt, queue=False, api_visibility="private")
        with gr.Tab("Image → Text", id="arena-caption"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = RawImageInput(
                        type="filepath", sources=["upload", "clipboard"], label="Image", height=256
                    )
                    start_caption = gr.Button("⚔️ New battle", variant="primary")
                    if ctx.examples:
                        gr.Examples([[str(e.path)] for e in ctx.examples], inputs=[image], label="Examples")
                with gr.Column(scale=2):
                    captions = [
                        gr.Textbox(label=f"Model {s}", lines=2, interactive=False) for s in ("A", "B")
                    ]
            _battle_block(
                arena, reason, start_caption, [image], captions, "arena_caption", concurrency, model_group
            )

    def vote_api(battle_id: str, choice: str, request: gr.Request) -> dict:
        """Vote on a battle: choice is "A", "B", "tie" or "both bad". Returns the reveal as JSON."""
        try:
            return _need(arena, reason).vote(battle_id, choice, _session(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from None

    gr.api(vote_api, api_name="vote")


def _battle_block(
    arena: Arena | None,
    reason: str | None,
    start: gr.Button,
    inputs: list[Any],
    sides: list[Any],
    api_name: str,
    concurrency: int,
    model_group: str,
) -> None:
    """Vote buttons, status and reveal under a battle's two outputs; the start and vote events."""
    status = gr.Markdown()
    with gr.Row():
        buttons = [gr.Button(label, interactive=False) for label, _ in VOTE_BUTTONS]
    reveal = gr.Markdown()
    battle_id = gr.Textbox(label="Battle id", interactive=False, max_lines=1)

    def run(*values: Any, request: gr.Request) -> tuple:
        try:
            if api_name == "arena_generate":
                view: BattleView = _need(arena, reason).start_generate(
                    values[0], values[1], _session(request)
                )
                pictures = [Image.open(p) if p else None for p in view.outputs]  # our clean PNGs, by pixels
                return (*pictures, view.battle_id)
            view = _need(arena, reason).start_caption(values[0], _session(request))
            return (*[c if c is not None else "⚠️ this model failed" for c in view.outputs], view.battle_id)
        except ArenaError as err:
            raise gr.Error(str(err)) from None

    run.__name__ = api_name
    start.click(_reset, outputs=[status, reveal, *buttons], queue=False, api_visibility="private").then(
        run,
        inputs=inputs,
        outputs=[*sides, battle_id],
        api_name=api_name,
        concurrency_id=model_group,
        concurrency_limit=concurrency,
    ).then(
        partial(_after_battle, arena),
        inputs=battle_id,
        outputs=[status, reveal, *buttons],
        api_visibility="private",
    )

    for button, (_, choice) in zip(buttons, VOTE_BUTTONS):

        def vote(battle: str, request: gr.Request, choice: str = choice) -> tuple:
            try:
                result = _need(arena, reason).vote(battle, choice, _session(request))
            except ArenaError as err:
                raise gr.Error(str(err)) from None
            return ("Thanks for voting!", _reveal_markdown(result), *_buttons(False))

        button.click(vote, inputs=battle_id, outputs=[status, reveal, *buttons], api_visibility="private")


# ------------------------------------------------------------------------------------------------ leaderboard


def _heatmap(board: Any, which: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = board.win_rate if which == "win rate" else board.battles
    labels = board.models
    size = max(3.5, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = np.ma.masked_invalid(values.astype(float))
    image = ax.imshow(
        shown,
        cmap="RdBu" if which == "win rate" else "Blues",
        vmin=0 if which == "win rate" else None,
        vmax=1 if which == "win rate" else None,
    )
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("model B (opponent)")
    ax.set_ylabel("model A")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if not np.isnan(values[i, j]) and i != j:
                text = f"{values[i, j]:.2f}" if which == "win rate" else f"{int(values[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_title(
        "Share of A's battles against B that A won (ties ½)" if which == "win rate" else "Votes per pair",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def create_leaderboard_tab(arena: Arena | None, reason: str | None, tab: gr.Tab) -> None:
    """The leaderboard, computed when ``tab`` is opened and on Refresh."""
    columns = [
        "rank",
        "name",
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
    ]
    with gr.Row():
        task = gr.Radio(TASK_CHOICES, value="generate", label="Task")
        refresh = gr.Button("🔄 Refresh", size="sm")
    summary = gr.Markdown()
    table = gr.Dataframe(headers=columns, label="Bradley-Terry ratings, 95 % bootstrap intervals", wrap=True)
    with gr.Row():
        win_rate = gr.Plot(label="Win rate")
        battles = gr.Plot(label="Battle counts")
    with gr.Row():
        csv_button = gr.Button("Download all votes (CSV)", size="sm")
        jsonl_button = gr.Button("Download all votes (JSON lines)", size="sm")
        download = gr.File(label="Votes", interactive=False)
    gr.Markdown(
        "Ratings: Bradley-Terry fitted by maximum likelihood on all votes (a tie or *both bad* counts as half "
        "a win for each side), on the Elo scale (400 points = 10× odds) centred on 1000; intervals from 200 "
        "bootstrap resamples of the votes. *Rank* is 1 + the number of models whose interval lies wholly above. "
        "*Elo* is the classic online rating (K = 4) in vote order. Demo-weight and full-weight votes never mix."
    )

    def leaderboard_api(task: str) -> list[dict]:
        """Leaderboard rows for task "generate" or "caption" on this server's weights profile."""
        if task not in dict((v, k) for k, v in TASK_CHOICES):
            raise gr.Error(f"Unknown task {task!r}; choose 'generate' or 'caption'.")
        return _need(arena, reason).leaderboard(task).rows

    def show(task: str) -> tuple:
        board = _need(arena, reason).leaderboard(task)
        profile = arena.pool(task)[0]
        if not board.rows:
            return (
                f"No votes yet for this task ({profile} weights). Play a battle in the Arena tab!",
                [],
                None,
                None,
            )
        text = f"**{board.votes} votes** ({profile} weights) · computed {board.computed_at.replace('T', ' ')} UTC"
        rows = [[row[c] for c in columns] for row in board.rows]
        return text, rows, _heatmap(board, "win rate"), _heatmap(board, "battles")

    gr.api(leaderboard_api, api_name="leaderboard")
    outputs = [summary, table, win_rate, battles]
    refresh.click(show, inputs=task, outputs=outputs, api_visibility="private")
    task.change(show, inputs=task, outputs=outputs, api_visibility="private")
    tab.select(show, inputs=task, outputs=outputs, api_visibility="private")
    csv_button.click(
        lambda: str(write_votes(_need(arena, reason).sessions, "csv")),
        outputs=download,
        api_visibility="private",
    )
    jsonl_button.click(
        lambda: str(write_votes(_need(arena, reason).sessions, "jsonl")),
        outputs=download,
        api_visibility="private",
    )


def create_arena_tabs(
    ctx: AppContext, config: ArenaConfig | None, concurrency: int, model_group: str
) -> Arena | None:
    """The Arena and Leaderboard tabs (call inside ``gr.Tabs()``); battles share ``model_group``'s queue."""
    arena, reason = create_arena(ctx, config)
    with gr.Tab("Arena", id="arena"):
        create_arena_tab(ctx, arena, reason, concurrency, model_group)
    with gr.Tab("Leaderboard", id="leaderboard") as tab:
        create_leaderboard_tab(arena, reason, tab)
    return arena
