"""What training on SDXL needs to condition the UNet exactly as the pipeline does at sampling time.

Used by ``train/train_sdxl_lora.py`` and ``train/train_tiny_sdxl_base.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Token ids exactly as the SDXL pipeline makes them: padded and cut to the tokenizer's 77."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_tokens(
    text_encoder: Any, text_encoder_2: Any, ids: torch.Tensor, ids_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings (B, 77, D1 + D2), pooled (B, P)) as ``StableDiffusionXLPipeline.encode_prompt``.

    Both encoders' penultimate hidden states, concatenated; the pooled vector is the projected end-of-text
    state of the second encoder. Training must condition the UNet on exactly what sampling will feed it.
    """
    import torch

    out_1 = text_encoder(ids, output_hidden_states=True)
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1), out_2[0]


def add_time_ids(
    height: int, width: int, batch: int, *, device: Any = None, dtype: Any = None
) -> torch.Tensor:
    """SDXL's size-and-crop conditioning for uncropped pictures: (orig h, orig w, top, left, target h, target w)."""
    import torch

    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype).repeat(batch, 1)
