"""The two uniform interfaces every model implements, so the app and the scripts treat them alike.

A captioner turns a batch of RGB images into captions; a generator turns one prompt and one seed
into one image. Each family module subclasses one of these and is named in the registry; the app
never imports a family module directly.

The contract, the same for every model:

* a call is checked once, against the model's declared options (:class:`mmdemo.registry.Option`), into a typed
  request (:class:`GenerationRequest`, :class:`CaptionRequest`) by :mod:`mmdemo.inputs`; an adapter receives
  that request and only samples (``Generator.sample``, ``Captioner.describe``);
* it answers with a typed result (:class:`GenerationResult`, :class:`CaptionResult`): the output, the settings
  actually used, the notices for the user and the time taken;
* the same seed and settings on the same device give the same picture.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from mmdemo.registry import ModelSpec
    from mmdemo.weights import ResolvedWeights

Preset = Literal["fast", "report"]
PRESETS: tuple[str, ...] = ("fast", "report")
# Called by generators as sampling advances: (steps done, steps in all).
ProgressCallback = Callable[[int, int], None]
# Called by generators asked for previews, with a picture of the sample so far (the final picture's size):
# (steps done, steps in all, picture). See :mod:`mmdemo.previews`.
PreviewCallback = Callable[[int, int, "Image.Image"], None]


class ModelFamily:
    """What every adapter shares: how to build its network from a registry config without weights.

    ``build_network(config, device="meta")`` lets ``python -m mmdemo.params`` count parameters and list
    state-dict names of the full-size model without downloading anything; frozen parts must have
    ``requires_grad=False`` so "trainable" is read off the module itself. ``param_note`` explains how our
    count compares with the report's.
    """

    param_note: str = ""

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> torch.nn.Module:
        raise NotImplementedError(f"{cls.__name__} does not build a network from a config")


@dataclass(frozen=True)
class CaptionRequest:
    """Decoding settings for one captioner, checked against its declared options (:func:`mmdemo.inputs.caption_request`).

    ``options`` holds every declared option, the given value or the model's default; ``notices`` says what was
    ignored (an option this model does not take).
    """

    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    profile: str = "full"
    candidates: int = 0  # scored captions to return (1..MAX_CANDIDATES; 0: none scored), checked by mmdemo.inputs


MAX_CANDIDATES = 5


@dataclass
class CaptionCandidate:
    """One candidate caption and how likely the model finds it.

    ``mean_logprob``: the mean natural-log probability per token of the caption and its end mark, from one
    teacher-forced pass of the caption through the decoder (the model's own distribution: no beam length
    penalty, no repetition penalty). ``match``: an image-text match probability where the model has such a
    head loaded, else ``None``.
    """

    caption: str
    mean_logprob: float
    match: float | None = None


@dataclass
class CaptionResult:
    """One caption and how it was made.

    ``candidates``: when asked for, the caption and up to ``request.candidates - 1`` alternatives (beam search
    n-best), best ``mean_logprob`` first; empty when none were asked for. ``tokens`` / ``attention``: filled by :meth:`Captioner.attend` only: the caption's
    words and, per word, where the model looked (an array ``(words, rows, cols)``, each map summing to 1).
    """

    caption: str
    settings: dict[str, Any] = field(default_factory=dict)  # the decoding options used
    notices: list[str] = field(default_factory=list)
    seconds: float | None = None  # the batch's time divided by its size
    candidates: list[CaptionCandidate] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    attention: Any = None  # numpy array (words, rows, cols) or None


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-image call for one model, checked (:func:`mmdemo.inputs.check_generation`): adapters trust it.

    ``options`` holds every option the model declares, the given value or the default for this preset, profile
    and device (``request["steps"]``); ``notices`` are the checks' messages (a prompt cut, an option ignored).
    ``preview``: where the adapter sends a few pictures of the sample while it samples (None: no previews, and
    no time spent on them); previews never change the final picture.
    """

    model: str
    prompt: str
    seed: int
    preset: Preset = "fast"
    negative_prompt: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    profile: str = "full"
    device: str = "cpu"
    preview: PreviewCallback | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> Any:
        return self.options[name]


@dataclass
class GenerationResult:
    """One picture and how it was made.

    ``settings``: what the sampler actually used: seed, preset and every option after the model's own
    adjustments (e.g. the aspect-ratio template Infinity snapped to), plus facts such as its number of scales.
    """

    image: Image.Image
    settings: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float | None = None


class Captioner(ModelFamily, ABC):
    """Image -> text. Subclasses build from a spec plus resolved weights and keep their own device."""

    spec: ModelSpec
    weights: ResolvedWeights
    device: str

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None) -> Captioner:
        """Build the model and fill it from ``weights`` (strictly: every parameter, every key)."""

    def caption(self, images: list[Any], *, candidates: int | None = None, **options: Any) -> list[CaptionResult]:
        """One result per image (RGB PIL images of any size, or anything :func:`mmdemo.inputs.load_image` reads).

        ``options`` are checked against the model's declared options (an unknown one becomes a notice, an
        out-of-range one an :class:`~mmdemo.inputs.InputError`); ``candidates`` (1 to ``MAX_CANDIDATES``) is how
        many scored captions each result carries (``None``: none, and no scoring pass: what scripts use).
        """
        from mmdemo.inputs import InputError, caption_request

        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InputError("No image was given: upload, paste or pick an example image.")
        request = caption_request(self.spec, options, profile=self.weights.profile, candidates=candidates)
        return self.run(list(images), request)

    def run(self, images: list[Any], request: CaptionRequest) -> list[CaptionResult]:
        """Caption ``images`` under a checked request; adds the request's notices and the time per image."""
        start = time.perf_counter()
        results = self.describe(images, request)
        seconds = round((time.perf_counter() - start) / max(len(results), 1), 3)
        for result in results:
            result.notices = list(dict.fromkeys([*request.notices, *result.notices]))
            result.seconds = seconds
        return results

    @abstractmethod
    def describe(self, images: list[Any], request: CaptionRequest) -> list[CaptionResult]:
        """One :class:`CaptionResult` per image, decoded with ``request.options`` (already checked)."""

    # What :meth:`attend`'s maps are, in words; empty when the model cannot say where it looked.
    attention_note: str = ""

    def attend(self, image: Any, caption: str | None = None) -> CaptionResult:
        """Where the model looked for each word of ``caption`` (blank: its own default caption of ``image``).

        Returns a result with ``tokens`` (the words) and ``attention`` (one map per word over the image grid).
        """
        raise NotImplementedError(f"{self.spec.display_name} does not show where it looked")

    def to(self, device: str) -> Captioner:
        """Move to ``device`` (used by the model manager to offload); a no-op by default."""
        return self


class Generator(ModelFamily, ABC):
    """Text -> image with one uniform call for every generator."""

    spec: ModelSpec
    weights: ResolvedWeights
    device: str

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None) -> Generator:
        """Build the model and fill it from ``weights``."""

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        preset: Preset = "fast",
        negative_prompt: str = "",
        progress: ProgressCallback | None = None,
        preview: PreviewCallback | None = None,
        **options: Any,
    ) -> GenerationResult:
        """One picture for ``prompt``; ``options`` are the model's declared options (``steps=``, ``guidance=``, ...).

        ``preview(done, total, picture)`` receives a few pictures of the sample while it forms.

        Checks everything first (:func:`mmdemo.inputs.check_generation`: bad values raise
        :class:`~mmdemo.inputs.InputError`, options this model does not take become notices), then samples.
        """
        from mmdemo.inputs import check_generation

        request = check_generation(
            self.spec, prompt=prompt, seed=seed, preset=preset, negative_prompt=negative_prompt, options=options,
            profile=self.weights.profile, device=self.device,
        )  # fmt: skip
        if preview is not None:
            request = replace(request, preview=preview)
        return self.run(request, progress)

    def run(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        """Sample a checked request; adds the request's notices, the seed and preset, and the time taken."""
        start = time.perf_counter()
        result = self.sample(request, progress)
        result.settings = {"seed": request.seed, "preset": request.preset, **result.settings}
        result.notices = list(dict.fromkeys([*request.notices, *result.notices]))
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    @abstractmethod
    def sample(self, request: GenerationRequest, progress: ProgressCallback | None) -> GenerationResult:
        """One picture for a checked request. Noise comes from a fresh ``torch.Generator`` seeded with
        ``request.seed`` for every call, so the same request on the same device gives the same picture."""

    def to(self, device: str) -> Generator:
        return self
