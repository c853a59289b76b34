"""What every captioner network offers to the shared training, evaluation and app code.

The four captioner families differ a lot inside (a Transformer decoder over ResNet tokens, a Q-Former
that decodes as BERT, a Q-Former feeding a frozen TinyLlama), but one training script
(``train/train_captioner.py``), one evaluation script (``train/evaluate_captioner.py``), one benchmark
and the app drive them all through two small surfaces defined here. A family module (e.g.
``mmdemo/models/xattn/network.py``) writes a :class:`CaptionNetwork` subclass, and a three-line
:class:`CaptionerAdapter` subclass in ``mmdemo/captioners/`` names it; the registry's ``adapter=`` points at
the adapter.

**1. The network** (:class:`CaptionNetwork`, an ``nn.Module``):

* ``config``: the family's config dataclass instance (``config_class``); ``config.json`` is
  ``dataclasses.asdict(config)`` plus two bookkeeping keys (see "Checkpoints").
* ``preprocess(images) -> pixel_values``: RGB PIL images (any size) to the frozen encoder's input
  ``(B, 3, H, W)`` with the encoder's own resizing and normalisation.
* ``encode_images(pixel_values) -> features``: the *frozen* vision part under ``no_grad``: a tensor or
  a flat ``dict[str, Tensor]``, batch first. The training script caches exactly this on disk.
* ``encoder_fingerprint() -> str``: changes whenever cached features would differ (encoder
  architecture and weights, input size, normalisation); part of the cache key.
* ``forward(features, captions) -> loss``: teacher-forced mean cross-entropy over caption tokens
  (``loss`` is an alias). It is ``forward`` so that accelerate's DDP wrapper sees it.
* ``generate(features, **options) -> list[str]``: batched decoding; options the family does not know
  raise ``ValueError``. Common options: ``max_new_tokens``, ``num_beams``.
* ``frozen_prefixes``: state-dict key prefixes of the frozen pretrained parts (``requires_grad=False``).

**2. How the training script builds a network for a model id** (all classmethods of the adapter
class named in the registry, which delegate to the network class)::

    cls = mmdemo.adapter_class(spec)                       # e.g. mmdemo.captioners.xattn:XAttnCaptioner
    config = spec.tiny_config if size == "tiny" else spec.full_config   (+ --config-override JSON)
    net = cls.network_for_training(config, TrainingInit(train_captions=[...], sources=..., init_dir=..., device=...))

``network_for_training`` builds the tokenizer (a vocabulary from ``train_captions``, or a pretrained
tokenizer), builds the network, fills the frozen parts and freezes them; :class:`TrainingInit` says where
those come from:

* full size: ``sources`` maps each *third-party* entry of ``spec.sources`` (every entry except our own
  ``OWN_WEIGHTS_REPO`` one) by its component name to a local folder, e.g. ``"vision"`` to the folder holding
  ``timm/resnet18.tv_in1k/model.safetensors``; the frozen parts are loaded from them strictly.
* tiny (demo): ``init_dir`` is a folder of *our* Shapes-pretrained tiny frozen parts (written by a
  pretraining script, e.g. ``train/pretrain_shapes_vision.py``, as ``config.json`` +
  ``model.safetensors``); ``None`` leaves them randomly initialised (tests, or training jointly when the
  family allows it).

``build_network(config, device="meta")`` (used by ``python -m mmdemo.params`` and the meta-device
tests) builds the same network without any weights, frozen parts already ``requires_grad=False``.

**3. Checkpoints** (``save_pretrained`` / ``from_pretrained``), one folder::

    config.json        asdict(config) + {"_network": "module:Class", "_frozen_included": bool}
    model.safetensors  the state dict (fp32, or fp16 with dtype=torch.float16; loaded back as fp32)
    <tokenizer files>  written by save_tokenizer (xattn: vocab.json)

``_frozen_included`` is True for demo checkpoints (our tiny frozen parts are ours and small) and False
for full-size ones (official encoder / LLM weights are not re-published: ``from_pretrained(folder,
sources={...})`` loads them from the third-party sources first). Loading is strict: the union of the
keys must be exactly the network's state dict.

**4. The adapter** (:class:`CaptionerAdapter`, implements :class:`mmdemo.interfaces.Captioner`):
``load(spec, weights, device)`` takes ``weights["captioner"]`` (our checkpoint) and, for full-size
weights, the frozen parts' folders by component name (``weights["vision"]``, ...); ``caption(images, **options)`` checks and converts each
image with :func:`mmdemo.inputs.load_image`, then preprocess -> encode_images -> generate in chunks of
``batch_size``. The decoding options are declared per model in the registry and checked before ``describe``
runs (:class:`mmdemo.interfaces.Captioner`); a family adds only its network.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from mmdemo.interfaces import CaptionCandidate, Captioner, CaptionRequest, CaptionResult

if TYPE_CHECKING:
    from mmdemo.registry import ModelSpec
    from mmdemo.weights import ResolvedWeights

Features = torch.Tensor | dict[str, torch.Tensor]
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def network_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def import_path(path: str) -> Any:
    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


def features_to(features: Features, device: torch.device | str, dtype: torch.dtype | None = None) -> Features:
    """Move features (tensor or dict) to a device; floating tensors optionally cast to ``dtype``."""

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

    return {k: move(v) for k, v in features.items()} if isinstance(features, dict) else move(features)


def features_index(features: Features, index: torch.Tensor | slice) -> Features:
    """Rows ``index`` of features (tensor or dict)."""
    return {k: v[index] for k, v in features.items()} if isinstance(features, dict) else features[index]


def features_cat(parts: list[Features]) -> Features:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


@dataclasses.dataclass(frozen=True)
class TrainingInit:
    """Where a network built for training takes its tokenizer and frozen parts from (see "How the training
    script builds a network" in the module docstring).

    Args:
        train_captions: the training captions a family learns its tokenizer from (when it learns one).
        sources: full size: the third-party component folders by name (``"vision"``, ...), loaded strictly.
        init_dir: tiny size: a folder of our Shapes-pretrained frozen parts; ``None`` leaves them random.
        device: where the built network is placed.
    """

    train_captions: Sequence[str] = ()
    sources: Mapping[str, Path] | None = None
    init_dir: Path | None = None
    device: str | torch.device = "cpu"


class CaptionNetwork(torch.nn.Module):
    """Base class of the four captioner networks (see the module docstring for the contract).

    Args:
        config: an instance of the subclass's ``config_class`` dataclass.
    """

    config_class: ClassVar[type]
    frozen_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # ----------------------------------------------------------------- what each family implements
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:  # (B, 3, H, W)
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> Features:
        """Frozen-encoder features; a tensor or a dict of tensors with batch as the first dimension."""
        raise NotImplementedError

    def encoder_fingerprint(self) -> str:
        """Changes whenever cached features would differ: encoder weights' identity, input size, normalisation."""
        raise NotImplementedError

    def forward(self, features: Features, captions: list[str]) -> torch.Tensor:
        """Teacher-forced mean cross-entropy of ``captions`` given ``features`` (a scalar)."""
        raise NotImplementedError

    def loss(self, features: Features, captions: list[str]) -> torch.Tensor:
        return self(features, captions)

    @torch.no_grad()
    def generate(self, features: Features, **options: Any) -> list[str]:
        raise NotImplementedError

    @classmethod
    def build(
        cls, config: dict[str, Any] | Any, device: str | torch.device = "cpu", **kwargs: Any
    ) -> CaptionNetwork:
        """The network with random (or, on ``meta``, no) weights; frozen parts already frozen."""
        raise NotImplementedError

    @classmethod
    def for_training(cls, config: dict[str, Any], init: TrainingInit) -> CaptionNetwork:
        """See "How the training script builds a network" in the module docstring."""
        raise NotImplementedError

    def load_frozen_from_sources(self, sources: Mapping[str, Path]) -> None:
        """Fill the frozen parts from the official third-party files (full size), strictly."""
        raise NotImplementedError

    def save_tokenizer(self, folder: Path) -> None:
        """Write the tokenizer files next to the weights (no-op when the family has none of its own)."""

    @classmethod
    def load_tokenizer_kwargs(cls, folder: Path, config: Any) -> dict[str, Any]:
        """Keyword arguments for :meth:`build` read from a checkpoint folder (e.g. ``{"vocab": ...}``)."""
        return {}

    # ----------------------------------------------------------------- shared machinery
    def frozen(self) -> CaptionNetwork:
        """Set ``requires_grad=False`` on every parameter under ``frozen_prefixes``."""
        for name, param in self.named_parameters():
            if name.startswith(self.frozen_prefixes):
                param.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> CaptionNetwork:
        # Frozen parts stay in eval mode (BatchNorm statistics, dropout) even while the rest trains.
        super().train(mode)
        for name, module in self.named_modules():
            if name and name.startswith(self.frozen_prefixes):
                module.eval()
        return self

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def save_pretrained(
        self, folder: str | Path, *, include_frozen: bool = True, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) to ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, tensor in self.state_dict().items():
            if not include_frozen and name.startswith(self.frozen_prefixes):
                continue
            tensor = tensor.detach().to("cpu")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor.contiguous()
        config = {
            **self.config_dict(),
            "_network": network_path(type(self)),
            "_frozen_included": include_frozen,
        }
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / WEIGHTS_NAME)  # a crash mid-write never leaves a half checkpoint behind
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        self.save_tokenizer(folder)
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        sources: Mapping[str, Path] | None = None,
        device: str | torch.device = "cpu",
    ) -> CaptionNetwork:
        """Rebuild a checkpoint written by :meth:`save_pretrained`, strictly, in fp32, in eval mode.

        ``sources`` are the third-party folders for full-size checkpoints saved without their frozen parts.
        """
        from mmdemo.weights import load_state_dict, read_config

        folder = Path(folder)
        raw = read_config(folder)
        network_cls = import_path(raw.pop("_network")) if "_network" in raw else cls
        frozen_included = bool(raw.pop("_frozen_included", True))
        config = network_cls.config_class(**raw)
        kwargs = network_cls.load_tokenizer_kwargs(folder, config)
        with torch.device("meta"):
            network = network_cls.build(config, device="meta", **kwargs)
        network = network.to_empty(device=device)
        state = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_state_dict(folder / WEIGHTS_NAME).items()
        }
        if not frozen_included:
            if not sources:
                raise ValueError(
                    f"{folder} holds only the trained parts; pass the folders of the pretrained frozen parts "
                    "(sources=...), or load it through mmdemo.load_captioner(id, profile='full')"
                )
            network.load_frozen_from_sources(sources)
            frozen = {k: v for k, v in network.state_dict().items() if k.startswith(network.frozen_prefixes)}
            state = {**frozen, **state}
        network.load_state_dict(state, strict=True, assign=False)
        network.post_load()
        return network.frozen().eval()

    def post_load(self) -> None:
        """Recompute non-persistent buffers after weights were loaded into an ``empty`` network."""

    # ----------------------------------------------------------------- candidates and attention maps
    # What attention_maps shows, in words for the user; empty when the family offers no maps.
    attention_note: ClassVar[str] = ""
    # The part of the picture the maps' grid covers: "whole" (resized to a square) or "centre" (its centred square).
    attention_view: str = "whole"

    @torch.no_grad()
    def generate_candidates(self, features: Features, n: int, **options: Any) -> list[list[str]]:
        """Up to ``n`` captions per image, best first (the family's n-best); by default its one caption."""
        return [[caption] for caption in self.generate(features, **options)]

    @torch.no_grad()
    def caption_logprobs(self, features: Features, captions: list[str]) -> list[float]:
        """Mean log-probability per token of ``captions[i]`` (its tokens and end mark) given row ``i`` of
        ``features``, from one teacher-forced pass: the model's own distribution, no decoding penalties."""
        raise NotImplementedError(f"{type(self).__name__} does not score captions")

    @torch.no_grad()
    def attention_maps(self, features: Features, captions: list[str]) -> list[tuple[list[str], torch.Tensor]]:
        """Per caption: its words and, per word, a map ``(rows, cols)`` over the image grid summing to 1
        (``attention_note`` says what it is)."""
        raise NotImplementedError(f"{type(self).__name__} does not show where it looked")


def beam_search(
    step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    start: torch.Tensor,
    *,
    beams: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
    num_return: int = 1,
) -> torch.Tensor:
    """Batched beam search; each image's ``num_return`` best beams, best length-normalised score first.

    ``start``: (B, 1) first tokens. ``step(tokens, origin)`` gets the beams so far, (B * beams, T), and the rows of
    the previous step's beams they continue (``None`` at the first step: a family with a cache reorders it by
    ``origin``), and returns next-token log-probabilities (B * beams, vocab), forbidden tokens at ``-inf``.
    Scores are summed log-probabilities divided by length (words + end mark) to ``length_penalty``. Returns
    (B * num_return, 1 + steps) ids, ``pad_id`` after each sequence's first ``eos_id``.
    """
    b, k, device = start.shape[0], beams, start.device
    tokens = start.repeat_interleave(k, 0)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick duplicates
    ended = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    origin: torch.Tensor | None = None
    for _ in range(max_new_tokens):
        logp = step(tokens, origin).float()
        # An ended beam continues only with its end mark at no cost, so it keeps its score and its place.
        logp[ended] = float("-inf")
        logp[ended, eos_id] = 0.0
        vocab_size = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(b, k * vocab_size)
        scores, flat = total.topk(k, dim=-1)  # (B, K)
        origin = (flat // vocab_size + torch.arange(b, device=device)[:, None] * k).view(-1)
        next_ids = (flat % vocab_size).view(-1)
        tokens = torch.cat([tokens[origin], next_ids[:, None]], dim=1)
        lengths = lengths[origin] + (~ended[origin]).float()
        ended = ended[origin] | (next_ids == eos_id)
        if ended.all():
            break
    normalised = (scores.view(-1) / lengths.clamp(min=1) ** length_penalty).view(b, k)
    order = normalised.argsort(dim=-1, descending=True, stable=True)[:, :num_return]
    out = tokens[(order + torch.arange(b, device=device)[:, None] * k).view(-1)]
    is_eos = (out == eos_id).long()
    return out.masked_fill(is_eos.cumsum(1) - is_eos > 0, pad_id)  # after the first end mark only padding


def mean_token_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per row, the mean log-softmax probability of ``targets`` where ``mask`` is true; (B, T, V), (B, T), (B, T)."""
    logp = logits.float().log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    mask = mask.to(logp.dtype)
    return ((logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()


def words_from_pieces(
    caption: str, offsets: list[tuple[int, int]], maps: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """Group sub-word maps into whitespace words of ``caption``: a word's map is the mean of its pieces' maps.

    ``offsets``: each piece's character span in ``caption`` (a tokenizer's offset mapping); pieces with an
    empty span (special tokens, the end mark) are dropped. Returns the words and ``(words, rows, cols)``.
    """
    spans, start = [], 0
    for word in caption.split():
        start = caption.index(word, start)
        spans.append((word, start, start + len(word)))
        start += len(word)
    words, grouped = [], []
    for word, begin, end in spans:
        pieces = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > begin]
        if pieces:
            words.append(word)
            grouped.append(maps[pieces].mean(0))
    if not grouped:
        return [], maps.new_zeros((0, *maps.shape[1:]))
    return words, torch.stack(grouped)


class CaptionerAdapter(Captioner):
    """The uniform :class:`~mmdemo.interfaces.Captioner` on top of a :class:`CaptionNetwork`.

    A family subclasses it, sets ``network_class`` and ``param_note``, and is done.
    """

    network_class: ClassVar[type[CaptionNetwork]]

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, network: CaptionNetwork, device: str):
        self.spec = spec
        self.weights = weights
        self.network = network
        self.device = device

    # --------------------------------------------------------------------- construction
    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> CaptionNetwork:
        return cls.network_class.build(config, device=device)

    @classmethod
    def network_for_training(cls, config: dict[str, Any], init: TrainingInit) -> CaptionNetwork:
        return cls.network_class.for_training(config, init)

    @classmethod
    def load(
        cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None
    ) -> CaptionerAdapter:
        if device is None:
            from mmdemo.runtime import default_device

            device = default_device()
        # "captioner" is our trained checkpoint; every other component (present only for full-size weights,
        # whose frozen third-party parts are not re-published) is a frozen part's source folder by name.
        sources = {name: path for name, path in weights.items() if name != "captioner"}
        network = cls.network_class.from_pretrained(
            weights["captioner"], sources=sources or None, device=device
        )
        return cls(spec, weights, network, device)

    def to(self, device: str) -> CaptionerAdapter:
        self.network.to(device)
        self.device = device
        return self

    # --------------------------------------------------------------------- inference
    def describe(self, images: list[Any], request: CaptionRequest) -> list[CaptionResult]:
        """One result per image. ``images``: PIL images, paths, bytes or arrays (converted by
        :func:`mmdemo.inputs.load_image`, which raises :class:`~mmdemo.inputs.InputError` with a message for
        the user), decoded in chunks of ``batch_size`` with the network's decoding options (checked already)."""
        from mmdemo.inputs import load_image

        decoding = dict(request.options)
        batch_size = decoding.pop("batch_size")
        rgb = [load_image(image).value for image in images]
        results: list[CaptionResult] = []
        self.network.eval()
        with torch.inference_mode():
            for start in range(0, len(rgb), batch_size):
                pixels = self.network.preprocess(rgb[start : start + batch_size]).to(self.device)
                features = self.network.encode_images(pixels)
                captions = self.network.generate(features, **decoding)
                candidates = self._candidates(features, captions, request.candidates, decoding)
                results += [
                    CaptionResult(caption, settings=dict(decoding), candidates=scored)
                    for caption, scored in zip(captions, candidates)
                ]
        return results

    def _candidates(
        self, features: Features, captions: list[str], n: int, decoding: dict[str, Any]
    ) -> list[list[CaptionCandidate]]:
        """Per image: its caption and the best ``n - 1`` other n-best captions, each scored, best score first
        (``n`` 0: none, and nothing computed)."""
        if n == 0:
            return [[] for _ in captions]
        pools = [[caption] for caption in captions]
        if n > 1:
            for pool, alternatives in zip(pools, self.network.generate_candidates(features, n, **decoding)):
                pool += [c for c in dict.fromkeys(alternatives) if c not in pool][: n - 1]
        rows = torch.tensor([i for i, pool in enumerate(pools) for _ in pool])
        flat = [caption for pool in pools for caption in pool]
        per_candidate = features_index(features, rows.to(self.device))
        scores = iter(self.network.caption_logprobs(per_candidate, flat))
        matches = iter(self.match_probabilities(per_candidate, flat) or [None] * len(flat))
        scored = [[CaptionCandidate(caption, float(next(scores)), next(matches)) for caption in pool] for pool in pools]
        return [sorted(pool, key=lambda c: -c.mean_logprob) for pool in scored]

    def match_probabilities(self, features: Features, captions: list[str]) -> list[float] | None:
        """P(caption ``i`` matches the picture of row ``i``) from an image-text match head, where the model
        has one loaded; ``None`` (the default) where it has none."""
        return None

    @property
    def attention_note(self) -> str:  # type: ignore[override]
        return self.network_class.attention_note

    def attend(self, image: Any, caption: str | None = None) -> CaptionResult:
        """Where the network looked for each word (see :meth:`CaptionNetwork.attention_maps`)."""
        from mmdemo.inputs import caption_request, load_image

        if not self.attention_note:
            return super().attend(image, caption)
        rgb = load_image(image).value
        self.network.eval()
        with torch.inference_mode():
            features = self.network.encode_images(self.network.preprocess([rgb]).to(self.device))
            if caption is None or not caption.strip():
                decoding = dict(caption_request(self.spec, {}, profile=self.weights.profile).options)
                decoding.pop("batch_size")
                caption = self.network.generate(features, **decoding)[0]
            words, maps = self.network.attention_maps(features, [caption.strip()])[0]
        view = {"note": self.attention_note, "view": self.network.attention_view}
        return CaptionResult(caption.strip(), settings=view, tokens=words, attention=maps.float().cpu().numpy())
