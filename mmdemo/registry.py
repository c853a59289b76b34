"""The one registry of every model the app and the scripts know.

A model is an id plus a profile. The id picks a :class:`ModelSpec` here: what the
model is (architecture configuration, full and tiny), where its weights come from
(Hub repos and files, local folders) and what the course report measured for it.
*Where the weights actually are* is decided in :mod:`mmdemo.weights`; *how a
network is built* lives in the family module named by ``adapter``.

Config dicts are the keyword arguments of the family's own config dataclass, so the
registry stays importable without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

ModelKind = Literal["captioner", "generator"]

# Our own trained full-size weights (captioners, LoRA, pixel / latent diffusion) are published to one
# Hub repo with one sub-folder per model id; a fork can point the app at its own repo.
OWN_WEIGHTS_REPO = os.environ.get("MMDEMO_WEIGHTS_REPO", "mmdemo/mmdemo-weights")


@dataclass(frozen=True)
class HubFiles:
    """Files of one Hub repository that a model needs.

    Args:
        repo_id: Hub repository, e.g. ``"stabilityai/stable-diffusion-xl-base-1.0"``.
        files: file names (``fnmatch`` patterns allowed) inside ``subfolder``; the first one is the file
            whose presence decides whether the weights "resolve" without downloading anything.
        subfolder: folder inside the repo ("" for the root).
        role: what this component is to the model ("vision encoder", "text encoder", ...).
    """

    repo_id: str
    files: tuple[str, ...]
    subfolder: str = ""
    role: str = "weights"


@dataclass(frozen=True)
class ReportNumbers:
    """What the course report states for a model (Table 1 / Table 2); ``None`` where it states nothing."""

    total_params: float | None = None  # in parameters, e.g. 34.2e6
    trainable_params: float | None = None
    bleu: tuple[float, float, float, float] | None = None  # BLEU-1..4 on the Flickr8k validation split
    settings: str = ""  # sampling settings the report used, in words


@dataclass(frozen=True)
class ModelSpec:
    """Everything the project knows about one model id.

    Args:
        id: stable id used by the app, the API and the scripts.
        display_name: what people read in the UI.
        kind: ``"captioner"`` or ``"generator"``.
        adapter: ``"module:Class"`` of the class implementing the uniform interface, or ``None`` while the
            model is not implemented yet.
        full_config / tiny_config: keyword arguments of the family's config dataclass for the real model and
            for the small one trained offline on Shapes (same classes, smaller numbers).
        sources: the pretrained/published files the full profile needs, in load order.
        licence: licence of the weights people will run (the most restrictive component).
        report: the report's numbers, shown next to ours.
        issue: the tracker issue that implements the model (named in "not implemented yet" messages).
        defaults: per-model generation/decoding defaults (steps, guidance, size, ...).
    """

    id: str
    display_name: str
    kind: ModelKind
    adapter: str | None
    full_config: dict[str, Any]
    tiny_config: dict[str, Any]
    sources: tuple[HubFiles, ...]
    licence: str
    description: str
    report: ReportNumbers = field(default_factory=ReportNumbers)
    issue: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def implemented(self) -> bool:
        return self.adapter is not None

    @property
    def local_dir_name(self) -> str:
        """Folder name of this model under a checkpoint root (``checkpoints/<id>/``, ``checkpoints/demo/<id>/``)."""
        return self.id


def _own(model_id: str, *files: str) -> HubFiles:
    return HubFiles(OWN_WEIGHTS_REPO, files, subfolder=model_id, role="our trained weights")


_XATTN_DECODER = dict(d_model=512, num_layers=6, num_heads=8, ff_dim=2048, dropout=0.1, max_len=50)

_SPECS: tuple[ModelSpec, ...] = (
    # ---------------------------------------------------------------- image -> text
    ModelSpec(
        id="resnet18-xattn",
        display_name="ResNet-18 + cross-attention decoder",
        kind="captioner",
        adapter="mmdemo.captioners.xattn:ResNet18XAttnCaptioner",
        full_config=dict(vision="resnet18", **_XATTN_DECODER),
        tiny_config=dict(vision="resnet18-tiny", d_model=128, num_layers=2, num_heads=4, ff_dim=256,
                         dropout=0.1, max_len=32),
        sources=(
            HubFiles("timm/resnet18.tv_in1k", ("model.safetensors",), role="ImageNet ResNet-18 (torchvision IMAGENET1K_V1)"),
            _own("resnet18-xattn", "model.safetensors", "config.json", "vocab.json"),
        ),
        licence="BSD-3-Clause (torchvision weights); ours: MIT",
        description="Frozen ResNet-18 conv trunk, 7x7x512 map as 49 tokens, 6-layer Transformer decoder.",
        report=ReportNumbers(34.2e6, 21.5e6, (22.7, 13.9, 8.7, 5.2)),
        issue=3,
        defaults=dict(max_new_tokens=50, num_beams=1),
    ),
    ModelSpec(
        id="clipb32-xattn",
        display_name="CLIP ViT-B/32 + cross-attention decoder",
        kind="captioner",
        adapter="mmdemo.captioners.xattn:ClipB32XAttnCaptioner",
        full_config=dict(vision="clip-vit-b-32", clip_pretrained="openai", **{**_XATTN_DECODER, "d_model": 768}),
        tiny_config=dict(vision="clip-vit-tiny", d_model=128, num_layers=2, num_heads=4, ff_dim=256,
                         dropout=0.1, max_len=32),
        sources=(
            HubFiles("timm/vit_base_patch32_clip_224.openai", ("open_clip_pytorch_model.bin",),
                     role="open_clip ViT-B-32 (openai)"),
            _own("clipb32-xattn", "model.safetensors", "config.json", "vocab.json"),
        ),
        licence="MIT (OpenAI CLIP); ours: MIT",
        description="Frozen CLIP ViT-B/32 token outputs, Linear to 768, 6-layer Transformer decoder.",
        report=ReportNumbers(108e6, 21.5e6, (23.3, 15.5, 10.2, 6.2)),
        issue=3,
        defaults=dict(max_new_tokens=50, num_beams=1),
    ),
    ModelSpec(
        id="qformer-bert",
        display_name="EVA-CLIP ViT-g/14 + Q-Former (BERT decoding)",
        kind="captioner",
        adapter="mmdemo.captioners.qformer:QFormerBertCaptioner",
        full_config=dict(vision="eva-vit-g-14", num_query_tokens=32, qformer_hidden=768, qformer_layers=12,
                         cross_attention_frequency=2, tokenizer="bert-base-uncased"),
        # Same classes at Shapes size; the frozen tiny ViT is pretrained by train/pretrain_tiny_eva.py (card).
        tiny_config=dict(vision="eva-vit-tiny", num_query_tokens=8, qformer_hidden=128, qformer_layers=4,
                         qformer_heads=4, qformer_intermediate=512, cross_attention_frequency=2,
                         tokenizer="shapes-wordpiece", vocab_size=400, max_text_positions=64),
        sources=(
            HubFiles("Salesforce/blip2-itm-vit-g", ("model.safetensors", "config.json"),
                     role="EVA-CLIP ViT-g/14 vision encoder (BLIP-2 stage 1)"),
            HubFiles("google-bert/bert-base-uncased", ("vocab.txt", "tokenizer_config.json"),
                     role="BERT WordPiece vocabulary"),
            _own("qformer-bert", "model.safetensors", "config.json"),
        ),
        licence="MIT (BLIP-2); Apache-2.0 (BERT vocabulary); ours: MIT",
        description="Q-Former trained from scratch that decodes text itself from [DEC], queries as prefix.",
        report=ReportNumbers(1121e6, 110e6, (52.3, 36.7, 24.7, 15.8)),
        issue=3,
        defaults=dict(max_new_tokens=30, num_beams=1),
    ),
    ModelSpec(
        id="qformer-tinyllama",
        display_name="EVA-CLIP ViT-g/14 + BLIP-2 Q-Former + TinyLlama-1.1B",
        kind="captioner",
        adapter="mmdemo.captioners.qformer:QFormerLlamaCaptioner",
        full_config=dict(vision="eva-vit-g-14", num_query_tokens=32, qformer_hidden=768, llm_hidden=2048,
                         llm="TinyLlama/TinyLlama-1.1B-Chat-v1.0", prompt="Generate a simple short caption:"),
        tiny_config=dict(vision="eva-vit-tiny", num_query_tokens=8, qformer_hidden=128, qformer_layers=4,
                         qformer_heads=4, qformer_intermediate=512, cross_attention_frequency=2, llm_hidden=128,
                         llm="tiny-llama-shapes", prompt="Generate a simple short caption:"),
        sources=(
            HubFiles("Salesforce/blip2-itm-vit-g", ("model.safetensors", "config.json"),
                     role="EVA-CLIP ViT-g/14 + pretrained Q-Former (BLIP-2 stage 1)"),
            HubFiles("TinyLlama/TinyLlama-1.1B-Chat-v1.0", ("model.safetensors", "config.json", "tokenizer.json",
                     "tokenizer_config.json"), role="frozen language model"),
            _own("qformer-tinyllama", "model.safetensors", "config.json"),
        ),
        licence="MIT (BLIP-2); Apache-2.0 (TinyLlama); ours: MIT",
        description="Fine-tuned BLIP-2 Q-Former, Linear 768->2048 into a frozen TinyLlama-1.1B-Chat.",
        report=ReportNumbers(2274e6, 188.3e6, (72.2, 50.9, 36.1, 25.9)),
        issue=3,
        defaults=dict(max_new_tokens=30, repetition_penalty=1.5),
    ),
    # ---------------------------------------------------------------- text -> image
    ModelSpec(
        id="sdxl-base",
        display_name="SDXL base 1.0",
        kind="generator",
        adapter="mmdemo.generators.sdxl:SDXLGenerator",
        # vae_fp16_fix: optional, used on CUDA when its files are local or downloadable (not a required source).
        full_config=dict(pipeline="stabilityai/stable-diffusion-xl-base-1.0", resolution=1024,
                         vae_fp16_fix="madebyollin/sdxl-vae-fp16-fix"),
        tiny_config=dict(pipeline="tiny-sdxl-shapes", resolution=32, vae_fp16_fix=None),
        sources=(
            HubFiles("stabilityai/stable-diffusion-xl-base-1.0",
                     ("model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*", "unet/config.json",
                      "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
                      "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
                      "text_encoder/model.fp16.safetensors", "text_encoder_2/config.json",
                      "text_encoder_2/model.fp16.safetensors"),
                     role="SDXL base pipeline (fp16 files)"),
        ),
        licence="CreativeML Open RAIL++-M",
        description="Stable Diffusion XL base 1.0 through diffusers, fp16 on GPU.",
        report=ReportNumbers(settings="1024x1024, guidance 5.0, Euler, 100 steps"),
        issue=6,
        defaults=dict(steps=100, fast_steps=25, guidance=5.0, width=1024, height=1024),
    ),
    ModelSpec(
        id="sdxl-lora",
        display_name="SDXL + our Flickr8k LoRA",
        kind="generator",
        adapter="mmdemo.generators.sdxl:SDXLLoRAGenerator",
        full_config=dict(pipeline="stabilityai/stable-diffusion-xl-base-1.0", lora_rank=128, resolution=1024,
                         vae_fp16_fix="madebyollin/sdxl-vae-fp16-fix"),
        tiny_config=dict(pipeline="tiny-sdxl-shapes", lora_rank=8, resolution=32, vae_fp16_fix=None),
        sources=(
            HubFiles("stabilityai/stable-diffusion-xl-base-1.0",
                     ("model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*", "unet/config.json",
                      "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
                      "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
                      "text_encoder/model.fp16.safetensors", "text_encoder_2/config.json",
                      "text_encoder_2/model.fp16.safetensors"),
                     role="SDXL base pipeline (fp16 files), shared with sdxl-base"),
            _own("sdxl-lora", "pytorch_lora_weights.safetensors", "config.json"),
        ),
        licence="CreativeML Open RAIL++-M (base); ours: MIT",
        description="The same SDXL pipeline with our rank-128 LoRA trained on the Flickr8k LoRA split.",
        report=ReportNumbers(settings="1024x1024, guidance 5.0, Euler, 100 steps"),
        issue=6,
        defaults=dict(steps=100, fast_steps=25, guidance=5.0, width=1024, height=1024),
    ),
    ModelSpec(
        id="infinity-2b",
        display_name="Infinity-2B",
        kind="generator",
        adapter="mmdemo.generators.infinity:InfinityGenerator",
        # Keyword arguments of mmdemo.models.infinity.InfinityFamilyConfig.
        full_config=dict(
            transformer=dict(depth=32, width=2048, num_heads=16, block_chunks=8, text_channels=2048, text_maxlen=512),
            vae="d32reg", text_encoder="google/flan-t5-xl",
            budget_scales={"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}, default_budget="1M", image_size=1024,
        ),
        tiny_config=dict(
            transformer=dict(depth=4, width=128, num_heads=4, block_chunks=2, text_channels=128, text_maxlen=32,
                             pool_head_dim=32, codebook_dim=16),
            vae=dict(codebook_dim=16, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, patch_size=4,
                     norm_groups=8),
            text_encoder="tiny-t5-shapes", t5=dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4),
            budget_scales={"0.06M": 5, "0.25M": 5, "1M": 5}, default_budget="0.06M", image_size=32,
        ),
        sources=(
            HubFiles("FoundationVision/Infinity", ("infinity_2b_reg.pth",), role="Infinity-2B transformer"),
            HubFiles("FoundationVision/Infinity", ("infinity_vae_d32reg.pth",), role="BSQ-VAE d32"),
            HubFiles("google/flan-t5-xl", ("config.json", "model*.safetensors*", "spiece.model", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"), role="T5 text encoder"),
        ),
        licence="MIT (Infinity); Apache-2.0 (Flan-T5)",
        description="Bitwise visual autoregressive model (arXiv 2412.04431), our own PyTorch inference.",
        report=ReportNumbers(settings="1024x1024 (13 scales), cfg 3, tau 0.5, top-p 0.97"),
        issue=7,
        defaults=dict(cfg=3.0, tau=0.5, top_p=0.97, top_k=0, pixel_budget="1M", cpu_pixel_budget="0.06M",
                      aspect_ratio="1:1"),
    ),
    ModelSpec(
        id="pixel-diffusion",
        display_name="Our pixel-space diffusion",
        kind="generator",
        adapter="mmdemo.generators.pixel_diffusion:PixelDiffusionGenerator",
        full_config=dict(sample_size=64, block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                         down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                         cross_attention_dim=512, text_encoder="google-bert/bert-base-uncased", text_max_length=24,
                         beta_schedule="linear", prediction_type="epsilon"),
        # Demo: cross-attention only at 8x8 and below (at 16x16 a CPU step costs ~2x, at 32x32 ~8x); v-prediction
        # + cosine schedule, which learned Shapes on a CPU where epsilon + linear did not (see the model card).
        tiny_config=dict(sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=1,
                         down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                         cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
                         text_encoder="tiny-bert-shapes",
                         text_encoder_config=dict(vocab_size=160, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128,
                                                  max_position_embeddings=32),
                         text_max_length=24, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        sources=(
            HubFiles("google-bert/bert-base-uncased", ("model.safetensors", "config.json", "vocab.txt",
                     "tokenizer_config.json", "tokenizer.json"), role="frozen BERT text encoder"),
            _own("pixel-diffusion", "model.safetensors", "config.json"),
        ),
        licence="Apache-2.0 (BERT); ours: MIT",
        description="diffusers UNet2DConditionModel on 64x64 pixels, frozen BERT + trainable projection.",
        report=ReportNumbers(settings="DDPM, 1000 train steps, 100 sampling steps"),
        issue=4,
        defaults=dict(steps=100, fast_steps=20, guidance=3.0, width=64, height=64, demo_width=32, demo_height=32),
    ),
    ModelSpec(
        id="latent-diffusion",
        display_name="Our VQ-VAE latent diffusion",
        kind="generator",
        adapter="mmdemo.generators.latent_diffusion:LatentDiffusionGenerator",
        full_config=dict(image_size=256, num_vq_embeddings=8192, latent_channels=4, downsample=8,
                         vq_block_out_channels=(64, 128, 256, 256), vq_layers_per_block=2,
                         unet_block_out_channels=(256, 512, 512), unet_layers_per_block=2, cross_attention_dim=512,
                         text_encoder="openai/clip-vit-base-patch16", text_max_length=77,
                         beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon"),
        # Demo: 32x32 pixels -> 16x16x4 latents (/2: small Shapes objects survive the VQ round trip), tiny
        # UNet with cross-attention in every block, v-prediction + cosine schedule as for the pixel demo.
        tiny_config=dict(image_size=32, num_vq_embeddings=256, latent_channels=4, downsample=2,
                         vq_block_out_channels=(32, 64), vq_layers_per_block=1, vq_norm_num_groups=16,
                         unet_block_out_channels=(32, 64, 64), unet_layers_per_block=1, unet_attention_head_dim=4,
                         unet_norm_num_groups=8, cross_attention_dim=64, text_encoder="tiny-clip-text-shapes",
                         text_encoder_config=dict(vocab_size=600, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128,
                                                  max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                                                  pad_token_id=1),
                         text_max_length=32, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        sources=(
            HubFiles("openai/clip-vit-base-patch16", ("model.safetensors", "config.json", "vocab.json", "merges.txt",
                     "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"),
                     role="frozen CLIP text encoder"),
            _own("latent-diffusion", "model.safetensors", "config.json"),
        ),
        licence="MIT (CLIP); ours: MIT",
        description="VQ-VAE (8192x4 codebook, /8) + latent UNet with cross-attention to CLIP text.",
        report=ReportNumbers(settings="T=1000 scaled-linear betas, 1000 DDPM sampling steps"),
        issue=4,
        defaults=dict(steps=1000, fast_steps=25, guidance=3.0, width=256, height=256, demo_width=32, demo_height=32),
    ),
)

REGISTRY: dict[str, ModelSpec] = {spec.id: spec for spec in _SPECS}
CAPTIONER_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.kind == "captioner")
GENERATOR_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.kind == "generator")


def get_spec(model_id: str, kind: ModelKind | None = None) -> ModelSpec:
    """The spec of ``model_id``; an unknown id (or one of the wrong kind) fails loudly and lists the valid ones."""
    spec = REGISTRY.get(model_id)
    valid = CAPTIONER_IDS if kind == "captioner" else GENERATOR_IDS if kind == "generator" else tuple(REGISTRY)
    if spec is None or (kind is not None and spec.kind != kind):
        what = f"{kind} id" if kind else "model id"
        raise KeyError(f"unknown {what} {model_id!r}; valid ids: {', '.join(valid)}")
    return spec


# Auxiliary weights the app uses around the models (not models people pick).
CLIP_SCORE_SOURCE = HubFiles(
    "timm/vit_base_patch32_clip_224.openai",
    ("open_clip_*",),  # open_clip_model.safetensors (preferred) or open_clip_pytorch_model.bin
    role="CLIP score judge (open_clip ViT-B-32, openai)",
)
