"""Infinity-2B behind the uniform :class:`~mmdemo.interfaces.Generator` interface.

Full profile: the official ``infinity_2b_reg.pth`` (transformer) and ``infinity_vae_d32reg.pth`` (BSQ-VAE,
decoder used) loaded strictly into our own modules (:mod:`mmdemo.models.infinity`), and ``google/flan-t5-xl``
through transformers' ``T5EncoderModel``. Demo profile: the same classes at tiny size trained on Shapes
(``train/train_infinity_tiny.py``), with a tiny T5 encoder and a word-level tokenizer.

Its options are declared in the registry (``infinity-2b``) and checked before sampling: ``pixel_budget``
(``"0.06M"`` 256x256 for 1:1, ``"0.25M"`` 512x512, ``"1M"`` 1024x1024 in 13 scales; default 1M on a GPU, 0.06M
on a CPU, 1M under the "report" preset), ``guidance`` (cfg on the logits, alias ``cfg``), ``tau``, ``top_p``,
``top_k``, ``aspect_ratio`` (``"W:H"`` or height/width, else ``height / width`` when both are given; snapped to
the nearest of Infinity's 15 templates with a notice) and ``free_text_encoder_after_encoding`` (drop T5 after
each prompt, reloaded on the next call; also an attribute of the same name; with it the 2B model fits a 24 GB
GPU). It has no step count: the pixel budget sets the number of scales.

Seeding: the sampler draws its random bits on the model's device, so a seed gives the same picture on the
same device, and different pictures on a GPU and a CPU (the diffusion models draw their noise on the CPU).
"""

from __future__ import annotations

import gc
from typing import Any

from mmdemo.interfaces import GenerationRequest, GenerationResult, Generator, ProgressCallback
from mmdemo.registry import ModelSpec
from mmdemo.weights import ResolvedWeights


def _family_config(config: dict[str, Any]):
    from mmdemo.models.infinity import InfinityFamilyConfig

    return InfinityFamilyConfig(**config)


class InfinityGenerator(Generator):
    """Bitwise visual autoregressive text-to-image (arXiv 2412.04431), our own PyTorch inference."""

    param_note = (
        "Infinity transformer only (the official checkpoint's names); 2,204,564,032 parameters + 133,120 in the "
        "65 all-zero zero_k_bias buffers = 2,204,697,152 tensors in infinity_2b_reg.pth. Not counted: BSQ-VAE d32 "
        "decoder 65.09M (encoder 45.03M, training only) and flan-t5-xl encoder 1.22B. All frozen: inference only."
    )

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, family, transformer, vae, device: str):
        self.spec, self.weights, self.family = spec, weights, family
        self.transformer, self.vae, self.device = transformer, vae, device
        self.free_text_encoder_after_encoding = False
        self._tokenizer = None
        self._text_encoder = None

    # ------------------------------------------------------------------ building

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta"):
        """The transformer of ``config`` with the official parameter names; frozen (we only run it)."""
        import torch

        from mmdemo.models.infinity import Infinity, InfinityConfig

        family = _family_config(config)
        with torch.device(device):
            model = Infinity(InfinityConfig(**family.transformer))
        return model.requires_grad_(False).eval()

    @classmethod
    def build_vae(cls, config: dict[str, Any], device: str = "meta", with_encoder: bool = False):
        import torch

        from mmdemo.models.infinity import BSQVAE, BSQVAEConfig

        family = _family_config(config)
        with torch.device(device):
            vae = BSQVAE(BSQVAEConfig(**family.vae), with_encoder=with_encoder)
        return vae.requires_grad_(False).eval()

    @classmethod
    def load(
        cls, spec: ModelSpec, weights: ResolvedWeights, *, device: str | None = None
    ) -> InfinityGenerator:
        from mmdemo.models.infinity.loading import (
            TRANSFORMER_IGNORED_KEYS,
            load_strict,
            place_transformer,
            read_checkpoint,
            unwrap_plain_vae_names,
            vae_state_from_file,
        )
        from mmdemo.runtime import default_device

        device = device or default_device()
        transformer_file, vae_file = weights["transformer"], weights["vae"]
        if weights.profile == "demo":  # a demo checkpoint carries its own (tiny) configuration
            from mmdemo.weights import read_config

            config = read_config(transformer_file.parent)
            build_config = {k: v for k, v in config.items() if k != "t5"} | {"t5": config.get("t5")}
        else:
            build_config = dict(spec.full_config)
        family = _family_config(build_config)
        transformer = cls.build_network(build_config, device="meta")
        state = read_checkpoint(transformer_file)
        load_strict(
            transformer, state, what=str(transformer_file), ignored_keys=TRANSFORMER_IGNORED_KEYS, assign=True
        )
        del state
        transformer = place_transformer(transformer, device)
        vae = cls.build_vae(build_config, device="meta", with_encoder=False)
        raw = vae_state_from_file(read_checkpoint(vae_file))
        raw = unwrap_plain_vae_names(raw, set(vae.state_dict()))
        # The decoder-only VAE leaves the encoder's keys unused on purpose (training needs them, sampling not).
        load_strict(vae, raw, what=str(vae_file), ignored_prefixes=("encoder.",), assign=True)
        vae = vae.float().to(device)
        generator = cls(spec, weights, family, transformer, vae, device)
        generator._text_folder = weights["text_encoder"]
        return generator

    # ------------------------------------------------------------------ text

    def _load_text_encoder(self):
        """T5, loaded on first use (and again after :meth:`free_text_encoder`)."""
        from mmdemo.models.infinity.loading import load_text_encoder

        if self._text_encoder is None:
            tiny = self.family.t5 if self.weights.profile == "demo" else None
            self._tokenizer, self._text_encoder = load_text_encoder(self._text_folder, self.device, tiny)
        return self._tokenizer, self._text_encoder

    def free_text_encoder(self) -> None:
        """Release T5 (it is reloaded from disk when next needed)."""
        import torch

        self._text_encoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def encode_prompts(self, prompts: list[str]) -> tuple[Any, Any, list[str]]:
        """T5 features (B, T, Ct) float32, mask (B, T) bool, notices (truncation)."""
        from mmdemo.models.infinity.loading import encode_text

        tokenizer, encoder = self._load_text_encoder()
        limit = self.family.transformer.get("text_maxlen", 512)
        return encode_text(tokenizer, encoder, prompts, limit, self.device)

    # ------------------------------------------------------------------ generation

    def to(self, device: str) -> InfinityGenerator:
        self.transformer.to(device)
        self.vae.to(device)
        if self._text_encoder is not None:
            self._text_encoder.to(device)
        self.device = device
        return self

    def sample(self, request: GenerationRequest, progress: ProgressCallback | None) -> GenerationResult:
        import torch
        from PIL import Image

        from mmdemo.models.guards import check_finite
        from mmdemo.models.infinity import SamplingOptions, sample_codes
        from mmdemo.models.infinity.schedules import describe_template, get_schedule, parse_aspect_ratio
        from mmdemo.previews import emit_preview

        aspect, width, height = request["aspect_ratio"], request["width"], request["height"]
        h_div_w = parse_aspect_ratio(aspect, width, height)
        label = aspect or (f"{width}:{height}" if width and height else "1:1")
        notices: list[str] = []
        if self.weights.profile == "demo" and abs(h_div_w - 1.0) > 0.01:
            notices.append("The demo model was trained on square 32x32 Shapes pictures only.")
        sampling = SamplingOptions(
            cfg=request["guidance"], tau=request["tau"], top_k=request["top_k"], top_p=request["top_p"]
        )
        fam = self.family
        schedule = get_schedule(h_div_w, request["pixel_budget"], fam.budget_scales, fam.stride)
        if abs(schedule.template - h_div_w) > 0.005:
            notices.append(
                f"Aspect ratio {label} is not one of Infinity's templates; the nearest one, "
                f"{describe_template(schedule.template)} (height/width {schedule.template}), was used."
            )
        out_h, out_w = schedule.image_size
        if (width and width != out_w) or (height and height != out_h):
            notices.append(f"Infinity's image size follows the pixel budget: {out_w}x{out_h} pixels.")

        text, mask, text_notices = self.encode_prompts([request.prompt])
        notices += text_notices
        negative = None
        if request.negative_prompt and sampling.cfg != 1.0:
            neg_text, neg_mask, _ = self.encode_prompts([request.negative_prompt])
            negative = (neg_text, neg_mask)
        if self.free_text_encoder_after_encoding or request["free_text_encoder_after_encoding"]:
            self.free_text_encoder()

        device = torch.device(self.device)
        # Drawn on the model's device (the sampler draws its bits there, step by step): the same seed gives the
        # same picture on the same device, but a GPU and a CPU give different ones.
        generator = torch.Generator(device=device).manual_seed(request.seed)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
        on_scale = None
        if request.preview is not None:

            def on_scale(done: int, total: int, codes: torch.Tensor) -> None:
                # Each finished scale decoded at its own grid: a fraction of the final decode's cost. (A linear
                # map from codes to colours would be cheaper, but bit codes are far from linear in colour: its
                # previews were a wash of the wrong colours.)
                emit_preview(request.preview, done, total, self.vae.decode(codes.float())[0], (out_w, out_h))

        with torch.no_grad(), autocast:
            codes, _ = sample_codes(
                self.transformer,
                text,
                mask,
                list(schedule.scales),
                sampling,
                generator,
                rope_grid=schedule.rope_grid,
                negative=negative,
                progress=progress,
                preview=on_scale,
                model_name=self.spec.id,
            )
            pixels = check_finite(
                self.vae.decode(codes.float()), model=self.spec.id, where="in the VAE decoder's pixels"
            )
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array, mode="RGB")
        settings = {
            "pixel_budget": request["pixel_budget"],
            "scales": len(schedule.scales),
            "template": schedule.template,
            "aspect_ratio": describe_template(schedule.template),
            "guidance": sampling.cfg,
            "tau": sampling.tau,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
        }
        return GenerationResult(image, settings, notices)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
