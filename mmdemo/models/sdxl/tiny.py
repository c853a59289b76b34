"""The demo-size SDXL pipeline: offline CLIP tokenizers, a random SDXL-architecture pipeline, its folder.

``train/train_tiny_sdxl_base.py`` trains :func:`build_tiny_pipeline` on Shapes and writes it with
:func:`save_demo_pipeline`; the ``sdxl-base`` / ``sdxl-lora`` demo profiles load that folder.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mmdemo.models.sdxl.config import (
    DEMO_FORMAT,
    MANIFEST_FILE,
    PIPELINE_COMPONENTS,
    TINY_PIPELINE,
    TINY_SCHEDULER_CONFIG,
    TINY_TEXT_ENCODER_2_CONFIG,
    TINY_TEXT_ENCODER_CONFIG,
    TINY_TOKENIZER_MERGES,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    SDXLConfig,
    clip_text_config,
)


def build_tiny_tokenizer(num_merges: int = TINY_TOKENIZER_MERGES) -> Any:
    """A ``CLIPTokenizer`` built offline from the first ``num_merges`` merges of CLIP's BPE vocabulary.

    open_clip ships CLIP's merges (``bpe_simple_vocab_16e6.txt.gz``) inside its package. CLIP's vocabulary is
    the 256 byte symbols, the same with ``</w>``, one token per merge, then the two special tokens; a prefix of
    the merge list is a valid smaller BPE, so this is CLIP's tokenizer with a ~2.5k vocabulary.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + num_merges]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_pipeline(seed: int = 0) -> Any:
    """A randomly initialised SDXL-architecture pipeline at demo size (see the ``TINY_*`` configs)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vocab = len(tokenizer)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY_VAE_CONFIG),
        text_encoder=CLIPTextModel(clip_text_config(TINY_TEXT_ENCODER_CONFIG, vocab, **ids)),
        text_encoder_2=CLIPTextModelWithProjection(
            clip_text_config(TINY_TEXT_ENCODER_2_CONFIG, vocab, **ids)
        ),
        tokenizer=tokenizer,
        tokenizer_2=build_tiny_tokenizer(),
        unet=UNet2DConditionModel(**TINY_UNET_CONFIG),
        scheduler=EulerDiscreteScheduler(**TINY_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def save_demo_pipeline(pipe: Any, folder: str | Path, *, description: dict[str, Any] | None = None) -> Path:
    """Write ``pipe`` as a standard diffusers pipeline folder that ``mmdemo.weights`` also resolves.

    diffusers' layout (``model_index.json`` + one sub-folder per component) is kept so that
    ``StableDiffusionXLPipeline.from_pretrained(folder)`` and ``train_sdxl_lora.py --pretrained folder`` work
    as on the real model; the root gets our ``config.json`` (what this is) and ``manifest.safetensors`` (the
    parameter count of every component, checked on load so a half-copied folder fails loudly).
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    counts = {
        name: torch.tensor([sum(p.numel() for p in getattr(pipe, name).parameters())], dtype=torch.int64)
        for name in PIPELINE_COMPONENTS
    }
    save_file(counts, str(folder / MANIFEST_FILE))
    config = {
        "format": DEMO_FORMAT,
        **asdict(SDXLConfig(pipeline=TINY_PIPELINE, resolution=_default_size(pipe))),
    }
    config["vae_fp16_fix"] = None
    config.update(description or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _default_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
