"""BLIP-2 Q-Former captioners: ``qformer-bert`` and ``qformer-tinyllama``.

Both read a frozen EVA-CLIP ViT-g/14 (transformers' ``Blip2VisionModel``) through 32 learned queries and a
Q-Former (transformers' ``Blip2QFormerModel``), configured exactly as the BLIP-2 stage-1 checkpoint
``Salesforce/blip2-itm-vit-g`` (a ``Blip2ForImageTextRetrieval``). They differ in who writes the caption:

* ``qformer-bert``: the Q-Former itself, trained from scratch, decodes text as in BLIP-2's image-grounded
  generation: ``[DEC]`` replaces ``[CLS]``, the queries are a prefix that attends only to itself, every text
  token attends to all queries and causally to earlier text, and a BERT LM head (tied to the word embeddings)
  predicts the next WordPiece.
* ``qformer-tinyllama``: the pretrained Q-Former is fine-tuned, ``Linear(768, 2048)`` maps its 32 outputs into a
  frozen TinyLlama-1.1B-Chat, whose input is ``prompt tokens, BOS, 32 projected queries, caption + "\\n"``; the
  loss covers the caption tokens only; decoding is transformers ``generate(inputs_embeds=...)``, greedy,
  repetition penalty 1.5, cut at the end of the first sentence.

Our module names equal the official ones, so checkpoints map by prefix only (see :data:`BLIP2_ITM_USE` and
:func:`official_state_dict`): ``vision_model.*``, ``qformer.*``, ``query_tokens``, ``embeddings.*`` are
``Blip2ForImageTextRetrieval``'s own names; ``llm.<key>`` is TinyLlama's ``<key>``; ``language_projection.*``
and ``lm_head.*`` are ours. The Hub is not needed to build anything here: configurations are written out
below, full-size networks are built on the meta device to count and check parameters, and the same classes
at tiny size are trained on Shapes for the offline demo (``checkpoints/demo/<id>/README.md``).

The registry adapters are :mod:`mmdemo.captioners.qformer`; ``train/build_wordpiece_vocab.py`` writes a demo
BERT vocabulary with :func:`build_shapes_wordpiece`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.captioners.base import (
    CaptionNetwork,
    TrainingInit,
    beam_search,
    mean_token_logprobs,
    words_from_pieces,
)

if TYPE_CHECKING:
    from PIL import Image

# BLIP-2's image processor for the ITM checkpoints: bicubic resize to a square, OpenAI CLIP statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REPORT_PROMPT = "Generate a simple short caption:"
DEC_TOKEN = "[DEC]"  # BLIP-2 adds it to bert-base-uncased as the BOS of image-grounded generation (id 30522)

# Blip2VisionConfig keyword arguments. "eva-vit-g-14" is the vision tower of Salesforce/blip2-itm-vit-g
# (EVA-CLIP ViT-g/14 without its last block, 224 px); transformers 5.23's Blip2VisionConfig defaults are the
# same numbers, written out here so that a library default change cannot silently change the model. The tiny
# preset is the same class with only the sizes changed, so the two share everything else.
_EVA_VIT = dict(hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0, qkv_bias=True)
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "eva-vit-g-14": dict(
        _EVA_VIT, hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
        image_size=224, patch_size=14, initializer_range=1e-10,
    ),
    # Shapes-sized: 64 px images, 8 px patches -> 64 patch tokens + CLS. The real initializer_range (1e-10)
    # assumes pretrained weights; the tiny ViT is trained from scratch.
    "eva-vit-tiny": dict(
        _EVA_VIT, hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        image_size=64, patch_size=8, initializer_range=0.02,
    ),
}  # fmt: skip

# LlamaConfig keyword arguments. TinyLlama-1.1B-Chat-v1.0's config.json (public model card / Hub file):
# hidden 2048, 22 layers, 32 heads, 4 KV heads (GQA), SwiGLU 5632, vocab 32000, RoPE theta 10000, RMSNorm eps
# 1e-5, 2048 positions, untied output embedding, BOS 1 / EOS 2. 1,100,048,384 parameters. The tiny preset
# changes only the sizes.
_LLAMA = dict(
    rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False, bos_token_id=1,
    eos_token_id=2, attention_bias=False,
)  # fmt: skip
LLM_PRESETS: dict[str, dict[str, Any]] = {
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": dict(
        _LLAMA, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
    ),
    # Shapes-sized; its BPE tokenizer has at most 512 entries (train/pretrain_tiny_lm.py).
    "tiny-llama-shapes": dict(
        _LLAMA, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
    ),
}  # fmt: skip

# Keys of Salesforce/blip2-itm-vit-g's model.safetensors and what each model does with them. Every checkpoint
# key is either used (copied under the same name) or listed as unused here; anything else is an error.
BLIP2_ITM_USE: dict[str, tuple[str, ...]] = {
    # The report trains this Q-Former from scratch: only the frozen ViT (and its output LayerNorm) is taken.
    "qformer-bert": (r"^vision_model\.",),
    # Stage-1 vision encoder, Q-Former (query path) and query tokens; the text side of the Q-Former is unused.
    "qformer-tinyllama": (r"^vision_model\.", r"^qformer\.", r"^query_tokens$"),
}
BLIP2_ITM_UNUSED: dict[str, tuple[str, ...]] = {
    "qformer-bert": (
        r"^qformer\.",
        r"^query_tokens$",
        r"^embeddings\.",
        r"^vision_projection\.",
        r"^text_projection\.",
        r"^itm_head\.",
    ),
    # The captioner feeds only the 32 queries through the Q-Former, so the text FFNs (``intermediate``,
    # ``output``; the query path has ``intermediate_query``/``output_query``) and text embeddings never run.
    "qformer-tinyllama": (
        r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.",
        r"^embeddings\.",
        r"^vision_projection\.",
        r"^text_projection\.",
        r"^itm_head\.",
    ),
}
BLIP2_ITM_VOCAB = 30523  # bert-base-uncased (30522) + [DEC]
REPORT_PROMPT_TOKENS = 9  # the report's code pads the tokenised prompt (with its <s>) to 9 tokens


# ---------------------------------------------------------------------------------------------- configs


@dataclass
class _QFormerConfig:
    """Fields both Q-Former captioners share (keyword arguments of the registry's config dicts)."""

    vision: str = "eva-vit-g-14"  # a VISION_PRESETS key
    freeze_vision: bool = (
        True  # BLIP-2 keeps the ViT frozen; the qformer-bert demo trains its tiny ViT (card)
    )
    num_query_tokens: int = 32
    qformer_hidden: int = 768  # BERT-base width
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    cross_attention_frequency: int = 2  # cross-attention to the image in every other layer, as BLIP-2
    max_caption_tokens: int = 40  # training captions are cut here (Flickr8k captions: 95 % under 25 words)
    dropout: float = 0.1  # BERT's hidden and attention dropout

    def __post_init__(self) -> None:
        if self.vision not in VISION_PRESETS:
            raise ValueError(f"unknown vision preset {self.vision!r}; choose one of {sorted(VISION_PRESETS)}")
        if self.qformer_hidden % self.qformer_heads:
            raise ValueError(
                f"qformer_hidden {self.qformer_hidden} is not a multiple of {self.qformer_heads} heads"
            )
        if self.num_query_tokens < 1 or self.qformer_layers < 1 or self.cross_attention_frequency < 1:
            raise ValueError(
                "num_query_tokens, qformer_layers and cross_attention_frequency must be at least 1"
            )


@dataclass
class QFormerBertConfig(_QFormerConfig):
    """``qformer-bert``: a BERT-base-size Q-Former trained from scratch that decodes text from ``[DEC]``."""

    tokenizer: str = "bert-base-uncased"  # "bert-base-uncased" (full) or "shapes-wordpiece" (tiny demo)
    vocab_size: int = BLIP2_ITM_VOCAB  # WordPiece entries + [DEC]; the tokenizer must fit in it
    max_text_positions: int = 512  # BERT's position table
    label_smoothing: float = 0.1  # BLIP-2's LM loss (LAVIS BertLMHeadModel) smooths labels by 0.1


@dataclass
class QFormerLlamaConfig(_QFormerConfig):
    """``qformer-tinyllama``: pretrained Q-Former, ``Linear(qformer_hidden, llm_hidden)``, frozen Llama.

    ``prompt_format``: how the prompt and the caption are tokenised. ``"ours"`` (the demos'): the prompt's tokens,
    then BOS, the queries, the caption without special tokens. ``"report"``: as the report's code, the prompt with
    the tokenizer's ``<s>`` and padded with pad tokens (attended) to 9 tokens, then BOS, the queries, and the
    caption with its leading ``<s>``, which is a target too (the model learns to emit it first).
    """

    llm: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"  # an LLM_PRESETS key
    llm_hidden: int = 2048
    prompt: str = REPORT_PROMPT
    prompt_format: str = "ours"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_format not in ("ours", "report"):
            raise ValueError(f"prompt_format must be 'ours' or 'report', got {self.prompt_format!r}")
        if self.llm not in LLM_PRESETS:
            raise ValueError(f"unknown language model {self.llm!r}; choose one of {sorted(LLM_PRESETS)}")
        if LLM_PRESETS[self.llm]["hidden_size"] != self.llm_hidden:
            width = LLM_PRESETS[self.llm]["hidden_size"]
            raise ValueError(f"llm_hidden={self.llm_hidden} but {self.llm} has width {width}")


def vision_config(preset: str):
    from transformers import Blip2VisionConfig

    return Blip2VisionConfig(**VISION_PRESETS[preset])


def qformer_config(config: _QFormerConfig, *, text_input: bool, vocab_size: int):
    """Blip2QFormerConfig; ``text_input`` adds the text FFNs (used by ``[DEC]`` decoding, not by the LLM path)."""
    from transformers import Blip2QFormerConfig

    return Blip2QFormerConfig(
        vocab_size=vocab_size,
        hidden_size=config.qformer_hidden,
        num_hidden_layers=config.qformer_layers,
        num_attention_heads=config.qformer_heads,
        intermediate_size=config.qformer_intermediate,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=getattr(config, "max_text_positions", 512),
        cross_attention_frequency=config.cross_attention_frequency,
        encoder_hidden_size=VISION_PRESETS[config.vision]["hidden_size"],
        use_qformer_text_input=text_input,
    )


def llm_config(preset: str):
    from transformers import LlamaConfig

    return LlamaConfig(**LLM_PRESETS[preset])


def blip2_itm_reference_config():
    """The ``Blip2Config`` of Salesforce/blip2-itm-vit-g (as transformers' BLIP-2 conversion script writes it)."""
    from transformers import Blip2Config, Blip2QFormerConfig

    return Blip2Config(
        vision_config=VISION_PRESETS["eva-vit-g-14"],
        qformer_config=Blip2QFormerConfig(vocab_size=BLIP2_ITM_VOCAB, use_qformer_text_input=True).to_dict(),
        num_query_tokens=32,
        image_text_hidden_size=256,
    )


# ---------------------------------------------------------------------------------------------- helpers


def image_grounded_text_mask(num_queries: int, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BLIP-2's image-grounded generation mask, additive, shape (B, 1, Q+T, Q+T).

    Queries attend to all queries and to no text (so the image summary cannot peek at the caption); text
    tokens attend to every query and causally to earlier, non-padding text tokens.
    """
    batch, length = text_mask.shape
    total = num_queries + length
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=text_mask.device)
    allowed[:, :, :num_queries] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=text_mask.device))
    allowed[:, num_queries:, num_queries:] = causal & text_mask.bool()[:, None, :]
    mask = torch.zeros(batch, 1, total, total, dtype=dtype, device=text_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def first_sentence(text: str) -> str:
    """The report's cut: the text up to the end of its first sentence (or first line)."""
    text = text.strip().split("\n", 1)[0].strip()
    match = re.search(r"[.!?](\s|$)", text)
    return text[: match.start() + 1].strip() if match else text


def _pil_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image as PILImage

    if len(images) == 0:
        raise ValueError("no images to caption")
    arrays = []
    for image in images:
        if not isinstance(image, PILImage.Image):
            raise ValueError(f"expected PIL images, got {type(image).__name__}")
        resized = image.convert("RGB").resize((size, size), PILImage.BICUBIC)
        arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _rebuild_nonpersistent_buffers(module: nn.Module) -> None:
    """Recompute buffers that are not in state dicts, after ``to_empty`` left them uninitialised."""
    for sub in module.modules():
        names = getattr(sub, "_non_persistent_buffers_set", set())
        if not names:
            continue
        device = next(iter(b for n, b in sub.named_buffers(recurse=False))).device
        if hasattr(sub, "rope_type") and "inv_freq" in names:  # a transformers rotary embedding
            with torch.device("cpu"):
                fresh = type(sub)(sub.config)
            for name in names:
                getattr(sub, name).copy_(getattr(fresh, name).to(device))
        elif names == {"position_ids"}:
            buf = sub.position_ids
            buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))
        else:
            raise NotImplementedError(
                f"do not know how to rebuild buffers {sorted(names)} of {type(sub).__name__}"
            )


def _load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _short(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "none" if not keys else ", ".join(keys[:limit]) + more


def _check_max_new_tokens(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or not 1 <= int(value) <= limit:
        raise ValueError(f"max_new_tokens must be a whole number from 1 to {limit}, got {value!r}")
    return int(value)


def _reject_unknown(family: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"{family} does not know the decoding option(s) {sorted(options)}")


_EAGER_LOCK = threading.Lock()


@contextlib.contextmanager
def _eager_attention(*models: Any) -> Iterator[None]:
    """Run transformers ``models`` with written-out attention, the only kind that returns its weights. One pass
    at a time (a second one would switch the first back mid-pass); a caption decoded meanwhile computes the same
    attention either way."""
    with _EAGER_LOCK:
        before = [model.config._attn_implementation for model in models]
        for model in models:
            model.set_attn_implementation("eager")
        try:
            yield
        finally:
            for model, implementation in zip(models, before):
                model.set_attn_implementation(implementation)


def _maps_through_queries(to_queries: torch.Tensor, query_to_patches: torch.Tensor) -> torch.Tensor:
    """(T, Q) attention of each text position to the queries, renormalised over the queries, times (Q, P)
    query-to-patch attention: (T, rows, cols), each map summing to 1."""
    weights = to_queries / to_queries.sum(-1, keepdim=True).clamp(min=1e-12)
    maps = weights @ query_to_patches
    side = math.isqrt(maps.shape[-1])
    return maps.reshape(maps.shape[0], side, side)


# ---------------------------------------------------------------------------------------------- networks


class _QFormerNetwork(CaptionNetwork):
    """Vision encoder + query tokens + Q-Former: what both captioners share."""

    family: ClassVar[str] = ""
    config: _QFormerConfig

    def __init__(self, config: _QFormerConfig, *, qformer_text_input: bool, vocab_size: int):
        super().__init__(config)
        from transformers import Blip2QFormerModel, Blip2VisionModel

        self.tokenizer: Any = None
        self.vision_model = Blip2VisionModel(vision_config(config.vision))
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_hidden))
        self.qformer = Blip2QFormerModel(
            qformer_config(config, text_input=qformer_text_input, vocab_size=vocab_size)
        )
        if not self.query_tokens.is_meta:
            nn.init.normal_(self.query_tokens, std=0.02)  # LAVIS: normal(0, initializer_range)

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:  # type: ignore[override]
        # The ViT trunk is frozen; its output LayerNorm (BLIP-2's ``ln_vision``) trains with the Q-Former.
        return ("vision_model.embeddings.", "vision_model.encoder.") if self.config.freeze_vision else ()

    # -- construction (see mmdemo/captioners/base.py, "How the training script builds a network")
    @classmethod
    def build(
        cls,
        config: dict[str, Any] | _QFormerConfig,
        device: str | torch.device = "cpu",
        tokenizer: Any = None,
    ):
        config = config if isinstance(config, cls.config_class) else cls.config_class(**config)
        with torch.device(device):
            network = cls(config)
        if tokenizer is not None:
            network.attach_tokenizer(tokenizer)
        return network.frozen()

    def save_tokenizer(self, folder: Path) -> None:
        self._require_tokenizer().save_pretrained(str(folder))

    @classmethod
    def load_tokenizer_kwargs(cls, folder: Path, config: Any) -> dict[str, Any]:
        return {"tokenizer": _load_tokenizer(folder)}

    def post_load(self) -> None:
        with torch.no_grad():
            _rebuild_nonpersistent_buffers(self)

    def _load_partial(
        self, state: dict[str, torch.Tensor], expect_missing: tuple[str, ...], what: str
    ) -> None:
        """Load ``state``; every parameter not under ``expect_missing`` must be in it, every key must be used."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(expect_missing)]
        if missing or unexpected:
            raise ValueError(
                f"{what} does not fit {self.family}: missing {_short(missing)}, unexpected {_short(unexpected)}"
            )

    def load_frozen_from_sources(self, sources: Mapping[str, Path]) -> None:
        """The frozen ViT trunk (and TinyLlama) from the public checkpoints, strictly."""
        state = self._official_state(sources)
        frozen = {k: v for k, v in state.items() if k.startswith(self.frozen_prefixes)}
        own = set(k for k in self.state_dict() if k.startswith(self.frozen_prefixes))
        if set(frozen) != own:
            raise ValueError(f"public checkpoints lack frozen weights: {_short(sorted(own - set(frozen)))}")
        self.load_state_dict(frozen, strict=False)

    def _official_state(self, sources: Mapping[str, Path]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- images
    @property
    def image_size(self) -> int:
        return int(VISION_PRESETS[self.config.vision]["image_size"])

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return _pil_to_tensor(images, self.image_size)

    def _vit_trunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ViT tokens before the output LayerNorm, (B, 1 + patches, vision width)."""
        embeds = self.vision_model.embeddings(pixel_values.to(self.query_tokens.dtype))
        return self.vision_model.encoder(inputs_embeds=embeds).last_hidden_state

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen part: ViT tokens before ``post_layernorm``; the pixels themselves when the ViT trains too."""
        pixel_values = pixel_values.to(self.query_tokens.device)
        if not self.config.freeze_vision:
            return pixel_values
        self.vision_model.eval()
        return self._vit_trunk(pixel_values)

    def encoder_fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(
            json.dumps(
                [type(self).__name__, self.config.vision, self.image_size, CLIP_MEAN, CLIP_STD]
            ).encode()
        )
        if not self.config.freeze_vision:
            return digest.hexdigest()[:16] + "-pixels"  # features are preprocessed pixels; the ViT trains
        for name, tensor in self.vision_model.state_dict().items():
            if name.startswith("post_layernorm"):
                continue  # trainable, applied after the cache
            flat = tensor.detach().float().flatten()
            stats = [
                flat.sum().item(),
                flat.square().sum().item(),
                flat[:: max(1, flat.numel() // 64)].sum().item(),
            ]
            digest.update(f"{name}{tuple(tensor.shape)}{stats}".encode())
        return digest.hexdigest()[:16]

    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """Cached features -> what the Q-Former cross-attends to, (B, N, vision width)."""
        features = features.to(self.query_tokens.device, self.query_tokens.dtype)
        hidden = features if self.config.freeze_vision else self._vit_trunk(features)
        return self.vision_model.post_layernorm(hidden)

    def query_states(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The Q-Former's output for the learned queries alone, (B, Q, qformer width)."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state

    def query_patch_attention(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Each query's cross-attention over the image patches, (B, Q, patches): the weights averaged over the
        heads of every cross-attention layer, the ViT's CLS token left out and the rest renormalised. The
        queries attend to no text, so this is the same in a pass with or without a caption."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        with _eager_attention(self.qformer):
            out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, output_attentions=True)
        crossed = [a for a in out.cross_attentions if a.shape[-1] == image_embeds.shape[1]]
        patches = torch.stack(crossed).float().mean(dim=(0, 2))[..., 1:]  # (B, Q, P)
        return patches / patches.sum(-1, keepdim=True).clamp(min=1e-12)

    def _caption_pieces(self, caption: str, suffix: str = "") -> list[tuple[int, int]]:
        """Character spans of the tokenizer's pieces of ``caption + suffix``, no special tokens."""
        encoded = self._require_tokenizer()(
            caption + suffix, add_special_tokens=False, return_offsets_mapping=True
        )
        return [tuple(span) for span in encoded["offset_mapping"]]

    # -- tokenizer
    def attach_tokenizer(self, tokenizer: Any) -> None:
        raise NotImplementedError

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                f"{self.family}: no tokenizer attached; load the network with from_pretrained(folder)"
            )
        return self.tokenizer


class QFormerBertNetwork(_QFormerNetwork):
    """``qformer-bert``: the Q-Former decodes text itself (BLIP-2 image-grounded text generation).

    transformers' ``Blip2QFormerModel`` already runs queries and text as one sequence (``query_length`` splits
    them: only the queries cross-attend to the image and they use the ``*_query`` FFNs, the text uses
    ``intermediate``/``output``) and accepts a prepared 4-D attention mask, so the glue written here is only
    that mask, ``[DEC]`` as the first token and the BERT LM head tied to the word embeddings.

    Args:
        config: a :class:`QFormerBertConfig`.
    """

    family = "qformer-bert"
    config_class = QFormerBertConfig
    config: QFormerBertConfig

    def __init__(self, config: QFormerBertConfig):
        super().__init__(config, qformer_text_input=True, vocab_size=config.vocab_size)
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertPredictionHeadTransform
        from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

        self.embeddings = Blip2TextEmbeddings(
            self.qformer.config
        )  # word + positions; Q-Former LayerNorm follows
        head = BertConfig(hidden_size=config.qformer_hidden, hidden_act="gelu", layer_norm_eps=1e-12)
        self.lm_head = nn.Module()
        self.lm_head.transform = BertPredictionHeadTransform(head)  # BERT MLM head: dense, GELU, LayerNorm
        self.lm_head.bias = nn.Parameter(
            torch.zeros(config.vocab_size)
        )  # its decoder weight = word embeddings
        if not self.lm_head.bias.is_meta:
            for weight in (
                self.embeddings.word_embeddings.weight,
                self.embeddings.position_embeddings.weight,
            ):
                nn.init.normal_(weight, std=0.02)  # BERT's initializer_range
            nn.init.normal_(self.lm_head.transform.dense.weight, std=0.02)
            nn.init.zeros_(self.lm_head.transform.dense.bias)

    @classmethod
    def for_training(cls, config: dict[str, Any], init: TrainingInit) -> QFormerBertNetwork:
        """Full: sources = {"vision": blip2-itm-vit-g, "tokenizer": bert-base-uncased}; the ViT is loaded, the rest starts random.
        Tiny: a WordPiece vocabulary learned from ``train_captions``; ``init_dir`` (optional) holds a
        pretrained tiny ViT (``vision_model.*`` keys)."""
        import tempfile

        sources, init_dir = init.sources, init.init_dir
        if sources:
            from transformers import BertTokenizer

            # bert-base-uncased's tokenizer_config.json names no class, so AutoTokenizer would need config.json.
            tokenizer = BertTokenizer.from_pretrained(str(sources["tokenizer"]), local_files_only=True)
        else:
            size = int(config.get("vocab_size", QFormerBertConfig.vocab_size))
            with tempfile.TemporaryDirectory() as tmp:
                tokenizer = build_shapes_wordpiece(list(init.train_captions), tmp, vocab_size=size)
        network = cls.build(config, device="cpu", tokenizer=tokenizer)
        if sources:  # the whole ViT (trunk + ln_vision) from BLIP-2, strictly; everything else starts random
            state = network._official_state(sources)
            network.vision_model.load_state_dict(
                {k.removeprefix("vision_model."): v for k, v in state.items()}
            )
        elif init_dir is not None:
            from mmdemo.weights import load_state_dict

            state = {k: v for k, v in load_state_dict(Path(init_dir) / "model.safetensors").items()
                     if k.startswith("vision_model.")}  # fmt: skip
            network.vision_model.load_state_dict(
                {k.removeprefix("vision_model."): v for k, v in state.items()}
            )
        return network.to(init.device)

    def _official_state(self, sources: Mapping[str, Path]) -> dict[str, torch.Tensor]:
        return official_state_dict("qformer-bert", _read_safetensors_folder(sources["vision"]))

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """A BERT WordPiece tokenizer; ``[DEC]`` is added as its BOS when missing (as BLIP-2 does)."""
        if DEC_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
        tokenizer.bos_token = DEC_TOKEN
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import decoders

            # Keep " , " and " ." as the references write them (whitespace BLEU); BERT's decoder would glue them.
            backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        if len(tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} entries but the vocabulary is {self.config.vocab_size}"
            )
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer

    @property
    def dec_token_id(self) -> int:
        return self._require_tokenizer().convert_tokens_to_ids(DEC_TOKEN)

    def text_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits at every text position, (B, T, vocab)."""
        num_queries = self.config.num_query_tokens
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        hidden = self.embeddings(input_ids=input_ids, query_embeds=queries)  # (B, Q + T, H)
        mask = image_grounded_text_mask(num_queries, text_mask, hidden.dtype)
        out = self.qformer(
            query_embeds=hidden,
            query_length=num_queries,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
        ).last_hidden_state
        text = self.lm_head.transform(out[:, num_queries:])
        return F.linear(
            text, self.embeddings.word_embeddings.weight.to(text.dtype), self.lm_head.bias.to(text.dtype)
        )

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[DEC] words [SEP] [PAD]...`` ids and their padding mask, (B, T) each."""
        batch = self._require_tokenizer()(
            [str(c) for c in captions],
            padding=True,
            truncation=True,
            max_length=self.config.max_caption_tokens,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].clone()
        input_ids[:, 0] = self.dec_token_id  # BLIP-2: generation starts from [DEC] instead of [CLS]
        return input_ids.to(self.query_tokens.device), batch["attention_mask"].to(self.query_tokens.device)

    def forward(self, features: torch.Tensor, captions: list[str]) -> torch.Tensor:
        input_ids, text_mask = self.encode_captions(captions)
        logits = self.text_logits(self.image_embeds(features), input_ids, text_mask)
        labels = input_ids.masked_fill(text_mask == 0, -100)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            label_smoothing=self.config.label_smoothing,
        )

    @torch.no_grad()
    def generate(
        self, features: torch.Tensor, max_new_tokens: int = 30, num_beams: int = 1, **options: Any
    ) -> list[str]:
        """Batched greedy decoding from ``[DEC]``; each sequence stops at its own ``[SEP]``."""
        _reject_unknown(self.family, options)
        if isinstance(num_beams, bool) or int(num_beams) != 1:
            raise ValueError(
                "qformer-bert decodes greedily (num_beams=1); beam search is not implemented for it"
            )
        steps = _check_max_new_tokens(max_new_tokens, self.config.max_text_positions - 1)
        tokenizer = self._require_tokenizer()
        image_embeds = self.image_embeds(features)
        batch = image_embeds.shape[0]
        ids = torch.full((batch, 1), self.dec_token_id, dtype=torch.long, device=image_embeds.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        never = [self.dec_token_id, tokenizer.pad_token_id, tokenizer.cls_token_id]
        # transformers' Q-Former keeps no KV cache; captions are short, so each step re-runs Q + t tokens.
        for _ in range(steps):
            logits = self.text_logits(image_embeds, ids, torch.ones_like(ids))[:, -1]
            logits[:, never] = float("-inf")
            step = logits.argmax(-1).masked_fill(done, tokenizer.pad_token_id)
            ids = torch.cat([ids, step[:, None]], dim=1)
            done |= step == tokenizer.sep_token_id
            if bool(done.all()):
                break
        texts = tokenizer.batch_decode(
            ids[:, 1:], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [text.strip() for text in texts]

    # -- candidates and attention maps
    attention_note = (
        "The Q-Former's query-to-patch cross-attention (heads and cross-attention layers averaged), weighted by "
        "how much the text position that wrote the word attended to each query (heads and layers averaged), "
        "over the ViT's patch grid; a word of several pieces shows the mean of its pieces' maps."
    )

    @torch.no_grad()
    def generate_candidates(
        self, features: torch.Tensor, n: int, max_new_tokens: int = 30, num_beams: int = 1
    ) -> list[list[str]]:
        """Beam search n-best with ``n`` beams (the single caption stays greedy), each image's ``n`` best."""
        steps = _check_max_new_tokens(max_new_tokens, self.config.max_text_positions - 1)
        tokenizer = self._require_tokenizer()
        image_embeds = self.image_embeds(features)
        beams = max(n, 2)
        repeated = image_embeds.repeat_interleave(beams, 0)
        never = [self.dec_token_id, tokenizer.pad_token_id, tokenizer.cls_token_id]

        def step(ids: torch.Tensor, origin: torch.Tensor | None) -> torch.Tensor:
            logits = self.text_logits(repeated, ids, torch.ones_like(ids))[:, -1].float()
            logits[:, never] = float("-inf")
            return logits.log_softmax(-1)

        start = torch.full((image_embeds.shape[0], 1), self.dec_token_id, dtype=torch.long, device=repeated.device)
        ids = beam_search(
            step, start, beams=beams, max_new_tokens=steps, eos_id=tokenizer.sep_token_id,
            pad_id=tokenizer.pad_token_id, num_return=n,
        )  # fmt: skip
        texts = tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        texts = [text.strip() for text in texts]
        return [texts[i : i + n] for i in range(0, len(texts), n)]

    @torch.no_grad()
    def caption_logprobs(self, features: torch.Tensor, captions: list[str]) -> list[float]:
        input_ids, text_mask = self.encode_captions(captions)
        logits = self.text_logits(self.image_embeds(features), input_ids, text_mask)
        return mean_token_logprobs(logits[:, :-1], input_ids[:, 1:], text_mask[:, 1:].bool())

    @torch.no_grad()
    def attention_maps(self, features: torch.Tensor, captions: list[str]) -> list[tuple[list[str], torch.Tensor]]:
        image_embeds = self.image_embeds(features)
        query_to_patches = self.query_patch_attention(image_embeds)
        input_ids, text_mask = self.encode_captions(captions)
        num_queries = self.config.num_query_tokens
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        hidden = self.embeddings(input_ids=input_ids, query_embeds=queries)
        with _eager_attention(self.qformer):
            out = self.qformer(
                query_embeds=hidden, query_length=num_queries, output_attentions=True,
                attention_mask=image_grounded_text_mask(num_queries, text_mask, hidden.dtype),
                encoder_hidden_states=image_embeds,
            )  # fmt: skip
        # Text position t ([DEC] w1 ..) wrote piece t + 1; its attention to the queries, heads and layers averaged.
        # (The recorded attentions include the cross-attention layers' own: keep the square self-attention ones.)
        selfs = [a for a in out.attentions if a.shape[-2:] == (hidden.shape[1], hidden.shape[1])]
        to_queries = torch.stack(selfs).float().mean(dim=(0, 2))[:, num_queries:, :num_queries]
        result = []
        for row, caption in enumerate(captions):
            pieces = self._caption_pieces(caption)[: int(text_mask[row].sum()) - 2]
            maps = _maps_through_queries(to_queries[row, : len(pieces)], query_to_patches[row])
            result.append(words_from_pieces(caption, pieces, maps))
        return result


class QFormerLlamaNetwork(_QFormerNetwork):
    """``qformer-tinyllama``: fine-tuned Q-Former -> ``language_projection`` -> frozen ``LlamaForCausalLM``.

    Args:
        config: a :class:`QFormerLlamaConfig`.
    """

    family = "qformer-tinyllama"
    config_class = QFormerLlamaConfig
    config: QFormerLlamaConfig

    def __init__(self, config: QFormerLlamaConfig):
        # Only the query path: the stage-1 Q-Former's text FFNs never run here (see BLIP2_ITM_UNUSED).
        super().__init__(config, qformer_text_input=False, vocab_size=BLIP2_ITM_VOCAB)
        from transformers import LlamaForCausalLM

        self.language_projection = nn.Linear(config.qformer_hidden, config.llm_hidden)
        self.llm = LlamaForCausalLM(llm_config(config.llm))
        self.prompt_ids = torch.zeros(
            0, dtype=torch.long, device="cpu"
        )  # set by attach_tokenizer; not a weight
        self.newline_id = -1

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:  # type: ignore[override]
        return super().frozen_prefixes + ("llm.",)  # TinyLlama stays frozen, as in the report

    @classmethod
    def for_training(cls, config: dict[str, Any], init: TrainingInit) -> QFormerLlamaNetwork:
        """Full: sources = {"vision": blip2-itm-vit-g, "language_model": TinyLlama}; ViT, Q-Former and queries from BLIP-2, the LLM from
        TinyLlama, only the projection starts random. Tiny: ``init_dir/llm/`` is the Shapes-pretrained LM with
        its tokenizer (``train/pretrain_tiny_lm.py``); ``init_dir/stage1/`` (optional) a ``qformer-bert`` demo
        checkpoint whose ViT, Q-Former and queries stand in for BLIP-2 stage 1. Without ``init_dir`` (tests):
        a BPE tokenizer from ``train_captions`` and a random frozen LM."""
        if init.sources:
            network = cls.build(config, device="cpu", tokenizer=_load_tokenizer(init.sources["language_model"]))
            state = network._official_state(init.sources)
            network._load_partial(state, ("language_projection.",), "the BLIP-2 + TinyLlama checkpoints")
            return network.to(init.device)
        init_dir = Path(init.init_dir) if init.init_dir is not None else None
        if init_dir is not None and (init_dir / "llm").is_dir():
            network = cls.build(config, device="cpu", tokenizer=_load_tokenizer(init_dir / "llm"))
            network.load_llm(init_dir / "llm")
        else:
            vocab = LLM_PRESETS[cls.config_class(**config).llm]["vocab_size"]
            network = cls.build(
                config, device="cpu", tokenizer=build_shapes_bpe(list(init.train_captions), vocab_size=vocab)
            )
        if init_dir is not None and (init_dir / "stage1").is_dir():
            network.load_stage1(init_dir / "stage1")
        return network.to(init.device)

    def _official_state(self, sources: Mapping[str, Path]) -> dict[str, torch.Tensor]:
        return official_state_dict(
            "qformer-tinyllama",
            _read_safetensors_folder(sources["vision"]),
            _read_safetensors_folder(sources["language_model"]),
        )

    def load_llm(self, folder: Path) -> None:
        """A ``LlamaForCausalLM.save_pretrained`` folder (our Shapes LM), strictly."""
        self.llm.load_state_dict(_read_safetensors_folder(folder), strict=True)

    def load_stage1(self, folder: Path) -> None:
        """ViT, Q-Former (query path) and queries of a ``qformer-bert`` checkpoint: our tiny stand-in for
        BLIP-2 stage 1, whose generative objective is exactly what ``qformer-bert`` trains."""
        from mmdemo.weights import load_state_dict

        state = {
            k: v
            for k, v in load_state_dict(folder / "model.safetensors").items()
            if not k.startswith("lm_head.")
        }
        state = official_state_dict("qformer-tinyllama", state)
        self._load_partial(state, ("language_projection.", "llm."), f"stage-1 checkpoint {folder}")

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """The LLM's tokenizer; fixes the prompt ids and the end-of-caption token ("\\n")."""
        if len(tokenizer) > self.llm.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} entries, the language model {self.llm.config.vocab_size}"
            )
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the language model's tokenizer needs BOS and EOS tokens")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # as TinyLlama-Chat; padding is masked out anyway
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        ids = tokenizer(self.config.prompt, add_special_tokens=False)["input_ids"]
        if self.config.prompt_format == "report":  # <s> + prompt + pad tokens up to 9, as Llama's tokenizer gives
            ids = [tokenizer.bos_token_id, *ids]
            ids += [tokenizer.pad_token_id] * max(0, REPORT_PROMPT_TOKENS - len(ids))
        self.prompt_ids = torch.tensor(ids, dtype=torch.long, device="cpu")
        self.newline_id = tokenizer("a\n", add_special_tokens=False)["input_ids"][-1]

    def prefix_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """``prompt tokens, BOS, projected queries`` as LLM input embeddings, (B, P + 1 + Q, llm width)."""
        tokenizer = self._require_tokenizer()
        projected = self.language_projection(self.query_states(self.image_embeds(features)))  # (B, Q, D)
        fixed = torch.cat([self.prompt_ids, torch.tensor([tokenizer.bos_token_id])]).to(projected.device)
        text = self.llm.get_input_embeddings()(fixed).to(projected.dtype)
        return torch.cat([text[None].expand(projected.shape[0], -1, -1), projected], dim=1)

    def caption_ids(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM's targets for ``captions``: each caption + "\n" (with a leading ``<s>`` in the report's
        format), right-padded, and their mask, (B, T) each."""
        tokenizer = self._require_tokenizer()
        report = self.config.prompt_format == "report"
        batch = tokenizer(
            [str(c).strip() + "\n" for c in captions],
            add_special_tokens=False,
            padding=True,
            truncation=True,
            max_length=self.config.max_caption_tokens - int(report),
            return_tensors="pt",
        )
        ids, text_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if report:  # the report's captions start with <s>, which is then a target like every other token
            ids = torch.cat([ids.new_full((len(ids), 1), tokenizer.bos_token_id), ids], dim=1)
            text_mask = torch.cat([text_mask.new_ones((len(ids), 1)), text_mask], dim=1)
        return ids, text_mask

    def forward(self, features: torch.Tensor, captions: list[str]) -> torch.Tensor:
        prefix = self.prefix_embeds(features)
        ids, text_mask = self.caption_ids(captions, prefix.device)
        inputs = torch.cat([prefix, self.llm.get_input_embeddings()(ids).to(prefix.dtype)], dim=1)
        attention = torch.cat([text_mask.new_ones(prefix.shape[:2]), text_mask], dim=1)
        # The loss covers the caption and its closing "\n" (which teaches the stop), nothing before them.
        labels = torch.cat(
            [ids.new_full(prefix.shape[:2], -100), ids.masked_fill(text_mask == 0, -100)], dim=1
        )
        return self.llm(inputs_embeds=inputs, attention_mask=attention, labels=labels).loss

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        max_new_tokens: int = 30,
        repetition_penalty: float = 1.5,
        num_beams: int = 1,
        **options: Any,
    ) -> list[str]:
        """transformers ``generate(inputs_embeds=...)``: greedy, repetition penalty, cut at the first sentence."""
        _reject_unknown(self.family, options)
        steps = _check_max_new_tokens(max_new_tokens, 256)
        if isinstance(num_beams, bool) or not float(num_beams).is_integer() or not 1 <= int(num_beams) <= 8:
            raise ValueError(f"num_beams must be a whole number from 1 to 8, got {num_beams!r}")
        penalty = float(repetition_penalty)
        if not 1.0 <= penalty <= 10.0:
            raise ValueError(f"repetition_penalty must be between 1 and 10, got {repetition_penalty!r}")
        return self._llm_generate(features, steps, int(num_beams), penalty)

    def _llm_generate(
        self, features: torch.Tensor, steps: int, num_beams: int, penalty: float, num_return: int = 1
    ) -> list[str]:
        """transformers ``generate`` from the prefix, ``num_return`` sequences per image, each cut at its first
        sentence."""
        tokenizer = self._require_tokenizer()
        prefix = self.prefix_embeds(features)
        with warnings.catch_warnings():
            # Intended: with inputs_embeds only, the penalty applies to generated tokens (the report's setup).
            warnings.filterwarnings("ignore", message=".*repetition_penalty.*")
            out = self.llm.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
                max_new_tokens=steps,
                do_sample=False,
                num_beams=num_beams,
                num_return_sequences=num_return,
                repetition_penalty=penalty,
                eos_token_id=[self.newline_id, tokenizer.eos_token_id],
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [first_sentence(text) for text in texts]

    # -- candidates and attention maps
    attention_note = (
        "The Q-Former's query-to-patch cross-attention (heads and cross-attention layers averaged), weighted by "
        "how much the language model attended to each query token at the step that wrote the word (heads and "
        "layers averaged, renormalised over the queries), over the ViT's patch grid; a word of several pieces "
        "shows the mean of its pieces' maps."
    )

    @torch.no_grad()
    def generate_candidates(
        self,
        features: torch.Tensor,
        n: int,
        max_new_tokens: int = 30,
        repetition_penalty: float = 1.5,
        num_beams: int = 1,
    ) -> list[list[str]]:
        """transformers beam search with ``max(num_beams, n)`` beams returning ``n`` sequences per image, each
        cut at its first sentence (so two beams can give one caption; the caller drops repeats)."""
        steps = _check_max_new_tokens(max_new_tokens, 256)
        texts = self._llm_generate(features, steps, max(int(num_beams), n, 2), float(repetition_penalty), n)
        return [texts[i : i + n] for i in range(0, len(texts), n)]

    def _teacher_forced(self, features: torch.Tensor, captions: list[str], **kwargs: Any):
        """One LLM pass over ``prompt, BOS, queries, caption + "\n"``: (output, prefix length, ids, mask)."""
        prefix = self.prefix_embeds(features)
        ids, text_mask = self.caption_ids(captions, prefix.device)
        inputs = torch.cat([prefix, self.llm.get_input_embeddings()(ids).to(prefix.dtype)], dim=1)
        attention = torch.cat([text_mask.new_ones(prefix.shape[:2]), text_mask], dim=1)
        return self.llm(inputs_embeds=inputs, attention_mask=attention, **kwargs), prefix.shape[1], ids, text_mask

    @torch.no_grad()
    def caption_logprobs(self, features: torch.Tensor, captions: list[str]) -> list[float]:
        out, start, ids, text_mask = self._teacher_forced(features, captions)
        # Position start - 1 + j (the last query, then the caption) predicts caption token j.
        logits = out.logits[:, start - 1 : start - 1 + ids.shape[1]]
        return mean_token_logprobs(logits, ids, text_mask.bool())

    @torch.no_grad()
    def attention_maps(self, features: torch.Tensor, captions: list[str]) -> list[tuple[list[str], torch.Tensor]]:
        query_to_patches = self.query_patch_attention(self.image_embeds(features))
        with _eager_attention(self.llm):
            out, start, ids, text_mask = self._teacher_forced(features, captions, output_attentions=True)
        first_query = start - self.config.num_query_tokens  # the prefix ends with the queries
        rows = slice(start - 1, start - 1 + ids.shape[1])  # the steps that wrote caption tokens 0, 1, ..
        to_queries = torch.stack(out.attentions).float().mean(dim=(0, 2))[:, rows, first_query:start]
        report = int(self.config.prompt_format == "report")  # a leading <s> target has no characters
        result = []
        for row, caption in enumerate(captions):
            caption = caption.strip()
            pieces = [(0, 0)] * report + self._caption_pieces(caption, "\n")
            pieces = pieces[: int(text_mask[row].sum())]
            maps = _maps_through_queries(to_queries[row, : len(pieces)], query_to_patches[row])
            result.append(words_from_pieces(caption, pieces, maps))
        return result


# ---------------------------------------------------------------------------------------------- official weights


def official_state_dict(
    family: str, blip2_itm: dict[str, torch.Tensor], llm: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Our state-dict entries taken from the public checkpoints, every checkpoint key accounted for.

    ``blip2_itm``: Salesforce/blip2-itm-vit-g's ``model.safetensors``; its keys keep their names (our modules are
    named like ``Blip2ForImageTextRetrieval``'s). ``llm``: TinyLlama's ``model.safetensors``; its keys get the
    prefix ``llm.``. A checkpoint key that is neither used nor listed in :data:`BLIP2_ITM_UNUSED` is an error.
    """
    use = [re.compile(p) for p in BLIP2_ITM_USE[family]]
    unused = [re.compile(p) for p in BLIP2_ITM_UNUSED[family]]
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in blip2_itm.items():
        if any(p.search(key) for p in unused):
            continue
        if any(p.search(key) for p in use):
            state[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the BLIP-2 checkpoint: {_short(unknown)}")
    if llm is not None:
        state.update({f"llm.{key}": tensor for key, tensor in llm.items()})
    return state


def _read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    from mmdemo.weights import load_state_dict

    files = sorted(Path(folder).glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_state_dict(path))
    return state


# ---------------------------------------------------------------------------------------------- tokenizers


def build_shapes_wordpiece(captions: Iterable[str], out_dir: str | Path, vocab_size: int = 400):
    """A ``BertTokenizer`` (WordPiece, lower-cased) learned from Shapes captions, with ``[DEC]`` added.

    Stands in for bert-base-uncased's vocabulary in the offline demo; same tokenizer class and special tokens.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size - 1, special_tokens=specials
    )  # -1: room for [DEC]
    wordpiece.train_from_iterator(list(captions), trainer)
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda item: item[1])
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("".join(token + "\n" for token, _ in vocab))
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_shapes_bpe(captions: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 512):
    """A Llama-style BPE tokenizer (``▁`` word marks, ``<s>``/``</s>``, "\\n" as its own token) from captions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    letters = "abcdefghijklmnopqrstuvwxyz"
    alphabet = list(letters + letters.upper() + "0123456789.,:;!?'-()\n")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet
    )
    # The captioner's prompt is part of the corpus so that it gets whole-word tokens, as in TinyLlama's vocabulary.
    bpe.train_from_iterator([c.strip() for c in captions] + [REPORT_PROMPT] * 100, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
