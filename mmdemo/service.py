"""What the app does, without the UI: caption an image, generate images, one record per model.

Every function here takes plain Python values and a :class:`~mmdemo.runtime.ModelManager`, and
never raises for a model's failure: each model's error is caught and put in its own record, so one
failing model never breaks the others. Input mistakes (an empty prompt, an unreadable image) raise
:class:`~mmdemo.inputs.InputError` once, before any model runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mmdemo import inputs
from mmdemo.interfaces import GenerationRequest
from mmdemo.monitoring import new_request_id
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, get_spec
from mmdemo.runtime import ModelManager, OutOfMemory
from mmdemo.weights import WeightsUnavailable

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"


def _error_text(err: BaseException) -> str:
    """What a panel shows for a failure: our own errors verbatim, anything else with its type."""
    if isinstance(err, (WeightsUnavailable, inputs.InputError, OutOfMemory)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _log_failure(action: str, model_id: str, err: BaseException) -> None:
    if isinstance(err, (WeightsUnavailable, inputs.InputError)):
        log.info("%s with %s: %s", action, model_id, err)  # expected states, explained in the panel
    else:
        log.warning("%s with %s failed:\n%s", action, model_id, traceback.format_exc())


def _weights_label(model: Any) -> str:
    weights = getattr(model, "weights", None)
    return getattr(weights, "profile", "unknown")


# ------------------------------------------------------------------------------------------------ captioning


@dataclass
class CaptionRecord:
    model: str
    caption: str | None
    seconds: float | None
    error: str | None = None
    weights: str | None = None  # "demo" or "full"
    bleu: dict[str, float] | None = None  # per-image BLEU against the references, when there are any
    notices: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the decoding options used
    # [{"caption", "mean_logprob", "match"}, ...] best mean_logprob first; the caption is always one of them
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def caption_targets(choice: str) -> list[str]:
    """``"all"`` or one captioner id -> the ids to run."""
    if choice == "all":
        return list(CAPTIONER_IDS)
    return [get_spec(choice, "captioner").id]


def caption_image(
    manager: ModelManager,
    image: Any,
    choice: str,
    *,
    references: list[str] | None = None,
    options: dict[str, Any] | None = None,
    candidates: Any = 1,
) -> tuple[list[CaptionRecord], list[str]]:
    """Caption ``image`` with one captioner or ``"all"``; returns one record per model and input notices.

    ``options`` (decoding settings, blank = each model's default) go to every target and are checked against
    each one's declaration: an option a model does not take is a notice in its record, a value outside its
    range an error in its record; the other models run regardless. ``candidates`` (1 to 5, checked here once,
    before any model runs): how many scored captions each record carries.
    """
    count = inputs.check_candidates(candidates)
    checked = inputs.load_image(image)
    targets = caption_targets(choice)
    records = []
    request_id = new_request_id()
    for model_id in targets:
        start = time.perf_counter()
        try:
            result, weights = manager.run(  # retries once after an out-of-memory error, and logs the run
                model_id,
                lambda model: (
                    model.caption([checked.value], candidates=count, **(options or {}))[0], _weights_label(model)
                ),
                action="caption",
                request_id=request_id,
            )
            record = CaptionRecord(
                model_id, result.caption, round(time.perf_counter() - start, 3), weights=weights,
                notices=list(result.notices), settings=dict(result.settings),
                candidates=[
                    {"caption": c.caption, "mean_logprob": round(c.mean_logprob, 4), "match": c.match}
                    for c in result.candidates
                ],
            )  # fmt: skip
            if references:
                from mmdemo.eval.bleu import sentence_bleu_scores

                record.bleu = sentence_bleu_scores(result.caption, references)
        except Exception as err:  # noqa: BLE001 - one model's failure is that model's record, never the page's
            _log_failure("caption", model_id, err)
            record = CaptionRecord(
                model_id, None, round(time.perf_counter() - start, 3), error=_error_text(err)
            )
        records.append(record)
    return records, checked.notices


@dataclass
class Example:
    """A dataset image shipped in ``assets/examples`` with its reference captions."""

    path: Path
    references: list[str]


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """Examples in Flickr8k layout (``Images/`` + ``captions.txt``); empty when the folder is absent."""
    captions = folder / "captions.txt"
    if not captions.is_file():
        return []
    from mmdemo.data.flickr8k import load_flickr8k

    corpus = load_flickr8k(folder)
    return [Example(corpus.image_path(name), corpus.captions[name]) for name in corpus.images]


def references_for(image_path: str | Path | None, examples: list[Example]) -> list[str] | None:
    """Reference captions of an example image, recognised by its bytes (the UI copies files around)."""
    if not image_path or not Path(image_path).is_file():
        return None
    digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    for example in examples:
        if hashlib.sha256(example.path.read_bytes()).hexdigest() == digest:
            return example.references
    return None


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class GenerateRecord:
    model: str
    seconds: float | None
    seed: int
    weights: str | None
    score: float | None = None
    score_name: str | None = None  # "CLIP score" or "ShapesEval", whichever judged the image
    error: str | None = None
    notices: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # what the model actually used (steps, size, ...)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerateSettings:
    """One text-to-image request, checked once: the shared settings and a typed request per generator."""

    common: inputs.CommonSettings
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model options as given
    requests: dict[str, GenerationRequest] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.common.prompt

    @property
    def seed(self) -> int:
        return self.common.seed

    @property
    def preset(self) -> str:
        return self.common.preset

    @property
    def notices(self) -> list[str]:
        return list(self.common.notices)

    def request_for(self, model_id: str, profile: str, device: str) -> GenerationRequest:
        """The checked request of ``model_id`` for the weights and device it actually runs with."""
        request = self.requests.get(model_id)
        if request is not None and request.profile == profile and request.device == str(device):
            return request
        # Checked against another profile than the one that loaded (rare: weights appeared or went since).
        spec = get_spec(model_id, "generator")
        return inputs.generation_request(
            spec, self.common, self.options.get(model_id), profile=profile, device=device
        )

    def as_dict(self) -> dict[str, Any]:
        """What the request was, for the archive: shared settings and each model's options as given."""
        return {**asdict(self.common), "options": self.options}


def _profile_for(model_id: str, profiles: Mapping[str, str | None] | str) -> str:
    if isinstance(profiles, str):
        if profiles in ("full", "demo"):
            return profiles
        from mmdemo.weights import available_profile

        return available_profile(model_id, profiles) or "full"  # type: ignore[arg-type]
    return profiles.get(model_id) or "full"


def check_generate_settings(
    prompt: Any,
    seed: Any,
    preset: Any = "fast",
    negative_prompt: Any = "",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    profiles: Mapping[str, str | None] | str = "auto",
    device: str = "cpu",
) -> GenerateSettings:
    """Check everything once, before any model runs, so a typo is one clear message rather than five failed panels.

    ``options`` maps generator ids to their options (``{"pixel-diffusion": {"steps": 20}}``), each checked
    against that model's declaration under the profile it runs with (``profiles``: a profile for every model,
    or one per model id; ``"auto"`` looks at what resolves) and ``device`` (defaults differ on a CPU).
    """
    common = inputs.check_common(prompt, seed, preset, negative_prompt)
    options = dict(options or {})
    unknown = [m for m in options if m not in GENERATOR_IDS]
    if unknown:
        raise inputs.InputError(
            f"Options name unknown generator(s) {', '.join(map(str, unknown))}; valid: {', '.join(GENERATOR_IDS)}."
        )
    settings = GenerateSettings(common, {m: dict(o or {}) for m, o in options.items()})
    for model_id in GENERATOR_IDS:
        settings.requests[model_id] = inputs.generation_request(
            get_spec(model_id), common, settings.options.get(model_id),
            profile=_profile_for(model_id, profiles), device=device,
        )  # fmt: skip
    return settings


def generate_images(
    manager: ModelManager,
    settings: GenerateSettings,
    model_ids: list[str],
    *,
    scorer: Callable[[Any, str, str], tuple[float | None, str | None]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    previews: Callable[[str, int, int, Any], None] | None = None,
) -> Iterator[tuple[str, Any, GenerateRecord]]:
    """Yield ``(model_id, image or None, record)`` as each model finishes, in the order given.

    ``scorer(image, prompt, weights_profile) -> (score, score name)`` judges prompt alignment.
    ``progress(model_id, done, total)`` reports sampling steps. ``previews(model_id, done, total, picture)``
    receives a few pictures of each sample while it forms (None: none are drawn; the final pictures are the
    same either way).
    """
    unknown = [m for m in model_ids if m not in GENERATOR_IDS]
    if unknown:
        raise inputs.InputError(
            f"Unknown generator(s) {', '.join(unknown)}; valid: {', '.join(GENERATOR_IDS)}."
        )
    request_id = new_request_id()
    for model_id in model_ids:
        start = time.perf_counter()
        request = settings.requests[model_id]
        record = GenerateRecord(model_id, None, settings.seed, None, notices=list(request.notices))
        image = None
        step_callback = (lambda done, total, m=model_id: progress(m, done, total)) if progress else None
        preview = (
            (lambda done, total, picture, m=model_id: previews(m, done, total, picture)) if previews else None
        )

        def run_model(
            model: Any, model_id=model_id, record=record, step_callback=step_callback, preview=preview
        ) -> Any:
            record.weights = _weights_label(model)
            device = getattr(model, "device", manager.device)
            request = settings.request_for(model_id, record.weights, device)
            if preview is not None:
                request = replace(request, preview=preview)
            return model.run(request, step_callback)

        try:
            # retries once after an out-of-memory error, and logs the run
            result = manager.run(
                model_id, run_model, action="generate", prompt=settings.prompt, request_id=request_id
            )
            image = result.image
            record.seconds = round(time.perf_counter() - start, 3)
            record.notices = list(result.notices)
            record.settings = dict(result.settings)
            if scorer is not None:
                try:
                    record.score, record.score_name = scorer(image, settings.prompt, record.weights or "")
                except Exception as err:  # noqa: BLE001 - a judge failing must not hide the image
                    log.warning("alignment score for %s failed: %s", model_id, err)
                    record.score_name = f"score unavailable ({type(err).__name__})"
        except Exception as err:  # noqa: BLE001 - one model's failure is that model's panel, never the page's
            _log_failure("generate", model_id, err)
            record.seconds = round(time.perf_counter() - start, 3)
            record.error = _error_text(err)
            image = None
        yield model_id, image, record
