"""Infinity (arXiv 2412.04431), written for this project: transformer, BSQ-VAE, schedules, sampler, loading.

The registry's ``full_config`` / ``tiny_config`` for ``infinity-2b`` are keyword arguments of
:class:`InfinityFamilyConfig`; the adapter is :mod:`mmdemo.generators.infinity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmdemo.models.infinity.bsq_vae import BSQVAE, BSQVAEConfig, teacher_forcing_inputs, vae_config_for
from mmdemo.models.infinity.loading import (
    FLAN_T5_XL_CONFIG,
    CheckpointMismatch,
    build_word_tokenizer,
    load_strict,
    tiny_t5_config,
)
from mmdemo.models.infinity.sampler import SamplingOptions, sample_codes
from mmdemo.models.infinity.schedules import OFFICIAL_BUDGET_SCALES, get_schedule
from mmdemo.models.infinity.transformer import Infinity, InfinityConfig

__all__ = [
    "BSQVAE",
    "FLAN_T5_XL_CONFIG",
    "BSQVAEConfig",
    "CheckpointMismatch",
    "Infinity",
    "InfinityConfig",
    "InfinityFamilyConfig",
    "SamplingOptions",
    "build_word_tokenizer",
    "get_schedule",
    "load_strict",
    "sample_codes",
    "teacher_forcing_inputs",
    "tiny_t5_config",
]


@dataclass
class InfinityFamilyConfig:
    """Everything that defines one Infinity model (the 2B one by default).

    Args:
        transformer: :class:`InfinityConfig` keyword arguments.
        vae: :class:`BSQVAEConfig` keyword arguments, or the name of an official VAE (``"d32reg"``).
        text_encoder: Hub id of the T5 encoder, or a name for the demo's own tiny one.
        t5: ``T5Config`` keyword arguments of a tiny encoder (demo); ``None`` for a Hub model.
        budget_scales: pixel budget -> number of scales of the template tables.
        default_budget: the budget used when none is asked for (the demo is trained on one only).
        image_size: training image side of the demo (informational for the full model).
    """

    transformer: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] | str = "d32reg"
    text_encoder: str = "google/flan-t5-xl"
    t5: dict[str, Any] | None = None
    budget_scales: dict[str, int] = field(default_factory=lambda: dict(OFFICIAL_BUDGET_SCALES))
    default_budget: str = "1M"
    image_size: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.vae, str):
            self.vae = vae_config_for(self.vae)
        if self.default_budget not in self.budget_scales:
            raise ValueError(f"default_budget {self.default_budget!r} not in budget_scales")
        codebook = self.vae.get("codebook_dim", BSQVAEConfig().codebook_dim)
        self.transformer = {"codebook_dim": codebook, **self.transformer}
        if self.transformer["codebook_dim"] != codebook:
            raise ValueError("transformer codebook_dim must equal the VAE's codebook_dim")

    @property
    def stride(self) -> int:
        return BSQVAEConfig(**self.vae).patch_size
