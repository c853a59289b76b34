"""Event handlers: UI values in, UI values out. The glue between Gradio components and the service.

Handlers never raise for a model's failure (that goes into the model's panel); an input mistake
becomes one ``gr.Error`` with a message written for the user.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import io
import json
import logging
import queue
import random
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from mmdemo import inputs, service
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, Option
from mmdemo.runtime import ModelManager, RequestCancelled
from mmdemo.ui.cancel import raise_if_abandoned
from mmdemo.weights import Decision, decide, prefetch

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """What the handlers share: the model manager, the profile, the examples, and what resolves where."""

    manager: ModelManager
    profile: str
    examples: list[service.Example] = field(default_factory=list)
    availability: dict[str, str | None] = field(default_factory=dict)  # id -> "full" / "demo" / None
    decisions: dict[str, Decision] = field(default_factory=dict)  # id -> which weights run, and why
    prefetching: threading.Thread | None = None  # the start-up download of weights that need one

    @classmethod
    def create(cls, profile: str, manager: ModelManager | None = None) -> AppContext:
        manager = manager or ModelManager(profile)  # type: ignore[arg-type]
        decisions = {model_id: decide(model_id, profile) for model_id in REGISTRY}  # type: ignore[arg-type]
        availability = {model_id: d.runs for model_id, d in decisions.items()}
        ctx = cls(manager, profile, service.load_examples(), availability, decisions)
        to_fetch = [m for m, d in decisions.items() if d.runs == "full" and d.downloads]
        if to_fetch:  # start the downloads now, in the background, rather than on each model's first use
            ctx.prefetching = threading.Thread(
                target=prefetch, args=(to_fetch, profile), name="weights-prefetch", daemon=True
            )
            ctx.prefetching.start()
        return ctx

    def weights_note(self, model_id: str) -> str | None:
        """Which weights the model runs and why, in words (the About tab's model cards)."""
        decision = self.decisions.get(model_id)
        if decision is None or decision.runs is None:
            return None if decision is None else f"unavailable: {decision.reason}"
        return f"{decision.runs}: {decision.reason}"

    def prepare(self, model_ids: Iterable[str]) -> None:
        """Download and load ``model_ids`` now, before a GPU window opens (a failure is left to the panel).

        Generators with full weights also need the CLIP judge that scores their pictures: it is fetched too.
        """
        model_ids = [m for m in model_ids if m in REGISTRY]
        for model_id in model_ids:
            try:
                self.manager.get(model_id)
            except Exception as err:  # noqa: BLE001 - reported again, in its own panel, when the model runs
                log.warning("could not prepare %s before the GPU call: %s", model_id, err)
        if any(m in GENERATOR_IDS and self.availability.get(m) == "full" for m in model_ids):
            try:
                from mmdemo.eval.alignment import prepare_clip_score

                prepare_clip_score()
            except Exception as err:  # noqa: BLE001 - the score is optional; the picture is not
                log.warning("could not prepare the CLIP judge: %s", err)

    def banner(self) -> str:
        demo = [m for m, p in self.availability.items() if p == "demo"]
        full = [m for m, p in self.availability.items() if p == "full"]
        missing = [m for m in REGISTRY if self.availability.get(m) is None]
        lines = [f"**Profile: `{self.profile}`.**"]
        if demo:
            lines.append(
                "⚠️ **Demo weights in use** for "
                + ", ".join(f"`{m}`" for m in demo)
                + ": tiny models of the same "
                "architectures, trained on our offline *Shapes* dataset (coloured circles, squares and triangles). "
                "Try prompts like *a small red circle on the left*. Real weights: run with `--profile full` on a "
                "machine that can reach the Hugging Face Hub."
            )
        if full:
            lines.append("Full weights: " + ", ".join(f"`{m}`" for m in full) + ".")
        if missing:
            lines.append(
                "Weights unavailable: "
                + ", ".join(f"`{m}`" for m in missing)
                + " (the panel says what to do)."
            )
        if self.decisions:
            why = "\n".join(f"- `{m}`: {self.weights_note(m)}" for m in REGISTRY if m in self.decisions)
            lines.append(f"<details><summary>Which weights run, and why</summary>\n\n{why}\n\n</details>")
        return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------------ ZeroGPU

# ZeroGPU time slots: each model's cost is declared in the registry (``ModelSpec.gpu_cost``); a call adds a
# base for the request itself, and ZeroGPU refuses slots longer than its maximum.
GPU_SECONDS_BASE = 10.0
GPU_SECONDS_MAX = 300


def on_gpu(duration, prepare=None):
    """``spaces.GPU(duration=...)`` on a Hugging Face ZeroGPU Space; the function unchanged elsewhere.

    ``prepare(*args, **kwargs)`` runs first, outside the GPU window: it downloads and loads the weights the
    call needs, so the GPU time asked for covers compute only.
    """
    try:
        import spaces
    except ImportError:
        return lambda fn: fn

    def decorate(fn):
        on_device = spaces.GPU(duration=duration)(fn)
        if prepare is None:
            return on_device
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(*args, **kwargs):
                prepare(*args, **kwargs)
                yield from on_device(*args, **kwargs)

            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            prepare(*args, **kwargs)
            return on_device(*args, **kwargs)

        return call

    return decorate


def generate_gpu_seconds(
    prompt, models, seed, preset="fast", negative_prompt="", overrides=None, field_options=None, *args, **_
):
    """ZeroGPU time to ask for: each ticked model's declared cost for its steps (given, or the preset's)."""
    try:
        options = merged_options(field_options, overrides)
    except gr.Error:
        options = {}
    total = GPU_SECONDS_BASE
    for model_id in models or []:
        if model_id in REGISTRY:
            total += model_gpu_seconds(model_id, preset, options.get(model_id, {}).get("steps"))
    return int(min(total, GPU_SECONDS_MAX))


def model_gpu_seconds(model_id: str, preset: str = "fast", steps: Any = None) -> float:
    """One model's declared ZeroGPU cost for ``steps`` (blank: the preset's default for the full weights)."""
    spec = REGISTRY[model_id]
    steps_option = spec.options_for("full").get("steps")  # ZeroGPU runs the full weights
    if not steps:
        steps = steps_option.default_for(preset, "cuda") if steps_option else 0
    try:
        return spec.gpu_cost.fixed + spec.gpu_cost.per_step * float(steps)
    except (TypeError, ValueError):  # a bad value fails the request itself, with its own message
        return spec.gpu_cost.fixed


def battle_gpu_seconds(model_ids: Sequence[str]) -> int:
    """ZeroGPU time for an arena battle at the fast preset: its pair is drawn inside the call, so the two
    costliest of ``model_ids`` (their declared costs)."""
    costs = sorted((model_gpu_seconds(m) for m in model_ids), reverse=True)
    return int(min(GPU_SECONDS_BASE + sum(costs[:2]), GPU_SECONDS_MAX))


def caption_gpu_seconds(image, model, *args, **kwargs):
    targets = CAPTIONER_IDS if model == "all" else [model] if model in REGISTRY else []
    return int(GPU_SECONDS_BASE + sum(REGISTRY[m].gpu_cost.fixed for m in targets))


# ------------------------------------------------------------------------------------------------ captioning


def caption_handler(ctx: AppContext):
    def prepare(image=None, model="all", *args, **kwargs):
        ctx.prepare(CAPTIONER_IDS if model == "all" else [model])

    @on_gpu(caption_gpu_seconds, prepare)
    def caption(
        image: str | None,
        model: str,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        candidates: int | None = 1,
    ):
        """Caption an image with one captioner id or "all"; returns a table, the references and JSON records.

        ``num_beams`` / ``max_new_tokens``: blank (None) is each model's own default (from the registry).
        ``candidates`` (1 to 5): scored captions per record (its ``candidates``), the caption among them.
        """
        if model not in ("all", *CAPTIONER_IDS):
            raise gr.Error(f"Unknown captioner {model!r}; choose 'all' or one of {', '.join(CAPTIONER_IDS)}.")
        references = service.references_for(image, ctx.examples)
        options = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
        try:
            records, notices = service.caption_image(
                ctx.manager, image, model, references=references, options=options, candidates=candidates
            )
        except inputs.InputError as err:
            raise gr.Error(str(err)) from None
        rows = [
            [
                REGISTRY[r.model].display_name,
                r.caption if r.error is None else f"⚠️ {r.error}",
                r.seconds,
                r.weights or "-",
                "-" if r.bleu is None else f"{r.bleu['bleu4']:.1f}",
            ]
            for r in records
        ]
        refs_md = (
            "**Reference captions** (per-image BLEU above is computed against these):\n"
            + "\n".join(f"{i}. {ref}" for i, ref in enumerate(references, 1))
            if references
            else "*No reference captions for this image (BLEU needs a dataset example).*"
        )
        if notices:
            refs_md = "\n".join(f"ℹ️ {n}" for n in notices) + "\n\n" + refs_md
        return rows, refs_md, [r.as_dict() for r in records]

    return caption


# ------------------------------------------------------------------------------------------------ generation


def _panel_markdown(record: service.GenerateRecord | None, model_id: str, status: str = "") -> str:
    name = REGISTRY[model_id].display_name
    if record is None:
        return f"**{name}**: {status}"
    if record.error:
        return f"**{name}**: ⚠️ {record.error}"
    parts = [f"**{name}**", f"{record.seconds:.2f} s", f"seed {record.seed}"]
    parts.append("demo weights" if record.weights == "demo" else f"{record.weights} weights")
    if record.score is not None:
        parts.append(f"{record.score_name}: {record.score:.3f}")
    text = " · ".join(parts)
    if record.notices:
        text += "\n\n" + "\n".join(f"ℹ️ {n}" for n in record.notices)
    return text


def _zip_results(settings: service.GenerateSettings, images: dict[str, Any], records: list[dict]) -> str:
    """A zip with every image as lossless PNG and the settings + records as JSON; returns its path.

    Written inside Gradio's cache folder: Gradio then serves it in place and deletes it with the other
    cached files after the cache time (a zip elsewhere would be copied there and the original kept forever).
    """
    cache = Path(get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="mmdemo-", dir=cache))
    path = folder / f"mmdemo_seed{settings.seed}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for model_id, image in images.items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            archive.writestr(f"{model_id}.png", buffer.getvalue())
        meta = {"settings": settings.as_dict(), "results": records}
        archive.writestr("settings.json", json.dumps(meta, indent=2))
    return str(path)


def _running_markdown(model_id: str, done: int, total: int, preview: bool) -> str:
    """The working panel's caption: its own progress (the rest of the page shows none)."""
    filled = round(10 * done / max(total, 1))
    bar = "▰" * filled + "▱" * (10 - filled)
    shown = " · preview" if preview else ""
    return _panel_markdown(None, model_id, f"running… {bar} step {done} of {total}{shown}")


# With previews on, the working panel's step count is refreshed at most this often between previews (each
# refresh sends every output again).
LIVE_STEP_SECONDS = 1.0


def generate_handler(ctx: AppContext):
    def prepare(prompt=None, models=None, *args, **kwargs):
        ctx.prepare(models or [])

    @on_gpu(generate_gpu_seconds, prepare)
    def generate(
        prompt: str,
        models: list[str],
        seed: float,
        preset: str = "fast",
        negative_prompt: str = "",
        overrides: dict | str | None = None,
        field_options: dict | None = None,
        previews: bool | None = False,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's documented way to receive progress
    ):
        """Generate one image per ticked model; panels fill in as each model finishes.

        ``field_options``: the per-model option fields, ``{"<model id>": {"<option>": value}}`` (the UI's state).
        ``overrides``: the same as JSON text or a dict, what the API takes, applied on top (optional).
        ``previews``: also yield a few pictures of each sample while it forms, in the working model's panel,
        with its step count in the panel's caption (off unless asked for; the final pictures are the same).
        Yields 5 images, 5 panel captions, the JSON records and a zip of everything.
        """
        models = [m for m in (models or []) if m]
        if not models:
            raise gr.Error("Tick at least one model.")
        options = merged_options(field_options, overrides)
        try:
            settings = service.check_generate_settings(
                prompt, seed, preset, negative_prompt, options,
                profiles=ctx.availability, device=ctx.manager.device,
            )  # fmt: skip
        except inputs.InputError as err:
            raise gr.Error(str(err)) from None
        unknown = [m for m in models if m not in GENERATOR_IDS]
        if unknown:
            raise gr.Error(f"Unknown model(s) {', '.join(unknown)}; valid: {', '.join(GENERATOR_IDS)}.")

        images: dict[str, Any] = {}
        texts = {
            m: _panel_markdown(None, m, "waiting…" if m in models else "not selected") for m in GENERATOR_IDS
        }
        records: list[dict] = []

        def outputs(zip_path: str | None = None):
            return (
                *[images.get(m) for m in GENERATOR_IDS],
                *[texts[m] for m in GENERATOR_IDS],
                records,
                zip_path,
            )

        texts[models[0]] = _panel_markdown(None, models[0], "running…")
        yield outputs()
        # The models sample in a worker thread (with this event's context, which Gradio's progress and the
        # abandoned-request check read) and report here through a queue, so that this generator can yield a
        # preview while its model is still sampling.
        events: queue.SimpleQueue = queue.SimpleQueue()
        finished = threading.Event()  # this generator ended (closed by Gradio, or failed): stop sampling

        def on_step(model_id: str, done: int, total: int) -> None:
            if finished.is_set():
                raise RequestCancelled("the request ended; sampling stopped")
            raise_if_abandoned()  # a closed tab or cancelled job stops sampling at the next step
            events.put(("step", model_id, (done, total)))

        def on_preview(model_id: str, done: int, total: int, picture: Any) -> None:
            events.put(("preview", model_id, (done, total, picture)))

        def sample_all() -> None:
            try:
                for item in service.generate_images(
                    ctx.manager, settings, models, scorer=alignment_scorer(), progress=on_step,
                    previews=on_preview if previews else None,
                ):  # fmt: skip
                    events.put(("done", item[0], item))
            except BaseException as err:  # noqa: BLE001 - re-raised below, in the event's own thread
                events.put(("failed", None, err))
            finally:
                events.put(("end", None, None))

        worker = threading.Thread(
            target=contextvars.copy_context().run, args=(sample_all,), name="generate", daemon=True
        )
        worker.start()
        last_yield = time.monotonic()
        try:
            while True:
                kind, model_id, payload = events.get()
                if kind == "end":
                    break
                if kind == "failed":
                    raise payload
                if kind == "step":
                    done, total = payload
                    progress((done, total), desc=f"{model_id}: step {done}/{total}")
                    if previews:
                        texts[model_id] = _running_markdown(model_id, done, total, model_id in images)
                        if time.monotonic() - last_yield >= LIVE_STEP_SECONDS:
                            last_yield = time.monotonic()
                            yield outputs()
                elif kind == "preview":
                    done, total, picture = payload
                    images[model_id] = picture
                    texts[model_id] = _running_markdown(model_id, done, total, True)
                    last_yield = time.monotonic()
                    yield outputs()
                else:
                    _, image, record = payload
                    images.pop(model_id, None)  # a preview never stands in for a failed model's picture
                    if image is not None:
                        images[model_id] = image
                    texts[model_id] = _panel_markdown(record, model_id)
                    records.append(record.as_dict())
                    upcoming = models.index(model_id) + 1
                    if upcoming < len(models):
                        texts[models[upcoming]] = _panel_markdown(None, models[upcoming], "running…")
                    last_yield = time.monotonic()
                    yield outputs()
        finally:
            finished.set()
        yield outputs(_zip_results(settings, images, records) if images else None)

    return generate


# An example for messages, from the registry: the first generator with a step count.
_OVERRIDES_EXAMPLE = json.dumps(
    {next(m for m in GENERATOR_IDS if "steps" in REGISTRY[m].options_for("full")): {"steps": 20}}
)


def parse_overrides(overrides: dict | str | None) -> dict[str, dict[str, Any]]:
    """The API's per-model options argument, JSON text (as the README's example sends it) or a dict, as a dict."""
    if not overrides:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise gr.Error(f"Per-model overrides must be JSON like {_OVERRIDES_EXAMPLE}: {err}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise gr.Error(f"Per-model overrides must map model ids to options, like {_OVERRIDES_EXAMPLE}.")
    unknown = [m for m in overrides if m not in GENERATOR_IDS]
    if unknown:
        raise gr.Error(f"Per-model overrides name unknown model(s) {', '.join(map(str, unknown))}.")
    return overrides


def merged_options(field_options: dict | None, overrides: dict | str | None) -> dict[str, dict[str, Any]]:
    """The option fields' values with the API's overrides on top, per model id."""
    merged = {m: dict(o) for m, o in (field_options or {}).items() if o}
    for model_id, options in parse_overrides(overrides).items():
        merged[model_id] = {**merged.get(model_id, {}), **options}
    return merged


def option_fields(availability: dict[str, str | None]) -> list[tuple[str, Option]]:
    """(model id, option) of every option field the Text → Image tab shows, in order: each generator's declared
    options under the profile its weights resolve to."""
    return [
        (model_id, option)
        for model_id in GENERATOR_IDS
        for option in REGISTRY[model_id].options_for(availability.get(model_id) or "full").values()
        if option.ui
    ]


def options_from_fields(fields: list[tuple[str, Option]], *values: Any) -> dict[str, dict[str, Any]]:
    """The option fields' values (in :func:`option_fields` order) as ``{model id: {option: value}}``;
    blank fields, "default" and values equal to the default are left out (the model's default applies)."""
    options: dict[str, dict[str, Any]] = {}
    for (model_id, option), value in zip(fields, values, strict=True):
        if (
            inputs.is_blank(value)
            or value == "default"
            or (option.type == "bool" and value == option.default)
        ):
            continue
        options.setdefault(model_id, {})[option.name] = value
    return options


def alignment_scorer():
    """The prompt-alignment judge for generated images, or None while none is available."""
    try:
        from mmdemo.eval.alignment import score_alignment
    except ImportError:
        return None
    return score_alignment


def random_seed() -> int:
    return random.randint(0, 2**31 - 1)
