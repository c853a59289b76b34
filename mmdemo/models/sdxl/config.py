"""SDXL configuration: the registry's config dataclass, the network configs written in code, the LoRA.

``SDXL_*``: stabilityai/stable-diffusion-xl-base-1.0's component configs; ``TINY_*``: the same classes at
demo size (:mod:`mmdemo.models.sdxl.tiny` builds and saves that pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmdemo.models.config import DictConfig

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' standard LoRA file name
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet attention projections (report)
DEFAULT_ADAPTER_NAME = "flickr8k"
FP16_FIX_VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
TINY_PIPELINE = "tiny-sdxl-shapes"  # registry name of the demo-size pipeline
DEMO_FORMAT = "diffusers-pipeline"  # root config.json "format" of a demo pipeline folder
MANIFEST_FILE = "manifest.safetensors"  # per-component parameter counts: a completeness check of the folder
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class SDXLConfig(DictConfig):
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
# OpenCLIP ViT-bigG/14 text tower, with projection: the same vocabulary and positions, a larger tower.
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = dict(
    SDXL_TEXT_ENCODER_CONFIG, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, hidden_act="gelu", projection_dim=1280,
)  # fmt: skip
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


def clip_text_config(config: dict[str, Any], vocab_size: int | None = None, **token_ids: int) -> Any:
    """A ``CLIPTextConfig`` from one of the dicts above, with the tokenizer's vocabulary size and special ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{**config, **({"vocab_size": vocab_size} if vocab_size else {}), **token_ids})


def lora_config(rank: int, alpha: int | None = None) -> Any:
    """The LoRA of the report: rank ``rank`` (alpha = rank) on the UNet attention projections."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGET_MODULES),
    )
