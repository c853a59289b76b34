"""Frozen text encoders of our diffusion models, and the tiny Shapes versions that stand in for them offline.

Full size: pixel diffusion reads ``bert-base-uncased`` hidden states (768 wide, 24 tokens),
latent diffusion reads the CLIP ViT-B/16 text tower (77 x 512). Both are frozen. The Hub is not reachable
on the development machines, so the demo checkpoints use the *same classes* (``BertModel``,
``CLIPTextModel``) at tiny sizes, pretrained on Shapes captions first (``train/pretrain_tiny_text_encoder.py``)
because the real recipe conditions on pretrained encoders, not random ones.

A text-encoder folder is anything ``from_pretrained`` reads: the Hub snapshot of the real model, or a tiny
one we saved (``config.json`` + ``model.safetensors`` + tokenizer files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

TextKind = Literal["bert", "clip"]
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def caption_words(captions: Iterable[str]) -> list[str]:
    """Lower-cased words and punctuation marks of ``captions``, sorted (the tiny vocabularies' base)."""
    words: set[str] = set()
    for caption in captions:
        words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", caption.lower()))
    return sorted(words)


def build_tiny_bert_tokenizer(captions: Iterable[str], max_length: int = 24) -> Any:
    """A ``BertTokenizer`` (WordPiece) whose vocabulary is every Shapes word plus single letters.

    Whole caption words are single tokens; letters and ``##letter`` pieces let WordPiece spell any other
    word instead of collapsing it to ``[UNK]`` (emoji and other symbols still become ``[UNK]``).
    """
    from transformers import BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = list(BERT_SPECIALS)
    for token in [*caption_words(captions), *letters, *(f"##{c}" for c in letters)]:
        if token not in tokens:
            tokens.append(token)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)
    tokenizer.model_max_length = max_length
    return tokenizer


def build_tiny_clip_tokenizer(captions: Sequence[str], vocab_size: int = 600, max_length: int = 32) -> Any:
    """A ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends, CLIP's normaliser) trained on ``captions``.

    The real CLIP vocabulary has 49408 entries; Shapes captions need a few hundred, which keeps the tiny
    text tower's embedding table small enough for a demo checkpoint.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    template = CLIPTokenizer()  # empty vocabulary, but CLIP's own normaliser and pre-tokeniser
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=CLIP_EOS))
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[CLIP_BOS, CLIP_EOS],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.model_max_length = max_length
    return tokenizer


def build_text_encoder(kind: TextKind, encoder_config: dict[str, Any] | None = None) -> nn.Module:
    """An untrained, frozen text encoder: the real architecture when ``encoder_config`` is None, else tiny.

    ``BertModel`` is built without its pooler: we read token hidden states only, never the pooled vector.
    """
    if kind == "bert":
        from transformers import BertConfig, BertModel

        model: nn.Module = BertModel(BertConfig(**(encoder_config or {})), add_pooling_layer=False)
    elif kind == "clip":
        from transformers import CLIPTextConfig, CLIPTextModel

        model = CLIPTextModel(CLIPTextConfig(**(encoder_config or {})))
    else:
        raise ValueError(f"unknown text encoder kind {kind!r}; expected 'bert' or 'clip'")
    return freeze(model)


def load_text_encoder(kind: TextKind, folder: str | Path) -> nn.Module:
    """The frozen text encoder saved in ``folder`` (a Hub snapshot or one of our tiny ones).

    Every weight of the encoder must be in the files: a missing tensor raises instead of being silently
    initialised at random (extra tensors, such as CLIP's vision tower, are ignored).
    """
    if kind == "bert":
        from transformers import BertModel

        model, info = BertModel.from_pretrained(
            str(folder), add_pooling_layer=False, output_loading_info=True
        )
    elif kind == "clip":
        from transformers import CLIPTextModel

        model, info = CLIPTextModel.from_pretrained(str(folder), output_loading_info=True)
    else:
        raise ValueError(f"unknown text encoder kind {kind!r}; expected 'bert' or 'clip'")
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ValueError(f"text encoder in {folder} lacks {len(missing)} weights, e.g. {missing[:3]}")
    return freeze(model.eval())


def load_tokenizer(folder: str | Path, max_length: int) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = max_length
    return tokenizer


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def encoder_hidden_size(text_encoder: nn.Module) -> int:
    return int(text_encoder.config.hidden_size)


@dataclass
class EncodedText:
    hidden: torch.Tensor  # (B, L, H) last hidden states of the frozen encoder
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens
    truncated: list[bool]  # per prompt: did it exceed the token limit


def tokenize(
    tokenizer: Any, prompts: Sequence[str], max_length: int
) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Pad/truncate to exactly ``max_length`` tokens; also report which prompts were cut."""
    full_lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False)["input_ids"]]
    batch = tokenizer(
        list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, [
        n > max_length for n in full_lengths
    ]


@torch.no_grad()
def encode_text(
    tokenizer: Any,
    text_encoder: nn.Module,
    prompts: Sequence[str],
    max_length: int,
    device: torch.device | str,
) -> EncodedText:
    """Token hidden states of the frozen encoder for ``prompts`` (always ``max_length`` positions)."""
    batch, truncated = tokenize(tokenizer, prompts, max_length)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    hidden = text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return EncodedText(hidden, attention_mask, truncated)


def truncation_notice(max_length: int) -> str:
    return (
        f"The prompt is longer than the text encoder's limit of {max_length} tokens; "
        f"only its first {max_length} tokens were used."
    )


@torch.no_grad()
def closest_word_pair(
    tokenizer: Any,
    text_encoder: nn.Module,
    words: Sequence[str],
    max_length: int,
    template: str = "a large {} at the top",
) -> tuple[float, tuple[str, str]]:
    """How alike the encoder's states for ``template`` filled with each of ``words`` are, after removing what
    all of them share: the highest cosine between two words, and which two.

    A conditioning encoder must keep apart the words a generator has to tell apart. A tiny CLIP text tower
    pretrained for 250 steps against a weak image tower gave "circle" and "square" a cosine of 0.97 here,
    and the latent model conditioned on it drew most squares as circles.
    """
    device = next(text_encoder.parameters()).device
    prompts = [template.format(w) for w in words]
    hidden = encode_text(tokenizer, text_encoder, prompts, max_length, device).hidden.float().cpu()
    centred = nn.functional.normalize((hidden - hidden.mean(0, keepdim=True)).flatten(1), dim=-1)
    cosine = centred @ centred.T
    pairs = [
        (float(cosine[i, j]), (words[i], words[j]))
        for i in range(len(words))
        for j in range(i + 1, len(words))
    ]
    return max(pairs)
