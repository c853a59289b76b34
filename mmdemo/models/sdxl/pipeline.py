"""The SDXL pipeline behind ``sdxl-base`` and ``sdxl-lora``: loading, the LoRA switch, the parameter-table network.

:class:`SharedPipeline` holds one ``StableDiffusionXLPipeline`` and the LoRA adapters loaded into it; the
adapter (:mod:`mmdemo.generators.sdxl`) selects one under the pipeline's lock and samples.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdemo.models.sdxl.config import (
    MANIFEST_FILE,
    SDXL_TEXT_ENCODER_2_CONFIG,
    SDXL_TEXT_ENCODER_CONFIG,
    SDXL_UNET_CONFIG,
    SDXL_VAE_CONFIG,
    TINY_PIPELINE,
    TINY_TEXT_ENCODER_2_CONFIG,
    TINY_TEXT_ENCODER_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    clip_text_config,
)
from mmdemo.weights import load_state_dict

if TYPE_CHECKING:
    import torch

    from mmdemo.runtime import SharedParts


class SharedPipeline:
    """One loaded ``StableDiffusionXLPipeline`` and the LoRA adapters loaded into it.

    Every use of the pipeline (adapter switch + sampling) happens under ``lock``, so two panels that share it
    never see each other's adapter or scheduler state.
    """

    def __init__(self, pipe: Any, device: str, dtype: Any):
        from diffusers import DPMSolverMultistepScheduler

        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.lock = threading.RLock()
        self.report_scheduler = pipe.scheduler  # the pipeline's own (Euler for SDXL)
        self.fast_scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        self.adapters: dict[str, str] = {}  # LoRA file (resolved path) -> adapter name
        self._latent_rgb: torch.Tensor | None = None  # fitted on the first preview (see latent_rgb_map)

    def to(self, device: str) -> None:
        with self.lock:
            if device != self.device:
                self.pipe.to(device)
                self.device = device

    def load_lora(self, path: Path, preferred_name: str) -> str:
        """Load the LoRA at ``path`` once; the adapter name it lives under. Corrupt files leave no trace."""
        key = str(path.resolve())
        with self.lock:
            if key in self.adapters:
                return self.adapters[key]
            name, n = preferred_name, 1
            while name in self.adapters.values():
                n += 1
                name = f"{preferred_name}_{n}"
            load_state_dict(path)  # a readable safetensors file, or a ValueError naming it
            try:
                # By path, not as a dict: diffusers then also reads the adapter metadata (alpha) in the header.
                self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            except Exception as err:
                # A half-injected adapter would change the base model too: remove whatever got in.
                try:
                    if name in _loaded_adapter_names(self.pipe):
                        self.pipe.delete_adapters(name)
                except Exception:  # noqa: BLE001 - best effort; the original error is the one to report
                    pass
                raise ValueError(
                    f"{path} is not a LoRA for this pipeline: {type(err).__name__}: {err}"
                ) from err
            self.adapters[key] = name
            return name

    def latent_rgb_map(self) -> torch.Tensor | None:
        """This pipeline's latent-to-RGB map for previews (fitted once, by :func:`fit_latent_rgb`); None when the
        fit failed (then there are no previews). Call under ``lock``."""
        if self._latent_rgb is None:
            self._latent_rgb = fit_latent_rgb(self.pipe.vae)
        return self._latent_rgb if bool(self._latent_rgb.isfinite().all()) else None

    def select(self, adapter: str | None) -> None:
        """Switch to ``adapter`` alone, or to the bare base model with ``None`` (call under ``lock``)."""
        if not self.adapters:
            return
        if adapter is None:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter], adapter_weights=[1.0])


def fit_latent_rgb(vae: Any, *, images: int = 16, side: int = 64) -> torch.Tensor:
    """A linear map from the pipeline's latents to RGB, for cheap previews (:func:`mmdemo.previews.fit_rgb_map`).

    SDXL's latents are close to a linear function of the colour of the 8x8 pixels they cover, which is what
    the well-known fixed 4x3 "latent-to-RGB factors" (plus an RGB bias) of SDXL previews are. Rather than carry
    constants that fit one VAE only (our demo VAE is another one), the map is derived from the VAE itself:
    smooth random colour fields are encoded (the posterior's mean times the VAE's scaling factor: the latents
    the pipeline samples) and the map is fitted from them. One small encoder pass, once per pipeline.
    """
    import torch

    from mmdemo.previews import colour_fields, fit_rgb_map

    pixels = colour_fields(images, side)
    parameter = next(vae.parameters())
    with torch.no_grad():
        encoded = vae.encode(pixels.to(parameter.device, parameter.dtype)).latent_dist.mean
    return fit_rgb_map(encoded.float() * float(vae.config.scaling_factor), pixels)


def _loaded_adapter_names(pipe: Any) -> set[str]:
    names: set[str] = set()
    for adapters in pipe.get_list_adapters().values():
        names.update(adapters)
    return names


def shared_pipeline(
    folder: Path,
    device: str,
    dtype: Any,
    *,
    vae_fp16_fix: str | None = None,
    parts: SharedParts | None = None,
) -> tuple[SharedPipeline, str]:
    """(the pipeline for this weights folder, device and dtype, its key in ``parts``).

    With ``parts`` (a :class:`~mmdemo.runtime.ModelManager`'s), every model asking for the same folder gets
    the same pipeline, loaded once and counted once; without, a private one is loaded.
    """
    key = f"sdxl-pipeline:{Path(folder).resolve()}:{device}:{dtype}"

    def build() -> SharedPipeline:
        return SharedPipeline(_load_pipeline(Path(folder), device, dtype, vae_fp16_fix), device, dtype)

    return (parts.get(key, build) if parts is not None else build()), key


def _load_pipeline(folder: Path, device: str, dtype: Any, vae_fp16_fix: str | None) -> Any:
    from diffusers import StableDiffusionXLPipeline

    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    # The registry fetches only the Hub repo's fp16 files (half the download); they load into fp32 too.
    fp16_files = (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    pipe = StableDiffusionXLPipeline.from_pretrained(
        folder, dtype=dtype, local_files_only=True, variant="fp16" if fp16_files else None
    )
    _check_manifest(pipe, folder)
    if vae_fp16_fix and str(dtype) == "torch.float16":
        vae_folder = _fp16_fix_vae_folder(vae_fp16_fix)
        if vae_folder is not None:
            from diffusers import AutoencoderKL

            pipe.vae = AutoencoderKL.from_pretrained(vae_folder, dtype=dtype, local_files_only=True)
            pipe.register_modules(vae=pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_manifest(pipe: Any, folder: Path) -> None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return  # a pipeline from the Hub has none
    counts = load_state_dict(path)
    for name, expected in counts.items():
        got = sum(p.numel() for p in getattr(pipe, name).parameters())
        if got != int(expected.item()):
            raise ValueError(
                f"{folder}/{name} has {got} parameters, its manifest says {int(expected.item())}"
            )


def _fp16_fix_vae_folder(repo_id: str) -> Path | None:
    """Local folder of the fp16-fix VAE (checkpoint root, HF cache, or a download when the Hub is reachable)."""
    from mmdemo import weights
    from mmdemo.registry import HubFiles

    source = HubFiles(repo_id, ("diffusion_pytorch_model.safetensors", "config.json"), role="fp16-safe VAE")
    try:
        return weights.fetch_source(None, source)
    except weights.WeightsUnavailable:
        return None  # optional: the pipeline's own VAE is used (upcast to fp32 for decoding)


def build_sdxl_modules(pipeline: str) -> torch.nn.ModuleDict:
    """UNet, both text encoders and VAE of ``pipeline`` (a Hub id, or the tiny demo one), randomly initialised."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if pipeline == TINY_PIPELINE:
        unet, vae, te1, te2 = (
            TINY_UNET_CONFIG,
            TINY_VAE_CONFIG,
            TINY_TEXT_ENCODER_CONFIG,
            TINY_TEXT_ENCODER_2_CONFIG,
        )
        from mmdemo.models.sdxl.tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        vocab, ids = (
            len(tokenizer),
            dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        )
    else:
        unet, vae, te1, te2 = (
            SDXL_UNET_CONFIG,
            SDXL_VAE_CONFIG,
            SDXL_TEXT_ENCODER_CONFIG,
            SDXL_TEXT_ENCODER_2_CONFIG,
        )
        vocab, ids = None, {}
    return torch.nn.ModuleDict(
        dict(
            unet=UNet2DConditionModel(**unet),
            text_encoder=CLIPTextModel(clip_text_config(te1, vocab, **ids)),
            text_encoder_2=CLIPTextModelWithProjection(clip_text_config(te2, vocab, **ids)),
            vae=AutoencoderKL(**vae),
        )
    )


def truncation_notices(pipe: Any, text: str, what: str) -> list[str]:
    """A notice when ``text`` is longer than the text encoders' window (77 tokens with start and end)."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return []
    kept = tokenizer.decode(ids[1 : limit - 1], skip_special_tokens=True).strip()
    return [
        f"The {what} is {len(ids) - 2} tokens long; SDXL's text encoders read {limit - 2}, so only the start was "
        f"used: \u201c{kept}\u201d."
    ]
