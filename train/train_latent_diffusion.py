"""Stage 2 of latent diffusion: train the latent UNet on VQ-VAE latents, conditioned on a frozen CLIP text tower.

``--recipe report`` (the default) is the report's run (its ``train_ddpm_cond.py`` + ``flickr8k_text_cond.yaml``):
the report's own UNet (widths 256/384/512/768, self- and cross-attention in every layer, 16 heads, 118.5M; the
full config), T=1000 scaled-linear betas (0.00085-0.012), epsilon prediction, frozen
``openai/clip-vit-base-patch16`` text tower (77 x 512, the UNet attends to every position); every image with a
random one of its captions, 256 centre crops, no flips; condition dropout 0.1; Adam lr 5e-6 without weight decay,
constant, no clipping, fp32, batch 16, 100 shuffled epochs (50 600 steps on Flickr8k); trained on the
**quantised** VQ-VAE latents, unscaled. The report sampled with 1000 DDPM steps and no guidance.

``--recipe ours`` (the demo's) trains on the continuous (pre-quantisation) latents scaled to unit variance, as
LDM and Stable Diffusion do, with the pixel model's AdamW 1e-4 + cosine warm-up, clipping, fp16, batch 32,
50 000 steps, on the first 7000 images only (the test-prompt images stay unseen). Every setting can be overridden on the command line; the remaining differences from the report's
run are listed in the README, "How our recipes differ from the report's".

The training images are encoded **once** by the stage-1 VQ-VAE and cached (``latents_cache.safetensors`` in the
output folder, keyed by the VQ-VAE weights, the data and the latent kind); ``latent_scale`` in config.json is 1
or 1/std of the training latents.

    accelerate launch train/train_latent_diffusion.py --data flickr8k/ --vqvae out/vqvae \
        --text-encoder CLIP_DIR --output-dir out/latent                                   # full size, GPU
    python train/train_latent_diffusion.py --config tiny --data runs/shapes32_single --vqvae runs/vqvae \
        --text-encoder runs/tiny-clip-text-shapes-3000 --output-dir runs/latent --recipe ours ...  # demo (model card)

The final folder (``config.json``, ``model.safetensors`` with ``vqvae.*`` + ``unet.*``, ``text_encoder/``,
``tokenizer/``) is what ``mmdemo.load_generator("latent-diffusion")`` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import torch

from mmdemo.models.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
from mmdemo.models.diffusion.sampling import training_scheduler
from mmdemo.models.diffusion.text import encode_text, load_text_encoder, load_tokenizer
from mmdemo.models.diffusion.text_to_image import sample_images
from mmdemo.models.diffusion.training import (
    DenoiserTask,
    add_denoiser_arguments,
    check_denoiser_arguments,
    denoiser_config_values,
    export_text_to_image,
    load_captioned_images,
    sample_prompts,
    start_run,
    train_denoiser,
)
from mmdemo.recipes import LATENT_DIFFUSION, apply_recipe
from mmdemo.registry import get_spec

logger = logging.getLogger(__name__)
VQVAE_FILE = "vqvae.safetensors"
CACHE_FILE = "latents_cache.safetensors"
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip


def build_config(args: argparse.Namespace, text_encoder) -> LatentDiffusionConfig:
    """Stage 1's config (VQ-VAE fields) + the registry's UNet fields + command-line overrides."""
    from mmdemo.weights import read_config

    spec = get_spec("latent-diffusion")
    values = dict(spec.full_config if args.config == "full" else spec.tiny_config)
    stage1 = read_config(args.vqvae)
    stage1.setdefault("architecture", "diffusers")  # stage-1 folders written before the report structure existed
    for key in ("image_size", "architecture", "num_vq_embeddings", "latent_channels", "downsample",
                "vq_block_out_channels", "vq_layers_per_block", "vq_norm_num_groups", "vq_num_heads", "commitment_cost"):  # fmt: skip
        if key not in stage1:
            continue
        values[key] = stage1[key]
    if args.config == "tiny":
        values["cross_attention_dim"] = int(text_encoder.config.hidden_size)
    return LatentDiffusionConfig.from_dict(denoiser_config_values(args, values, text_encoder, TEXT_CONFIG_KEYS))


def encode_dataset(
    model: LatentDiffusionModel, images: torch.Tensor, quantized: bool, batch_size: int = 64
) -> torch.Tensor:
    """VQ-VAE latents of every image, (N, C, h, w): the codebook vectors (``quantized``, what the report's
    ``encode`` returns) or the continuous ones before quantisation (as LDM trains on them)."""
    from mmdemo.models.diffusion.patchgan import quantize

    out = []
    codebook = model.vqvae.quantize.embedding.weight
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            latents = model.vqvae.encode(images[i : i + batch_size]).latents
            out.append((quantize(latents, codebook)[0] if quantized else latents).cpu())
    return torch.cat(out)


def cached_latents(
    model: LatentDiffusionModel, args: argparse.Namespace, images: torch.Tensor, is_main: bool
) -> torch.Tensor:
    """Encode once; reuse the cache while the VQ-VAE weights and the image set are unchanged."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256((args.vqvae / VQVAE_FILE).read_bytes()).hexdigest()[:16]
    key += f"-{len(images)}-{hashlib.sha256(images[:: max(1, len(images) // 64)].numpy().tobytes()).hexdigest()[:16]}"
    key += f"-{args.latents}"
    path = args.output_dir / CACHE_FILE
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                logger.info("latents: using the cache %s", path)
                return load_file(str(path))["latents"]
    latents = encode_dataset(model, images, quantized=args.latents == "quantized")
    if is_main:
        save_file({"latents": latents.contiguous()}, str(path), metadata={"key": key})
        logger.info("latents: encoded %d images once -> %s", len(images), path)
    return latents


def export_model(model: LatentDiffusionModel, tokenizer, out: Path, *, fp16: bool) -> None:
    """Write the self-describing checkpoint the adapter loads (weights as they are in ``model`` now)."""
    export_text_to_image(model, model.trainable_state_dict(), tokenizer, out, fp16=fp16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with Images/ + captions.txt")
    p.add_argument("--vqvae", type=Path, required=True, help="output folder of train/train_vqvae.py")
    p.add_argument(
        "--text-encoder",
        type=Path,
        required=True,
        help="folder of the frozen CLIP text tower (clip-vit-base-patch16 snapshot, or a tiny one)",
    )
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--config", choices=("full", "tiny"), default="full")
    p.add_argument("--latents", choices=("quantized", "continuous"), help="codebook vectors or pre-quantisation")
    p.add_argument(
        "--scale-latents", action=argparse.BooleanOptionalAction, help="scale the latents to unit variance"
    )
    add_denoiser_arguments(p, LATENT_DIFFUSION)
    args = p.parse_args(argv)
    apply_recipe(args, LATENT_DIFFUSION)
    check_denoiser_arguments(args)
    if not (args.vqvae / VQVAE_FILE).is_file():
        raise ValueError(
            f"{args.vqvae}/{VQVAE_FILE} not found; train stage 1 first with train/train_vqvae.py"
        )
    if not (args.text_encoder / "config.json").is_file():
        raise ValueError(
            f"{args.text_encoder} holds no text encoder; download openai/clip-vit-base-patch16 or pretrain a tiny one "
            "with train/pretrain_tiny_text_encoder.py --kind clip"
        )
    return args


def main(args: argparse.Namespace) -> dict:
    from mmdemo.weights import load_state_dict

    accelerator = start_run(args.mixed_precision, args.output_dir)
    device = accelerator.device
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text_encoder = load_text_encoder("clip", args.text_encoder)
    config = build_config(args, text_encoder)
    tokenizer = load_tokenizer(args.text_encoder, config.text_max_length)
    torch.manual_seed(args.seed)  # the UNet's initial weights
    model = LatentDiffusionModel(config, text_encoder)
    model.vqvae.load_state_dict(load_state_dict(args.vqvae / VQVAE_FILE), strict=True)
    model.vqvae.requires_grad_(False).eval()
    model.to(device)
    data = load_captioned_images(args.data, config.image_size, args.max_images, resize=args.resize)
    # The main process encodes and writes the cache first; the others then read it instead of racing its write.
    with accelerator.main_process_first():
        latents = cached_latents(model, args, data.images, accelerator.is_main_process)
    # model.config is this object: the scale is exported with the model and undone before decoding.
    config.latent_scale = float(1.0 / latents.std()) if args.scale_latents else 1.0
    logger.info("latents %s, scale %.4f", tuple(latents.shape), config.latent_scale)

    def encode(captions: list[str]):
        return encode_text(tokenizer, text_encoder, captions, config.text_max_length, device)

    def sample(prompts: list[str]) -> list:
        return sample_images(model, tokenizer, prompts, seed=0, steps=args.sample_steps,
                                    guidance=args.guidance, preset="fast")[0]  # fmt: skip

    task = DenoiserTask(
        title="latent diffusion",
        config=config,
        denoiser=model.unet,
        clean=latents * config.latent_scale,
        captions=data.captions,
        noise_scheduler=training_scheduler(config, clip_sample=False),
        encode=encode,
        predict=lambda net, noisy, t, text: net(noisy, t, encoder_hidden_states=text.hidden).sample,
        sample=sample,
        export=lambda folder: export_model(model, tokenizer, folder, fp16=args.save_fp16),
    )
    return train_denoiser(args, accelerator, task, sample_prompts(data))


if __name__ == "__main__":
    main(parse_args())
