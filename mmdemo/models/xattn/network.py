"""Cross-attention Transformer-decoder captioners: ``resnet18-xattn`` and ``clipb32-xattn``.

One family, two frozen vision encoders (the report's first two rows):

* ``resnet18``: torchvision ResNet-18's conv trunk (no pooling, no ``fc``); its 7x7x512 map at 224 px
  is 49 tokens; ImageNet normalisation. Official weights: torchvision ``IMAGENET1K_V1``, read from the
  Hub mirror ``timm/resnet18.tv_in1k`` (timm's ResNet uses torchvision's parameter names, so the file
  loads into torchvision's class unchanged; ``tests/test_captioners_xattn.py`` checks the names offline),
  or from torchvision's own ``resnet18-f37072fd.pth``.
* ``clip-vit-b-32``: open_clip's ``VisionTransformer`` with ViT-B-32's vision config (QuickGELU for the
  ``openai`` tag, as open_clip itself builds it); ``output_tokens=True`` gives the 49 patch tokens after
  ``ln_post`` (width 768); CLIP's own normalisation. Weights: ``open_clip_pytorch_model.bin`` (or
  ``open_clip_model.safetensors``) of ``timm/vit_base_patch32_clip_224.openai``, keys ``visual.*``.

Image tokens go through ``Linear(C, d)`` plus a learned position embedding per token (the report's code
has none; without it a decoder cannot tell which of the 49 tokens is "left"), then a hand-written
post-norm Transformer decoder as in the report: token embedding x sqrt(d), sinusoidal positions, masked
self-attention, cross-attention to the image tokens, ReLU FF, dropout, ``Linear(d, vocab)``. It is
written out (instead of ``nn.TransformerDecoderLayer``) so that decoding can keep a KV cache: one new
token per step instead of re-running the whole prefix.

Tiny configurations (the demo) use the *same classes*: torchvision ``ResNet(BasicBlock, [1, 1, 1, 1])``
(torchvision's ResNet cannot be made narrower with BasicBlock; one block per stage keeps 4.9M parameters)
at 96 px (a 3x3 map), and open_clip ``VisionTransformer`` of width 128.

The registry adapters are :mod:`mmdemo.captioners.xattn`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmdemo.captioners.base import CaptionNetwork, Features, TrainingInit, beam_search, mean_token_logprobs
from mmdemo.captioners.vocab import EOS_ID, PAD_ID, SOS_ID, Vocabulary, tokenize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# name -> how to build the frozen vision encoder. "blocks": BasicBlocks per ResNet stage.
VISION_SPECS: dict[str, dict[str, Any]] = {
    "resnet18": dict(kind="resnet", blocks=(2, 2, 2, 2), image_size=224),
    "resnet18-tiny": dict(kind="resnet", blocks=(1, 1, 1, 1), image_size=96),
    "clip-vit-b-32": dict(
        kind="clip", image_size=224, patch_size=32, width=768, layers=12, heads=12, output_dim=512
    ),
    "clip-vit-tiny": dict(
        kind="clip", image_size=96, patch_size=16, width=128, layers=3, heads=4, output_dim=128
    ),
}


@dataclass
class XAttnConfig:
    """Configuration of :class:`XAttnCaptionNetwork` (registry ``full_config`` / ``tiny_config`` keys).

    Args:
        vision: a key of ``VISION_SPECS``.
        d_model: decoder width (512 for ResNet, 768 for CLIP in the report).
        num_layers / num_heads / ff_dim / dropout: the decoder (report: 6 / 8 / 2048 / 0.1).
        max_len: tokens per caption including ``<SOS>``/``<EOS>`` (report: 50).
        vocab_size: set from the vocabulary at training time; the registry's value (2096) is the report
            split's Flickr8k vocabulary, used for meta builds and parameter counts.
        image_size: encoder input side; ``None`` = the encoder's default (224 full, 96 tiny).
        clip_pretrained: open_clip pretrained tag of the CLIP weights (``openai`` implies QuickGELU).
        image_dropout: dropout on the projected image features the decoder attends to (report: 0.2; the
            shipped demos were trained without it). Active in training only.
        resize: ``"crop"`` (shorter side to ``image_size``, centre crop: the encoders' own eval transform, the
            demos') or ``"squash"`` (the whole image resized to a square, as the report's ``Resize((224, 224))``).
    """

    vision: str = "resnet18"
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 50
    vocab_size: int = 2096
    image_size: int | None = None
    clip_pretrained: str = "openai"
    image_dropout: float = 0.0
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.resize not in ("crop", "squash"):
            raise ValueError(f"resize must be 'crop' or 'squash', got {self.resize!r}")
        if not 0.0 <= self.image_dropout < 1.0:
            raise ValueError(f"image_dropout must be in [0, 1), got {self.image_dropout}")
        if self.vision not in VISION_SPECS:
            raise ValueError(
                f"unknown vision encoder {self.vision!r}; choose one of {', '.join(VISION_SPECS)}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.image_size is None:
            self.image_size = VISION_SPECS[self.vision]["image_size"]

    @property
    def vision_spec(self) -> dict[str, Any]:
        return VISION_SPECS[self.vision]


# ------------------------------------------------------------------------------------- vision encoders


def build_vision(config: XAttnConfig) -> tuple[nn.Module, int, int]:
    """(encoder, channels per token, tokens per image) for ``config.vision`` at ``config.image_size``."""
    spec = config.vision_spec
    size = int(config.image_size)
    if spec["kind"] == "resnet":
        from torchvision.models.resnet import BasicBlock, ResNet

        if size % 32:
            raise ValueError(f"ResNet input size must be a multiple of 32, got {size}")
        resnet = ResNet(BasicBlock, list(spec["blocks"]))
        resnet.fc = nn.Identity()  # the trunk only: fc is not part of the captioner (and has no weights now)
        return resnet, 512, (size // 32) ** 2
    from open_clip.transformer import QuickGELU, VisionTransformer

    if size % spec["patch_size"]:
        raise ValueError(
            f"CLIP input size must be a multiple of the patch size {spec['patch_size']}, got {size}"
        )
    vit = VisionTransformer(
        image_size=size,
        patch_size=spec["patch_size"],
        width=spec["width"],
        layers=spec["layers"],
        heads=spec["heads"],
        mlp_ratio=4.0,
        output_dim=spec["output_dim"],
        output_tokens=True,
        act_layer=QuickGELU
        if config.clip_pretrained == "openai"
        else nn.GELU,  # as open_clip builds "openai"
    )
    return vit, spec["width"], (size // spec["patch_size"]) ** 2


def vision_tokens(vision: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, N, C)
    if isinstance(vision, nn.Module) and hasattr(vision, "layer4"):  # torchvision ResNet trunk
        x = vision.maxpool(vision.relu(vision.bn1(vision.conv1(pixel_values))))
        x = vision.layer4(vision.layer3(vision.layer2(vision.layer1(x))))  # (B, 512, h, w)
        return x.flatten(2).transpose(1, 2)
    _, tokens = vision(pixel_values)  # open_clip: patch tokens after ln_post, CLS excluded
    return tokens


def preprocess_images(config: XAttnConfig, images: list[Image.Image]) -> torch.Tensor:  # (B, 3, S, S)
    """Shorter side to ``image_size`` and a centre crop (its own eval transform), or with ``resize="squash"`` the
    whole image to ``image_size`` squared; then the encoder's normalisation."""
    size = int(config.image_size)
    clip = config.vision_spec["kind"] == "clip"
    mean, std = (CLIP_MEAN, CLIP_STD) if clip else (IMAGENET_MEAN, IMAGENET_STD)
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if config.resize == "squash":
            image = image.resize((size, size), Image.BICUBIC if clip else Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.float32))
            continue
        w, h = image.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC if clip else Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        arrays.append(np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def official_vision_state(config: XAttnConfig, folder: Path) -> dict[str, torch.Tensor]:
    """The official ImageNet / CLIP weights of the vision encoder from a source folder, our key names."""
    from mmdemo.weights import load_state_dict

    folder = Path(folder)
    if config.vision_spec["kind"] == "resnet":
        candidates = ["model.safetensors", "resnet18-f37072fd.pth"]
    else:
        candidates = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    path = next((folder / name for name in candidates if (folder / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"none of {candidates} in {folder}")
    state = load_state_dict(path)
    if config.vision_spec["kind"] == "resnet":
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}


# ------------------------------------------------------------------------------------- decoder


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:  # (T,) -> (T, d)
    # Computed on the fly (not a buffer): nothing to rebuild after a meta-device load, any length works.
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    angles = positions.float()[:, None] * torch.exp(half * (-math.log(10000.0) / d_model))[None]
    table = torch.zeros(positions.shape[0], d_model, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (same parameter count as nn.MultiheadAttention)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d/H)
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def key_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.heads(self.q_proj(x))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, h, t, hd = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h * hd))

    def probabilities(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # (B, H, T, N), unmasked
        """The weights ``forward`` gives each key (written out: the fused kernel does not return them)."""
        q = self.heads(self.q_proj(x))
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)


class DecoderLayer(nn.Module):
    """Post-norm decoder layer (as ``nn.TransformerDecoderLayer``'s default) with an optional KV cache."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.cross_attn = Attention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d): the new tokens only when a cache is given
        memory_kv: tuple[torch.Tensor, torch.Tensor],  # cross-attention keys/values of the image tokens
        self_mask: torch.Tensor | None,
        cache: dict[str, torch.Tensor] | None = None,
        cross_weights: list[torch.Tensor] | None = None,  # appended: this layer's (B, H, T, N) image attention
    ) -> torch.Tensor:
        k, v = self.self_attn.key_values(x)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        x = self.norm1(x + self.dropout(self.self_attn(x, k, v, self_mask)))
        if cross_weights is not None:
            cross_weights.append(self.cross_attn.probabilities(x, memory_kv[0]))
        x = self.norm2(x + self.dropout(self.cross_attn(x, *memory_kv)))
        return self.norm3(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class XAttnCaptionNetwork(CaptionNetwork):
    """Frozen vision encoder -> Linear -> cross-attention Transformer decoder -> words.

    Args:
        config: an :class:`XAttnConfig`.
        vocab: the word vocabulary (``None`` only for weight-less builds such as parameter counting).
    """

    config_class = XAttnConfig
    frozen_prefixes = ("vision.",)

    def __init__(self, config: XAttnConfig, vocab: Vocabulary | None = None):
        super().__init__(config)
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(
                f"vocabulary has {len(vocab)} words but config.vocab_size is {config.vocab_size}"
            )
        self.vocab = vocab
        self.vision, vision_dim, self.num_image_tokens = build_vision(config)
        self.vision_proj = nn.Linear(vision_dim, config.d_model)
        self.image_dropout = nn.Dropout(config.image_dropout)
        self.image_pos = nn.Parameter(torch.zeros(1, self.num_image_tokens, config.d_model))
        self.embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=PAD_ID)
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.num_heads, config.ff_dim, config.dropout)
            for _ in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        if self.image_pos.device.type != "meta":
            nn.init.normal_(self.image_pos, std=0.02)
        self.frozen()

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        config: dict[str, Any] | XAttnConfig,
        device: str | torch.device = "cpu",
        vocab: Vocabulary | None = None,
    ) -> XAttnCaptionNetwork:
        config = config if isinstance(config, XAttnConfig) else XAttnConfig(**config)
        with torch.device(device):
            return cls(config, vocab)

    @classmethod
    def for_training(cls, config: dict[str, Any], init: TrainingInit) -> XAttnCaptionNetwork:
        max_len = int(config.get("max_len", XAttnConfig.max_len))
        vocab = Vocabulary.build(list(init.train_captions), max_len=max_len)
        network = cls.build({**config, "vocab_size": len(vocab)}, device="cpu", vocab=vocab)
        if init.sources:
            network.load_frozen_from_sources(init.sources)
        elif init.init_dir is not None:
            network.load_pretrained_vision(init.init_dir)
        return network.to(init.device)

    def load_frozen_from_sources(self, sources: Mapping[str, Path]) -> None:
        state = official_vision_state(self.config, sources["vision"])
        self.vision.load_state_dict(state, strict=True)

    def load_pretrained_vision(self, folder: str | Path) -> None:
        """Our Shapes-pretrained tiny encoder (``train/pretrain_shapes_vision.py``), strictly."""
        from mmdemo.weights import load_state_dict, read_config

        folder = Path(folder)
        meta = read_config(folder)
        if meta.get("vision") != self.config.vision or meta.get("image_size") != self.config.image_size:
            raise ValueError(
                f"{folder} holds a {meta.get('vision')} encoder at {meta.get('image_size')} px, but the model needs "
                f"{self.config.vision} at {self.config.image_size} px; pretrain one with "
                f"train/pretrain_shapes_vision.py --vision {self.config.vision}"
            )
        state = load_state_dict(folder / "model.safetensors")
        self.vision.load_state_dict(
            {k.removeprefix("vision."): v for k, v in state.items() if k.startswith("vision.")}
        )

    def save_tokenizer(self, folder: Path) -> None:
        if self.vocab is None:
            raise ValueError("this network has no vocabulary to save")
        self.vocab.save(folder)

    @classmethod
    def load_tokenizer_kwargs(cls, folder: Path, config: XAttnConfig) -> dict[str, Any]:
        return {"vocab": Vocabulary.load(folder)}

    # ----------------------------------------------------------------- images
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:  # (B, 3, S, S) normalised
        return preprocess_images(self.config, images)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, N, C) frozen features
        self.vision.eval()
        return vision_tokens(self.vision, pixel_values.to(self.vision_proj.weight.device))

    def encoder_fingerprint(self) -> str:
        digest = hashlib.sha256()
        meta = dict(
            vision=self.config.vision, image_size=self.config.image_size, act=self.config.clip_pretrained
        )
        if self.config.resize != "crop":  # (so the keys of crop-preprocessed caches stay what they were)
            meta["resize"] = self.config.resize
        digest.update(json.dumps(meta, sort_keys=True).encode())
        kind = self.config.vision_spec["kind"]
        digest.update(
            str((CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)).encode()
        )
        for name, tensor in sorted(self.vision.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    # ----------------------------------------------------------------- decoder
    def memory(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of the image tokens (computed once per caption)."""
        dtype = self.vision_proj.weight.dtype
        projected = self.vision_proj(features.to(self.vision_proj.weight.device, dtype))
        memory = self.image_dropout(projected) + self.image_pos
        return [layer.cross_attn.key_values(memory) for layer in self.layers]

    def decode(
        self,
        tokens: torch.Tensor,  # (B, T) ids
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        start: int = 0,
        caches: list[dict[str, torch.Tensor]] | None = None,
        cross_weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, vocab) logits
        b, t = tokens.shape
        positions = torch.arange(start, start + t, device=tokens.device)
        x = self.embed(tokens) * math.sqrt(self.config.d_model) + sinusoidal_positions(
            positions, self.config.d_model
        )
        x = self.dropout(x.to(self.embed.weight.dtype))
        mask = None
        if t > 1:  # causal + key padding; a single new token (cached decoding) sees every earlier one
            causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
            mask = (causal[None] & (tokens != PAD_ID)[:, None, :])[:, None]  # (B, 1, T, T)
            mask = mask | torch.eye(t, dtype=torch.bool, device=tokens.device)  # no fully masked row
        for i, layer in enumerate(self.layers):
            x = layer(x, memory_kv[i], mask, None if caches is None else caches[i], cross_weights)
        return self.lm_head(x)

    def _require_vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise ValueError("this network was built without a vocabulary (a meta/parameter-count build)")
        return self.vocab

    def encode_captions(self, captions: list[str], device: torch.device) -> torch.Tensor:  # (B, T) padded
        vocab = self._require_vocab()
        ids = [vocab.encode(c) for c in captions]
        batch = torch.full((len(ids), max(map(len, ids))), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(ids):
            batch[row, : len(seq)] = torch.tensor(seq)
        return batch.to(device)

    def forward(self, features: Features, captions: list[str]) -> torch.Tensor:
        tokens = self.encode_captions(captions, self.embed.weight.device)
        logits = self.decode(tokens[:, :-1], self.memory(features))
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1), ignore_index=PAD_ID
        )

    @torch.no_grad()
    def generate(
        self,
        features: Features,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        use_cache: bool = True,
        length_penalty: float = 1.0,
        **unknown: Any,
    ) -> list[str]:
        """Captions for a batch of image features.

        Args:
            max_new_tokens: words + ``<EOS>`` at most (capped at ``max_len - 1``, the longest trained caption).
            num_beams: 1 = greedy; more = beam search (scores length-normalised with ``length_penalty``).
            use_cache: keep keys/values between steps: the earlier tokens' self-attention ones and the image's
                cross-attention ones. False is the baseline: every step re-runs the whole decoder over the prefix
                and the image tokens, as decoding with ``nn.TransformerDecoder`` (the report's) does.
        """
        if unknown:
            raise ValueError(
                f"unknown decoding option(s) {', '.join(sorted(unknown))}; this captioner takes max_new_tokens, "
                "num_beams, use_cache and length_penalty"
            )
        limit = self.config.max_len - 1
        max_new_tokens = limit if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= max_new_tokens:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not 1 <= int(num_beams) <= 16:
            raise ValueError(f"num_beams must be between 1 and 16, got {num_beams}")
        max_new_tokens = min(max_new_tokens, limit)
        ids = self.generate_ids(
            features,
            max_new_tokens=max_new_tokens,
            num_beams=int(num_beams),
            use_cache=use_cache,
            length_penalty=length_penalty,
        )
        vocab = self._require_vocab()
        return [vocab.decode(row[1:]) for row in ids.tolist()]

    # ----------------------------------------------------------------- candidates and attention maps
    attention_note = (
        "The decoder's cross-attention over the image's grid of encoder tokens at the step that wrote the word "
        "(the weights averaged over every head of every decoder layer); brighter cells got more weight."
    )

    @property
    def attention_view(self) -> str:  # type: ignore[override]
        return "centre" if self.config.resize == "crop" else "whole"

    @torch.no_grad()
    def generate_candidates(
        self,
        features: Features,
        n: int,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        use_cache: bool = True,
        length_penalty: float = 1.0,
    ) -> list[list[str]]:
        """Beam search n-best: ``max(num_beams, n)`` beams, each image's ``n`` best by length-normalised score."""
        limit = self.config.max_len - 1
        steps = limit if max_new_tokens is None else min(int(max_new_tokens), limit)
        width = max(int(num_beams), n, 2)
        ids = self._beam_search(features, steps, width, length_penalty, use_cache, num_return=n)
        vocab = self._require_vocab()
        texts = [vocab.decode(row[1:]) for row in ids.tolist()]
        return [texts[i : i + n] for i in range(0, len(texts), n)]

    @torch.no_grad()
    def caption_logprobs(self, features: Features, captions: list[str]) -> list[float]:
        tokens = self.encode_captions(captions, self.embed.weight.device)
        logits = self.decode(tokens[:, :-1], self.memory(features))
        return mean_token_logprobs(logits, tokens[:, 1:], tokens[:, 1:] != PAD_ID)

    @torch.no_grad()
    def attention_maps(self, features: Features, captions: list[str]) -> list[tuple[list[str], torch.Tensor]]:
        tokens = self.encode_captions(captions, self.embed.weight.device)
        weights: list[torch.Tensor] = []
        self.decode(tokens[:, :-1], self.memory(features), cross_weights=weights)
        # (layers, B, H, T, N) -> (B, T, N). Input position t (<SOS> w1 .. ) is the step that wrote word t + 1.
        mean = torch.stack(weights).float().mean(dim=(0, 2))
        side = math.isqrt(mean.shape[-1])
        vocab = self._require_vocab()
        out = []
        for row, caption in enumerate(captions):
            words = tokenize(caption)[: vocab.max_len - 2]
            out.append((words, mean[row, : len(words)].reshape(len(words), side, side)))
        return out

    @torch.no_grad()
    def generate_ids(
        self,
        features: torch.Tensor,
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        use_cache: bool = True,
        length_penalty: float = 1.0,
        ignore_eos: bool = False,
        num_return: int = 1,
    ) -> torch.Tensor:  # (B * num_return, 1 + steps): <SOS> then tokens, <PAD> after each sequence's own <EOS>
        """Token ids; ``ignore_eos`` always runs ``max_new_tokens`` steps (benchmarks at a fixed length).

        ``num_return`` (at most ``num_beams``): each image's best beams, best length-normalised score first.
        """
        if num_beams > 1:
            return self._beam_search(features, max_new_tokens, num_beams, length_penalty, use_cache, num_return)
        memory_kv = self.memory(features)
        b = memory_kv[0][0].shape[0]
        device = self.embed.weight.device
        tokens = torch.full((b, 1), SOS_ID, dtype=torch.long, device=device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        caches: list[dict[str, torch.Tensor]] | None = [{} for _ in self.layers] if use_cache else None
        for step in range(max_new_tokens):
            if use_cache:
                logits = self.decode(tokens[:, -1:], memory_kv, start=step, caches=caches)[:, -1]
            else:
                logits = self.decode(tokens, self.memory(features))[:, -1]
            logits[:, [PAD_ID, SOS_ID]] = float("-inf")  # never emitted: <PAD> would be masked out as a key
            next_ids = logits.argmax(-1).masked_fill(finished, PAD_ID)  # finished rows only pad
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            if not ignore_eos:
                finished |= next_ids == EOS_ID
            if finished.all():
                break
        return tokens

    def _beam_search(
        self,
        features: torch.Tensor,
        max_new_tokens: int,
        k: int,
        length_penalty: float,
        use_cache: bool,
        num_return: int = 1,
    ) -> torch.Tensor:

        def beam_memory() -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [
                (mk.repeat_interleave(k, 0), mv.repeat_interleave(k, 0)) for mk, mv in self.memory(features)
            ]

        memory_kv = beam_memory()
        caches: list[dict[str, torch.Tensor]] | None = [{} for _ in self.layers] if use_cache else None

        def step(tokens: torch.Tensor, origin: torch.Tensor | None) -> torch.Tensor:
            if caches is None:
                logits = self.decode(tokens, beam_memory())[:, -1]
            else:
                if origin is not None:  # each beam continues the cache of the beam it came from
                    for cache in caches:
                        cache["k"], cache["v"] = cache["k"][origin], cache["v"][origin]
                logits = self.decode(tokens[:, -1:], memory_kv, start=tokens.shape[1] - 1, caches=caches)[:, -1]
            logits[:, [PAD_ID, SOS_ID]] = float("-inf")
            return logits.float().log_softmax(-1)

        b = memory_kv[0][0].shape[0] // k
        start = torch.full((b, 1), SOS_ID, dtype=torch.long, device=self.embed.weight.device)
        return beam_search(
            step, start, beams=k, max_new_tokens=max_new_tokens, eos_id=EOS_ID, pad_id=PAD_ID,
            length_penalty=length_penalty, num_return=num_return,
        )  # fmt: skip
