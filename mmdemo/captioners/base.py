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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from mmdemo.interfaces import Captioner, CaptionRequest, CaptionResult

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
        captions: list[str] = []
        self.network.eval()
        with torch.inference_mode():
            for start in range(0, len(rgb), batch_size):
                pixels = self.network.preprocess(rgb[start : start + batch_size]).to(self.device)
                features = self.network.encode_images(pixels)
                captions.extend(self.network.generate(features, **decoding))
        return [CaptionResult(caption, settings=dict(decoding)) for caption in captions]
