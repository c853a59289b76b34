"""Strict checkpoint loading for Infinity, and the text-encoder side (T5 configs, loading T5 and encoding
prompts with it, the demo tokenizer).

Strict means: every parameter and buffer of our module is filled from the file, every key of the file is
used, and anything else is an error that names the keys. The only exceptions are listed here, each with
its reason:

* :data:`TRANSFORMER_IGNORED_KEYS`: attention masks and sequence-length vectors that upstream training code
  sometimes saved as buffers; they hold no learned values and are rebuilt for every schedule here.
* :data:`CONSTANT_BUFFERS`: buffers whose value is fixed by construction (``zero_k_bias`` is all zeros,
  ``quantizer.lfq.mask`` the powers of two of the bit order). When the file holds them their values are
  checked; when it does not, the constructed value stays.
* ``encoder.*`` of the VAE file when the decoder-only VAE is built for generation (the encoder is only
  needed to train; see ``ignored_prefixes``).
* ``quantize.*`` of the VAE file: the official VAE saves its quantiser under two names, and the copy is
  dropped once it is checked to equal ``quantizer.*`` (:func:`drop_quantizer_alias`).

The VAE file keeps its state dict under ``"vae"`` with the convolutions and norms one level down
(``decoder.conv_in.conv.weight``); plain names (``decoder.conv_in.weight``) are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

TRANSFORMER_IGNORED_KEYS: tuple[str, ...] = (
    "lvl_1L",
    "attn_bias_for_masking",
    "Infinity_visible_kvlen",
    "Infinity_invisible_qlen",
)
CONSTANT_BUFFERS: tuple[str, ...] = ("zero_k_bias", "quantizer.lfq.mask")


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model; the message names the offending keys."""


def _name_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _is_constant(key: str) -> bool:
    return any(key == c or key.endswith("." + c) for c in CONSTANT_BUFFERS)


def _constant_value(module: nn.Module, key: str) -> torch.Tensor:
    """The value a constant buffer must hold (computed, since a module built on meta has no values)."""
    target = module.get_buffer(key)
    if key.endswith("zero_k_bias"):
        return torch.zeros(target.shape, dtype=target.dtype if target.dtype != torch.bool else torch.float32)
    if key.endswith("lfq.mask"):
        n = target.shape[0]
        return 2 ** torch.arange(n - 1, -1, -1)
    raise KeyError(key)


def unwrap_plain_vae_names(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Accept ``<layer>.weight`` for our ``<layer>.conv.weight`` / ``<layer>.norm.weight`` (and biases)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            head, _, leaf = key.rpartition(".")
            for wrapper in ("conv", "norm"):
                candidate = f"{head}.{wrapper}.{leaf}"
                if candidate in expected:
                    key = candidate
                    break
        out[key] = value
    return out


@dataclass
class LoadReport:
    loaded: int
    ignored: list[str] = field(default_factory=list)
    constants_kept: list[str] = field(default_factory=list)


def load_strict(
    module: nn.Module,
    state: dict[str, Any],
    *,
    what: str,
    ignored_keys: tuple[str, ...] = (),
    ignored_prefixes: tuple[str, ...] = (),
    assign: bool = False,
) -> LoadReport:
    """Fill ``module`` from ``state`` with every key accounted for, or raise :class:`CheckpointMismatch`.

    ``assign=True`` takes the checkpoint's tensors as they are (no copy; a module built on the meta device
    is materialised that way, in the checkpoint's dtype).
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{what}: expected a flat state dict of tensors")
    expected = module.state_dict(keep_vars=True)
    ignored = [
        k for k in state if k not in expected and (k in ignored_keys or k.startswith(ignored_prefixes))
    ]
    unexpected = [k for k in state if k not in expected and k not in ignored]
    missing = [k for k in expected if k not in state and not _is_constant(k)]
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_list(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {_name_list(wrong)}")
    if problems:
        raise CheckpointMismatch(f"{what} does not match the model: " + "; ".join(problems))
    full: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    for key in expected:
        if key in state:
            value = state[key]
            if _is_constant(key) and not torch.equal(
                value.cpu().to(torch.float64), _constant_value(module, key).to(torch.float64)
            ):
                raise CheckpointMismatch(f"{what}: constant buffer {key} holds unexpected values")
            full[key] = value
        else:
            kept.append(key)
            full[key] = _constant_value(module, key)
    module.load_state_dict(full, strict=True, assign=assign)
    return LoadReport(len(full), ignored, kept)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)`` or safetensors, on the CPU.

    Memory-mapped, as upstream loads it: the 8.8 GB transformer file is paged in tensor by tensor while it is
    copied to its device, never held whole in RAM next to the model (see :func:`mmdemo.weights.load_state_dict`).
    """
    from mmdemo.weights import load_state_dict

    return load_state_dict(path, mmap=True)


def place_transformer(transformer: nn.Module, device: str | torch.device) -> nn.Module:
    """The transformer on ``device`` in the precision upstream runs it.

    On a GPU the transformer blocks are cast to bf16 (half the 8.8 GB of fp32 weights), the embeddings, the
    head and the norms outside the blocks stay fp32, and sampling runs under bf16 autocast, as upstream's
    ``load_transformer`` does. On the CPU everything stays fp32 (no fast bf16 kernels there).
    """
    return cast_like_upstream(transformer, torch.device(device).type).to(device)


def cast_like_upstream(transformer: nn.Module, device_type: str) -> nn.Module:
    """fp32, with the blocks in bf16 when ``device_type`` is ``"cuda"`` (done where the module is, before a move,
    so only bf16 bytes travel to the GPU)."""
    transformer = transformer.float()
    if device_type == "cuda":
        for block in transformer.blocks:
            block.to(dtype=torch.bfloat16)
    return transformer


def vae_state_from_file(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The official VAE file holds ``{"vae": state_dict, ...}``; our demo file is the state dict itself.

    The quantiser's second name is dropped here (:func:`drop_quantizer_alias`), for every VAE load.
    """
    if "vae" in raw and isinstance(raw["vae"], dict):
        raw = raw["vae"]
    return drop_quantizer_alias(raw)


QUANTIZER_ALIAS, QUANTIZER = "quantize.", "quantizer."


def drop_quantizer_alias(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the ``quantize.*`` copies of ``quantizer.*`` tensors that the official VAE saves.

    Upstream's VAE registers its quantiser under two names (``self.quantize = self.quantizer``), so a state dict
    saved from it holds ``quantize.lfq.mask`` as well as ``quantizer.lfq.mask``. A copy is dropped only when its
    original is in ``state`` with the same shape and values; a ``quantize.*`` key that is anything else is an
    error, and every other unexpected key is still reported by :func:`load_strict`.
    """
    out = {}
    for key, value in state.items():
        if not key.startswith(QUANTIZER_ALIAS):
            out[key] = value
            continue
        original = QUANTIZER + key[len(QUANTIZER_ALIAS) :]
        if original not in state:
            raise CheckpointMismatch(f"VAE state dict: {key} has no original {original} it could be a copy of")
        twin = state[original]
        same = (
            isinstance(value, torch.Tensor)
            and isinstance(twin, torch.Tensor)
            and value.shape == twin.shape
            and torch.equal(value.cpu(), twin.cpu())
        )
        if not same:
            raise CheckpointMismatch(f"VAE state dict: {key} differs from {original}; it must be the same tensor")
    return out


# ------------------------------------------------------------------------------------------ T5

# google/flan-t5-xl's encoder, written out so the full model can be built on the meta device offline.
FLAN_T5_XL_CONFIG: dict[str, Any] = dict(
    vocab_size=32128,
    d_model=2048,
    d_kv=64,
    d_ff=5120,
    num_layers=24,
    num_heads=32,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=False,
)


def tiny_t5_config(overrides: dict[str, Any] | None, vocab_size: int | None = None):
    """A ``T5Config`` for the tiny demo encoder: flan-t5-xl's with smaller sizes and no dropout, then
    ``overrides`` (a demo folder's ``t5``) and ``vocab_size`` (the demo tokenizer's)."""
    from transformers import T5Config

    kwargs: dict[str, Any] = dict(
        FLAN_T5_XL_CONFIG, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, dropout_rate=0.0,
        is_encoder_decoder=False,
    )  # fmt: skip
    kwargs.update(overrides or {})
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    return T5Config(**kwargs)


def load_text_encoder(folder: str | Path, device: str, tiny: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The T5 tokenizer and encoder (frozen, in eval mode, on ``device``) in ``folder``.

    ``tiny`` (a demo folder's ``t5`` config): our tiny encoder (``text_encoder.safetensors``, read strictly) and
    word-level tokenizer; otherwise a flan-t5-xl snapshot, as upstream runs it: the legacy SentencePiece
    behaviour the model was trained with, fp16 on GPUs (transformers keeps T5's overflow-prone feed-forward
    output layers in fp32 by itself).
    """
    folder = Path(folder)
    if tiny is not None:
        from safetensors.torch import load_file
        from transformers import PreTrainedTokenizerFast, T5EncoderModel

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        encoder = T5EncoderModel(tiny_t5_config(tiny))
        state = load_file(str(folder / "text_encoder.safetensors"))
        # The input embedding and the encoder's own copy are one tied tensor; safetensors stores it once.
        state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
        state.setdefault("shared.weight", state.get("encoder.embed_tokens.weight"))
        load_strict(encoder, {k: v.float() for k, v in state.items()}, what=str(folder / "text_encoder"))
    else:
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True)
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype)
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


def encode_text(
    tokenizer: Any, encoder: nn.Module, prompts: list[str], max_length: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """T5 features (B, T, Ct) float32, mask (B, T) bool, and a notice when a prompt was cut at ``max_length``."""
    notices = []
    full = tokenizer(prompts, truncation=False)["input_ids"]
    if any(len(ids) > max_length for ids in full):
        notices.append(f"The prompt is longer than {max_length} tokens; only the first {max_length} were used.")
    enc = tokenizer(prompts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    with torch.no_grad():
        text = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    return text, mask.bool(), notices


def build_word_tokenizer(captions: list[str]):
    """A word-level tokenizer for the demo's T5 (ids: 0 pad, 1 ``</s>``, 2 unk), built offline from captions.

    Lower-cased, split on whitespace and punctuation, ``</s>`` appended like T5's SentencePiece tokenizer.
    """
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for c in captions for w in re.findall(r"\w+|[^\w\s]", c.lower())})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


# ------------------------------------------------------------------------------------------ demo folders

T5_CONFIG_KEYS: tuple[str, ...] = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "feed_forward_proj",
    "layer_norm_epsilon",
    "pad_token_id",
    "eos_token_id",
    "dropout_rate",
)


def _save_fp16(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # fp16 halves the shipped size; loading casts back to float32. Clones break tied storage for safetensors.
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous().clone()
        for k, v in module.state_dict().items()
    }
    save_file(tensors, str(path))


def save_demo_checkpoint(
    folder: str | Path, family: Any, vae: nn.Module, t5: nn.Module, infinity: nn.Module, tokenizer: Any
) -> Path:
    """Write a self-describing demo folder: ``config.json`` + three safetensors files + tokenizer files."""
    import json
    from dataclasses import asdict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = asdict(family)
    config["vae"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config["vae"].items()}
    config["t5"] = {k: v for k, v in t5.config.to_dict().items() if k in T5_CONFIG_KEYS}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _save_fp16(infinity, folder / "transformer.safetensors")
    _save_fp16(vae, folder / "vae.safetensors")
    _save_fp16(t5, folder / "text_encoder.safetensors")
    tokenizer.save_pretrained(str(folder))
    return folder
