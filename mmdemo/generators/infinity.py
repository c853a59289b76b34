"""Infinity-2B behind the uniform :class:`~mmdemo.interfaces.Generator` interface.

Full profile: the official ``infinity_2b_reg.pth`` (transformer) and ``infinity_vae_d32reg.pth`` (BSQ-VAE,
decoder used) loaded strictly into our own modules (:mod:`mmdemo.models.infinity`), and ``google/flan-t5-xl``
through transformers' ``T5EncoderModel``. Demo profile: the same classes at tiny size trained on Shapes
(``train/train_infinity_tiny.py``), with a tiny T5 encoder and a word-level tokenizer.

Model options (``generate(..., **extra)``):

* ``pixel_budget``: ``"0.06M"`` (256x256 for 1:1), ``"0.25M"`` (512x512) or ``"1M"`` (1024x1024, 13 scales);
  default 1M on a GPU and 0.06M on a CPU; preset ``"report"`` uses 1M.
* ``cfg`` (guidance on the logits, default 3; ``guidance=`` means the same), ``tau`` (0.5), ``top_p`` (0.97),
  ``top_k`` (0: off).
* ``aspect_ratio``: ``"W:H"`` text or a height/width number; otherwise ``height / width`` when both are given.
  It snaps to the nearest of Infinity's 15 templates, with a notice.
* ``free_text_encoder_after_encoding``: drop T5 from memory after each prompt is encoded (it is reloaded on
  the next call); also settable as the attribute of the same name. With it the 2B model fits a 24 GB GPU.

``steps`` do not apply (the number of scales is set by the pixel budget): a value given is ignored with a
notice. Notices go into ``image.info["mmdemo_notices"]``.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

from mmdemo.interfaces import Generator, Preset, ProgressCallback
from mmdemo.registry import ModelSpec
from mmdemo.weights import ResolvedWeights

KNOWN_OPTIONS = (
    "pixel_budget",
    "cfg",
    "tau",
    "top_p",
    "top_k",
    "aspect_ratio",
    "free_text_encoder_after_encoding",
)


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

            place_transformer,
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
        import torch

        if self._text_encoder is not None:
            return self._tokenizer, self._text_encoder
        folder = Path(self._text_folder)
        if self.weights.profile == "demo":
            from safetensors.torch import load_file
            from transformers import PreTrainedTokenizerFast, T5EncoderModel

            from mmdemo.models.infinity.loading import load_strict, tiny_t5_config

            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
            encoder = T5EncoderModel(tiny_t5_config(self.family.t5))
            state = load_file(str(folder / "text_encoder.safetensors"))
            # The input embedding and the encoder's own copy are one tied tensor; safetensors stores it once.
            state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
            state.setdefault("shared.weight", state.get("encoder.embed_tokens.weight"))
            load_strict(encoder, {k: v.float() for k, v in state.items()}, what=str(folder / "text_encoder"))
        else:
            from transformers import AutoTokenizer, T5EncoderModel

            # As upstream: the legacy SentencePiece behaviour the model was trained with, fp16 on GPUs
            # (transformers keeps T5's overflow-prone feed-forward output layers in fp32 by itself).
            tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True)
            dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
            encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype)
        self._tokenizer, self._text_encoder = tokenizer, encoder.to(self.device).eval().requires_grad_(False)
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
        import torch

        tokenizer, encoder = self._load_text_encoder()
        limit = self.family.transformer.get("text_maxlen", 512)
        notices = []
        full = tokenizer(prompts, truncation=False)["input_ids"]
        if any(len(ids) > limit for ids in full):
            notices.append(f"The prompt is longer than {limit} tokens; only the first {limit} were used.")
        enc = tokenizer(prompts, padding="longest", truncation=True, max_length=limit, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        with torch.no_grad():
            text = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return text, mask.bool(), notices

    # ------------------------------------------------------------------ generation

    def to(self, device: str) -> InfinityGenerator:
        self.transformer.to(device)
        self.vae.to(device)
        if self._text_encoder is not None:
            self._text_encoder.to(device)
        self.device = device
        return self

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str = "",
        preset: Preset = "fast",
        width: int | None = None,
        height: int | None = None,
        progress: ProgressCallback | None = None,
        **extra: Any,
    ):
        import torch
        from PIL import Image

        from mmdemo.inputs import InputError
        from mmdemo.models.guards import check_finite
        from mmdemo.models.infinity import SamplingOptions, sample_codes
        from mmdemo.models.infinity.schedules import describe_template, get_schedule

        options, notices = self.resolve_options(
            prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            negative_prompt=negative_prompt,
            preset=preset,
            width=width,
            height=height,
            extra=extra,
        )
        try:
            sampling = SamplingOptions(
                cfg=options["cfg"], tau=options["tau"], top_k=options["top_k"], top_p=options["top_p"]
            )
        except ValueError as err:
            raise InputError(str(err)) from None
        fam = self.family
        schedule = get_schedule(options["h_div_w"], options["pixel_budget"], fam.budget_scales, fam.stride)
        if abs(schedule.template - options["h_div_w"]) > 0.005:
            notices.append(
                f"Aspect ratio {options['aspect_label']} is not one of Infinity's templates; the nearest one, "
                f"{describe_template(schedule.template)} (height/width {schedule.template}), was used."
            )
        out_h, out_w = schedule.image_size
        if (width and width != out_w) or (height and height != out_h):
            notices.append(f"Infinity's image size follows the pixel budget: {out_w}x{out_h} pixels.")

        text, mask, text_notices = self.encode_prompts([options["prompt"]])
        notices += text_notices
        negative = None
        if options["negative_prompt"] and sampling.cfg != 1.0:
            neg_text, neg_mask, _ = self.encode_prompts([options["negative_prompt"]])
            negative = (neg_text, neg_mask)
        if self.free_text_encoder_after_encoding or options["free_text_encoder_after_encoding"]:
            self.free_text_encoder()

        device = torch.device(self.device)
        generator = torch.Generator(device=device).manual_seed(options["seed"])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
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
                model_name=self.spec.id,
            )
            pixels = check_finite(
                self.vae.decode(codes.float()), model=self.spec.id, where="in the VAE decoder's pixels"
            )
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array, mode="RGB")
        image.info["mmdemo_notices"] = notices
        image.info["mmdemo_settings"] = {
            "seed": options["seed"],
            "pixel_budget": options["pixel_budget"],
            "scales": len(schedule.scales),
            "template": schedule.template,
            "cfg": sampling.cfg,
            "tau": sampling.tau,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "weights": self.weights.label,
        }
        return image

    def resolve_options(
        self,
        prompt: Any,
        *,
        seed: Any,
        steps: Any = None,
        guidance: Any = None,
        negative_prompt: Any = "",
        preset: Any = "fast",
        width: Any = None,
        height: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Validate every input; returns the settings to use and the notices for the user."""
        from mmdemo.inputs import (
            InputError,
            check_guidance,
            check_negative_prompt,
            check_prompt,
            check_seed,
            check_steps,
        )
        from mmdemo.interfaces import PRESETS
        from mmdemo.models.infinity.schedules import parse_aspect_ratio

        extra = dict(extra or {})
        notices: list[str] = []
        checked_prompt = check_prompt(prompt)
        notices += checked_prompt.notices
        negative = check_negative_prompt(negative_prompt)
        notices += negative.notices
        seed_value = check_seed(seed).value
        if check_steps(steps).value is not None:
            notices.append(
                "Infinity has no step count (the pixel budget sets the number of scales); steps ignored."
            )
        if preset not in PRESETS:
            raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        defaults = self.spec.defaults
        unknown = sorted(set(extra) - set(KNOWN_OPTIONS))
        if unknown:
            notices.append(f"Options not used by Infinity were ignored: {', '.join(unknown)}.")

        cfg = extra.get("cfg", guidance)
        cfg = check_guidance(cfg).value
        if cfg is None:
            cfg = defaults.get("cfg", 3.0)
        tau = _number(extra.get("tau", defaults.get("tau", 0.5)), "tau")
        if not 0 < tau <= 10:
            raise InputError(f"tau (temperature) must be above 0 and at most 10, got {tau!r}.")
        top_p = _number(extra.get("top_p", defaults.get("top_p", 0.97)), "top_p")
        if not 0 <= top_p <= 1:
            raise InputError(f"top_p must be between 0 and 1, got {top_p!r}.")
        top_k = _number(extra.get("top_k", defaults.get("top_k", 0)), "top_k")
        if top_k < 0 or not float(top_k).is_integer():
            raise InputError(f"top_k must be a whole number >= 0, got {top_k!r}.")

        budget = extra.get("pixel_budget")
        if budget in (None, ""):
            if preset == "report":
                budget = defaults.get("pixel_budget", "1M")
            else:
                on_gpu = str(self.device).startswith("cuda")
                budget = (
                    defaults.get("pixel_budget", "1M")
                    if on_gpu
                    else defaults.get("cpu_pixel_budget", "0.06M")
                )
        if budget not in self.family.budget_scales:
            raise InputError(
                f"Unknown pixel budget {budget!r}; choose one of {', '.join(self.family.budget_scales)}."
            )
        for name, value in (("width", width), ("height", height)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise InputError(f"The {name} must be a positive number of pixels, got {value!r}.")
        aspect = extra.get("aspect_ratio")
        try:
            h_div_w = parse_aspect_ratio(aspect, width, height)
        except ValueError as err:
            raise InputError(f"{err}.") from None
        if aspect not in (None, ""):
            label = str(aspect)
        elif width and height:
            label = f"{width}:{height}"
        else:
            label = "1:1"
        if self.weights.profile == "demo" and abs(h_div_w - 1.0) > 0.01:
            notices.append("The demo model was trained on square 32x32 Shapes pictures only.")
        return (
            dict(
                prompt=checked_prompt.value,
                negative_prompt=negative.value,
                seed=seed_value,
                cfg=float(cfg),
                tau=float(tau),
                top_p=float(top_p),
                top_k=int(top_k),
                pixel_budget=budget,
                h_div_w=h_div_w,
                aspect_label=label,
                free_text_encoder_after_encoding=bool(extra.get("free_text_encoder_after_encoding", False)),
            ),
            notices,
        )


def _number(value: Any, name: str) -> float:
    from mmdemo.inputs import InputError

    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    return number


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
