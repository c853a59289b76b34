"""Stable Diffusion XL base 1.0, alone and with our Flickr8k LoRA, behind one shared pipeline.

Two registry ids, one network: ``sdxl-base`` and ``sdxl-lora`` are two :class:`SDXLGenerator` objects that
hold the *same* ``StableDiffusionXLPipeline`` (a module-level holder keyed by weights folder, device and
dtype). The LoRA is loaded into that pipeline once under its adapter name and switched on or off for each
call under the pipeline's lock, so there is never a second 2.6B-parameter UNet in memory and a base call
right after a LoRA call is exactly the base model again (peft's disabled adapters are skipped, not zeroed).

Presets:

* ``report``: the pipeline's own Euler scheduler, 100 steps, guidance 5.0, 1024x1024 (what the report ran);
* ``fast``: ``DPMSolverMultistepScheduler`` built from the same scheduler config, 25 steps.

The demo profile runs the same pipeline class at tiny size: ``build_tiny_pipeline`` makes an SDXL-shaped
pipeline (``text_time`` added conditioning, two CLIP text encoders, one with projection, offline tokenizers
cut from the BPE vocabulary open_clip ships) that ``train/train_tiny_sdxl_base.py`` trains on Shapes.
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdemo.interfaces import GenerationRequest, GenerationResult, Generator, ProgressCallback
from mmdemo.weights import WeightsUnavailable, load_state_dict

if TYPE_CHECKING:
    import torch

    from mmdemo.registry import ModelSpec
    from mmdemo.runtime import SharedParts
    from mmdemo.weights import ResolvedWeights

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' standard LoRA file name
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet attention projections (report)
DEFAULT_ADAPTER_NAME = "flickr8k"
FP16_FIX_VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
TINY_PIPELINE = "tiny-sdxl-shapes"  # registry name of the demo-size pipeline
DEMO_FORMAT = "diffusers-pipeline"  # root config.json "format" of a demo pipeline folder
MANIFEST_FILE = "manifest.safetensors"  # per-component parameter counts: a completeness check of the folder
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class SDXLConfig:
    """What the registry says about an SDXL model (``full_config`` / ``tiny_config`` are its kwargs).

    Args:
        pipeline: Hub id of the base pipeline, or ``"tiny-sdxl-shapes"`` for the demo-size one.
        resolution: default image side in pixels (1024 for SDXL; 32 for the tiny Shapes pipeline).
        lora_rank: rank of our LoRA on the UNet attention projections; ``None`` for the base model.
        lora_adapter: adapter name the LoRA is loaded under in the shared pipeline.
        vae_fp16_fix: optional Hub id of a VAE that decodes in fp16 without NaNs (used on CUDA when its files
            are already local or downloadable; otherwise the pipeline upcasts its own VAE to fp32 to decode).
    """

    pipeline: str = "stabilityai/stable-diffusion-xl-base-1.0"
    resolution: int = 1024
    lora_rank: int | None = None
    lora_adapter: str = DEFAULT_ADAPTER_NAME
    vae_fp16_fix: str | None = FP16_FIX_VAE_REPO

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SDXLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown SDXL config keys {unknown}; known: {sorted(known)}")
        return cls(**config)


# ---------------------------------------------------------------------------------------------- network configs
# Written out here because the Hub is not reachable where the parameter table is built; they are the
# config.json files of stabilityai/stable-diffusion-xl-base-1.0 (unet/, vae/, text_encoder/, text_encoder_2/).

SDXL_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),  # diffusers' historical name: these are head *counts*
    cross_attention_dim=2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP ViT-bigG) penultimate states, concatenated
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size/crop ids x 256 + 1280 pooled text
)
SDXL_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = dict(  # OpenCLIP ViT-bigG/14 text tower, with projection
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
SDXL_SCHEDULER_CONFIG: dict[str, Any] = dict(  # stabilityai/stable-diffusion-xl-base-1.0 scheduler/
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)

# The demo-size pipeline: same classes, numbers small enough to train on one CPU core in minutes.
TINY_TOKENIZER_MERGES = 2000  # the first BPE merges of CLIP's vocabulary: covers every Shapes word
TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16,  # latents of 32 px pictures through a VAE that halves the side
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),  # ~1.2M parameters: ~0.6 s per batch of 32 on one CPU core
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    transformer_layers_per_block=1,
    attention_head_dim=(2, 4),
    cross_attention_dim=128,  # 64 + 64 penultimate states of the two tiny text encoders
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=16,
    projection_class_embeddings_input_dim=6 * 16 + 64,
    norm_num_groups=32,
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),  # one downsampling: 32 px -> 16x16x4 latents
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=32,
    mid_block_add_attention=False,  # flat shapes need no global attention; it doubled the VAE's step time
    sample_size=32,
    scaling_factor=1.0,  # replaced by 1/std of the trained VAE's latents
    force_upcast=False,
)
TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,  # the pipeline reads the penultimate layer, as SDXL does
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)
TINY_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {**TINY_TEXT_ENCODER_CONFIG, "hidden_act": "gelu"}
TINY_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",  # cosine + v-prediction learned Shapes quickly on CPU; epsilon did not
    prediction_type="v_prediction",
    timestep_spacing="trailing",  # few-step sampling starts from pure noise
)


def _clip_text_config(config: dict[str, Any], vocab_size: int | None = None, **token_ids: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{**config, **({"vocab_size": vocab_size} if vocab_size else {}), **token_ids})


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
        text_encoder=CLIPTextModel(_clip_text_config(TINY_TEXT_ENCODER_CONFIG, vocab, **ids)),
        text_encoder_2=CLIPTextModelWithProjection(
            _clip_text_config(TINY_TEXT_ENCODER_2_CONFIG, vocab, **ids)
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


# ---------------------------------------------------------------------------------------------- the shared pipeline


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

    def select(self, adapter: str | None) -> None:
        """Switch to ``adapter`` alone, or to the bare base model with ``None`` (call under ``lock``)."""
        if not self.adapters:
            return
        if adapter is None:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter], adapter_weights=[1.0])


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


# ---------------------------------------------------------------------------------------------- the adapter


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

        steps, guidance = request["steps"], request["guidance"]
        width, height = request["width"], request["height"]
        pipe = self.shared.pipe
        notices = _truncation_notices(pipe, request.prompt, "prompt")
        if request.negative_prompt:
            notices += _truncation_notices(pipe, request.negative_prompt, "negative prompt")

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

    # ---- parameter table

    @classmethod
    def build_network(cls, config: dict[str, Any], device: str = "meta") -> torch.nn.Module:
        """SDXL's UNet, both text encoders and VAE (all frozen), plus the rank-r LoRA when ``lora_rank`` is set."""
        import torch

        cfg = SDXLConfig.from_dict(config)
        with torch.device(device):
            network = _build_sdxl_modules(cfg.pipeline)
            for p in network.parameters():
                p.requires_grad_(False)
            if cfg.lora_rank is not None:
                network["unet"].add_adapter(lora_config(cfg.lora_rank))
        return network


class SDXLLoRAGenerator(SDXLGenerator):
    """Registry adapter for ``sdxl-lora``: the same class, its own parameter note."""

    param_note = (
        "trainable = our rank-128 LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0); "
        "the whole SDXL base (3.5B) is frozen; the report gives no counts"
    )


def lora_config(rank: int, alpha: int | None = None) -> Any:
    """The LoRA of the report: rank ``rank`` (alpha = rank) on the UNet attention projections."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGET_MODULES),
    )


def _build_sdxl_modules(pipeline: str) -> torch.nn.ModuleDict:
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
            text_encoder=CLIPTextModel(_clip_text_config(te1, vocab, **ids)),
            text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(te2, vocab, **ids)),
            vae=AutoencoderKL(**vae),
        )
    )


def _truncation_notices(pipe: Any, text: str, what: str) -> list[str]:
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


# ---------------------------------------------------------------------------------------------- training helpers


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
