"""Registry adapters of ``sdxl-base`` and ``sdxl-lora``: Stable Diffusion XL base 1.0, alone and with our LoRA.

The family's code is :mod:`mmdemo.models.sdxl`: configs and the LoRA in ``config.py``, the shared pipeline and
the parameter-table network in ``pipeline.py``, the demo-size pipeline in ``tiny.py``, training helpers in
``training.py``. Two registry ids, one network: ``sdxl-base`` and ``sdxl-lora`` are two :class:`SDXLGenerator`
objects that hold the *same* ``StableDiffusionXLPipeline`` (one part of the model manager's, keyed by weights
folder, device and dtype). The LoRA is loaded into that pipeline once under its adapter name and switched on or off for each
call under the pipeline's lock, so there is never a second 2.6B-parameter UNet in memory and a base call
right after a LoRA call is exactly the base model again (peft's disabled adapters are skipped, not zeroed).

Presets:

* ``report``: the pipeline's own Euler scheduler, 100 steps, guidance 5.0, 1024x1024 (what the report ran);
* ``fast``: ``DPMSolverMultistepScheduler`` built from the same scheduler config, 25 steps.

The demo profile runs the same pipeline class at tiny size: ``tiny.build_tiny_pipeline`` makes an SDXL-shaped
pipeline (``text_time`` added conditioning, two CLIP text encoders, one with projection, offline tokenizers
cut from the BPE vocabulary open_clip ships) that ``train/train_tiny_sdxl_base.py`` trains on Shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdemo.interfaces import GenerationRequest, GenerationResult, Generator, ProgressCallback
from mmdemo.models.sdxl.config import LORA_WEIGHT_NAME, SDXLConfig, lora_config
from mmdemo.models.sdxl.pipeline import (
    SharedPipeline,
    build_sdxl_modules,
    shared_pipeline,
    truncation_notices,
)
from mmdemo.weights import WeightsUnavailable

if TYPE_CHECKING:
    import torch

    from mmdemo.registry import ModelSpec
    from mmdemo.runtime import SharedParts
    from mmdemo.weights import ResolvedWeights


# Previews of pictures up to this many pixels are decoded by the VAE; larger ones use a linear map.
PREVIEW_DECODE_MAX_PIXELS = 256 * 256


class SDXLGenerator(Generator):
    """``sdxl-base`` (no adapter) and ``sdxl-lora`` (adapter on) over one shared SDXL pipeline."""

    param_note = (
        "SDXL base 1.0 = UNet 2.57B + CLIP ViT-L text 123M + OpenCLIP bigG text 695M + VAE 84M, all frozen "
        "(configs of stabilityai/stable-diffusion-xl-base-1.0 written in code); the report gives no counts"
    )

    def __init__(
        self,
        spec: ModelSpec,
        weights: ResolvedWeights,
        shared: SharedPipeline,
        adapter: str | None,
        shared_parts: tuple[str, ...] = (),
    ):
        self.spec = spec
        self.weights = weights
        self.shared = shared
        # The model manager counts a shared pipeline once, by its key; a private one is this model's own bytes.
        self.shared_parts = shared_parts
        if not shared_parts:
            self.pipeline = shared.pipe  # what mmdemo.runtime.module_bytes measures
        self.adapter = adapter
        self.device = shared.device
        self.config = SDXLConfig.from_dict(
            spec.full_config if weights.profile == "full" else spec.tiny_config
        )

    # ---- loading

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        weights: ResolvedWeights,
        *,
        device: str | None = None,
        shared: SharedParts | None = None,
    ) -> SDXLGenerator:
        """``shared``: where ``sdxl-base`` and ``sdxl-lora`` find their one pipeline (a model manager's parts)."""
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp16 halves memory and time on GPUs; CPUs have no fast fp16 kernels, so they stay in fp32.
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        config = SDXLConfig.from_dict(spec.full_config if weights.profile == "full" else spec.tiny_config)
        base_folder, lora_file = cls._locate(spec, weights, config)
        if lora_file is not None and not lora_file.is_file():
            raise WeightsUnavailable(
                spec.id, weights.profile, [str(lora_file)],
                f"put our LoRA ({LORA_WEIGHT_NAME}, written by train/train_sdxl_lora.py) at {lora_file}",
            )  # fmt: skip
        pipeline, key = shared_pipeline(
            base_folder, device, dtype, vae_fp16_fix=config.vae_fp16_fix, parts=shared
        )
        adapter = None
        if lora_file is not None:
            try:
                adapter = pipeline.load_lora(lora_file, config.lora_adapter)
            except ValueError as err:
                raise WeightsUnavailable(
                    spec.id, weights.profile, [str(lora_file)],
                    f"the LoRA file is unreadable or does not fit the base pipeline ({err}); retrain it with "
                    "train/train_sdxl_lora.py or restore the file (the base model is unaffected)",
                ) from err  # fmt: skip
        return cls(spec, weights, pipeline, adapter, (key,) if shared is not None else ())

    @staticmethod
    def _locate(spec: ModelSpec, weights: ResolvedWeights, config: SDXLConfig) -> tuple[Path, Path | None]:
        """(base pipeline folder, LoRA file or None) for a resolved spec."""
        return weights["pipeline"], (weights["lora"] if config.lora_rank is not None else None)

    def to(self, device: str) -> SDXLGenerator:
        self.device = device
        self.shared.to(device)
        return self

    # ---- sampling

    def sample(self, request: GenerationRequest, progress: ProgressCallback | None) -> GenerationResult:
        import torch

        from mmdemo.models.diffusion.sampling import distinct_timesteps
        from mmdemo.models.guards import check_finite
        from mmdemo.previews import emit_preview, preview_steps

        steps, guidance = request["steps"], request["guidance"]
        width, height = request["width"], request["height"]
        preview_at = preview_steps(steps)
        pipe = self.shared.pipe
        notices = truncation_notices(pipe, request.prompt, "prompt")
        if request.negative_prompt:
            notices += truncation_notices(pipe, request.negative_prompt, "negative prompt")

        def on_step_end(
            _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            # A NaN latent would come out as a black picture with no message; stop with one instead.
            check_finite(
                callback_kwargs["latents"],
                model=self.spec.id,
                where=f"at step {step + 1} of {steps} (timestep {int(_timestep)}, the latents)",
            )
            if progress is not None:
                progress(step + 1, steps)
            if request.preview is not None and step + 1 in preview_at:
                latents = clean_latents(pipe.scheduler, callback_kwargs["latents"])[:1]
                pixels = self.preview_pixels(latents, width * height)
                if pixels is not None:
                    emit_preview(request.preview, step + 1, steps, pixels, (width, height))
            return callback_kwargs

        with self.shared.lock:
            if self.shared.device != self.device:
                self.shared.to(self.device)  # the other panel moved the shared pipeline away
            self.shared.select(self.adapter)
            pipe.scheduler = (
                self.shared.report_scheduler if request.preset == "report" else self.shared.fast_scheduler
            )
            # CPU noise: the same picture on any device.
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            # diffusers' own grid repeats or overruns timesteps at some step counts (see distinct_timesteps).
            custom = distinct_timesteps(pipe.scheduler, steps)
            timing = dict(num_inference_steps=steps) if custom is None else dict(timesteps=custom)
            with torch.inference_mode():
                pixels = pipe(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    guidance_scale=guidance,
                    width=width,
                    height=height,
                    generator=generator,
                    callback_on_step_end=on_step_end,
                    output_type="pt",
                    **timing,
                ).images
            check_finite(pixels, model=self.spec.id, where="in the VAE decoder's pixels")
            image = pipe.image_processor.numpy_to_pil(pipe.image_processor.pt_to_numpy(pixels))[0]
        settings = dict(steps=steps, guidance=guidance, width=width, height=height)
        return GenerationResult(image, settings, notices)

    def preview_pixels(self, latents: torch.Tensor, pixels: int) -> torch.Tensor | None:
        """(3, h, w) pixels in about [-1, 1] for a preview of ``latents`` (1, C, h, w) of a ``pixels``-pixel picture.

        Small pictures (the demo's 32 px) are decoded by the VAE, which then costs a fraction of a denoising
        step; larger ones go through the pipeline's fitted linear latent-to-RGB map (one matrix product, at
        1/8 of the picture's side), since decoding a 1024 px picture costs several steps. Call under the lock.
        """
        if pixels <= PREVIEW_DECODE_MAX_PIXELS:
            vae = self.shared.pipe.vae
            scaled = latents.to(next(vae.parameters()).dtype) / vae.config.scaling_factor
            return vae.decode(scaled).sample[0]
        from mmdemo.previews import apply_rgb_map

        rgb_map = self.shared.latent_rgb_map()
        return None if rgb_map is None else apply_rgb_map(latents[0], rgb_map)

    # ---- parameter table

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> torch.nn.Module:
        """SDXL's UNet, both text encoders and VAE (all frozen), plus the rank-r LoRA when ``lora_rank`` is set."""
        import torch

        cfg = SDXLConfig.from_dict(config)
        with torch.device(device):
            network = build_sdxl_modules(cfg.pipeline)
            for p in network.parameters():
                p.requires_grad_(False)
            if cfg.lora_rank is not None:
                network["unet"].add_adapter(lora_config(cfg.lora_rank))
        return network


def clean_latents(scheduler: Any, latents: Any) -> Any:
    """What a preview shows after a step: the scheduler's latest prediction of the clean latents where it keeps
    one (DPM-Solver++, the fast preset, stores it for its next step), else the current latents (Euler, the
    report preset, keeps none: the preview then shows the noise clearing). Read-only."""
    if getattr(scheduler.config, "algorithm_type", None) in ("dpmsolver++", "sde-dpmsolver++"):
        stored = getattr(scheduler, "model_outputs", None) or [None]
        if stored[-1] is not None and stored[-1].shape == latents.shape:
            return stored[-1]
    return latents


class SDXLLoRAGenerator(SDXLGenerator):
    """Registry adapter for ``sdxl-lora``: the same class, its own parameter note."""

    param_note = (
        "trainable = our rank-128 LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0); "
        "the whole SDXL base (3.5B) is frozen; the report gives no counts"
    )
