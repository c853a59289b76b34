"""Stage 2 of latent diffusion: train the latent UNet on VQ-VAE latents, conditioned on a frozen CLIP text tower.

Defaults are the report's (SPEC section 4): T=1000 scaled-linear betas (0.00085-0.012), epsilon prediction,
condition dropout 0.1, frozen ``openai/clip-vit-base-patch16`` text tower (77 x 512); the UNet has
cross-attention in every block. The training images are encoded **once** by the stage-1 VQ-VAE and cached
(``latents_cache.safetensors`` in the output folder, keyed by the VQ-VAE weights and the data); the
latents are scaled to unit variance (``latent_scale`` in config.json).

    accelerate launch train/train_latent_diffusion.py --data flickr8k/ --vqvae out/vqvae \
        --text-encoder CLIP_DIR --output-dir out/latent                                   # full size, GPU
    python train/train_latent_diffusion.py --config tiny --data runs/shapes32_single --vqvae runs/vqvae \
        --text-encoder runs/tiny-clip-text-shapes --output-dir runs/latent ...          # demo (model card)

The final folder (``config.json``, ``model.safetensors`` with ``vqvae.*`` + ``unet.*``, ``text_encoder/``,
``tokenizer/``) is what ``mmdemo.load_generator("latent-diffusion")`` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.generators.latent_diffusion import (  # noqa: E402
    MODEL_FILE,
    LatentDiffusionConfig,
    LatentDiffusionModel,
    sample_latent_images,
)
from mmdemo.generators.text_diffusion import TEXT_ENCODER_DIR, TOKENIZER_DIR  # noqa: E402
from mmdemo.models.diffusion.sampling import training_scheduler  # noqa: E402
from mmdemo.models.diffusion.text import encode_text, load_text_encoder, load_tokenizer  # noqa: E402
from mmdemo.models.diffusion.training import (  # noqa: E402
    EMA,
    checkpoint_step,
    cosine_with_warmup,
    json_ready,
    last_checkpoint,
    load_captioned_images,
    load_history,
    make_accelerator,
    plot_curves,
    process_record,
    prune_checkpoints,
    sample_prompts,
    save_grid,
    save_history,
    save_weights,
    set_threads,
    step_generator,
    swapped_weights,
)
from mmdemo.registry import get_spec  # noqa: E402
from mmdemo.training import time_is_up  # noqa: E402

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
    for key in ("image_size", "num_vq_embeddings", "latent_channels", "downsample", "vq_block_out_channels",
                "vq_layers_per_block", "vq_norm_num_groups", "commitment_cost"):  # fmt: skip
        values[key] = stage1[key]
    if args.config == "tiny":
        values["text_encoder"] = Path(args.text_encoder).name
        values["text_encoder_config"] = {k: getattr(text_encoder.config, k) for k in TEXT_CONFIG_KEYS}
        values["cross_attention_dim"] = int(text_encoder.config.hidden_size)
    for key in ("prediction_type", "beta_schedule"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return LatentDiffusionConfig.from_dict(values)


def encode_dataset(model: LatentDiffusionModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """VQ-VAE latents (before quantisation, as LDM trains on them) of every image; (N, C, h, w)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model.vqvae.encode(images[i : i + batch_size]).latents.cpu())
    return torch.cat(out)


def cached_latents(
    model: LatentDiffusionModel, args: argparse.Namespace, images: torch.Tensor, is_main: bool
) -> torch.Tensor:
    """Encode once; reuse the cache while the VQ-VAE weights and the image set are unchanged."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256((args.vqvae / VQVAE_FILE).read_bytes()).hexdigest()[:16]
    key += f"-{len(images)}-{hashlib.sha256(images[:: max(1, len(images) // 64)].numpy().tobytes()).hexdigest()[:16]}"
    path = args.output_dir / CACHE_FILE
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                logger.info("latents: using the cache %s", path)
                return load_file(str(path))["latents"]
    latents = encode_dataset(model, images)
    if is_main:
        save_file({"latents": latents.contiguous()}, str(path), metadata={"key": key})
        logger.info("latents: encoded %d images once -> %s", len(images), path)
    return latents


def export_model(model: LatentDiffusionModel, tokenizer, out: Path, *, fp16: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(json_ready(model.config.to_dict()), indent=1))
    save_weights(model.trainable_state_dict(), out / MODEL_FILE, fp16=fp16)
    model.text_encoder.save_pretrained(out / TEXT_ENCODER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)


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
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--train-batch-size", type=int, default=32, help="per process")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=500)
    p.add_argument("--max-train-steps", type=int, default=50000)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="fp16")
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None)
    p.add_argument("--beta-schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"), default=None)
    p.add_argument("--use-ema", action="store_true")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--checkpoints-total-limit", type=int, default=2)
    p.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--save-fp16", action="store_true")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop (checkpoint + export) after this long"
    )
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)
    if args.max_train_steps < 1 or args.train_batch_size < 1:
        raise ValueError("--max-train-steps and --train-batch-size must be positive")
    if not 0.0 <= args.cond_dropout < 1.0:
        raise ValueError(f"--cond-dropout must be in [0, 1), got {args.cond_dropout}")
    if not 0.0 < args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in (0, 1), got {args.ema_decay}")
    if args.checkpointing_steps < 1 or args.sample_every < 1:
        raise ValueError("--checkpointing-steps and --sample-every must be positive")
    if not (args.data / "captions.txt").is_file():
        raise ValueError(
            f"{args.data}/captions.txt not found; write Shapes with `python -m mmdemo.data.shapes --out DIR`"
        )
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
    from tqdm.auto import tqdm

    from mmdemo.weights import load_state_dict

    set_threads()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = make_accelerator(args.mixed_precision, args.output_dir)
    device = accelerator.device
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text_encoder = load_text_encoder("clip", args.text_encoder)
    config = build_config(args, text_encoder)
    tokenizer = load_tokenizer(args.text_encoder, config.text_max_length)
    torch.manual_seed(args.seed)
    model = LatentDiffusionModel(config, text_encoder)
    model.vqvae.load_state_dict(load_state_dict(args.vqvae / VQVAE_FILE), strict=True)
    model.vqvae.requires_grad_(False).eval()
    model.to(device)
    data = load_captioned_images(args.data, config.image_size, args.max_images)
    # The main process encodes and writes the cache first; the others then read it instead of racing its write.
    with accelerator.main_process_first():
        latents = cached_latents(model, args, data.images, accelerator.is_main_process)
    config.latent_scale = float(1.0 / latents.std())
    latents = latents * config.latent_scale
    logger.info("latents %s, scale %.4f", tuple(latents.shape), config.latent_scale)
    noise_scheduler = training_scheduler(config, clip_sample=False)
    unet = model.unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate)
    n_proc = accelerator.num_processes
    lr_scheduler = cosine_with_warmup(optimizer, args.lr_warmup_steps * n_proc, args.max_train_steps * n_proc)
    ema = EMA(unet, args.ema_decay) if args.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    wrapped, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    history: list[dict] = []
    start = 0
    if args.resume_from_checkpoint:
        path = (
            last_checkpoint(args.output_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if path is not None:
            accelerator.load_state(str(path))
            start = checkpoint_step(path)
            history = [h for h in load_history(path) if h["step"] < start]
            logger.info("resumed from %s at step %d", path, start)
    prompts = sample_prompts(data)
    bar = tqdm(
        range(start, args.max_train_steps),
        disable=not accelerator.is_local_main_process,
        desc="latent diffusion",
    )
    started = time.time()
    for step in bar:
        generator = step_generator(args.seed, step, accelerator.process_index)
        index = torch.randint(len(data), (args.train_batch_size,), generator=generator)
        which = torch.randint(1_000_000, (args.train_batch_size,), generator=generator).tolist()
        drop = (torch.rand(args.train_batch_size, generator=generator) < args.cond_dropout).tolist()
        captions = [
            "" if d else data.captions[i][k % len(data.captions[i])]
            for i, k, d in zip(index.tolist(), which, drop)
        ]
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, config.num_train_timesteps, (len(clean),), generator=generator)
        clean, noise, timesteps = clean.to(device), noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        target = (
            noise
            if config.prediction_type == "epsilon"
            else noise_scheduler.get_velocity(clean, noise, timesteps)
        )
        text = encode_text(tokenizer, text_encoder, captions, config.text_max_length, device)
        with accelerator.autocast():
            pred = wrapped(noisy, timesteps, encoder_hidden_states=text.hidden).sample
        loss = F.mse_loss(pred.float(), target.float())
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unet)
        mean_loss = float(accelerator.reduce(loss.detach(), "mean"))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} at step {step}; lower --learning-rate")
        history.append({"step": step, "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        done = step + 1
        out_of_time = time_is_up(accelerator, started, args.max_minutes)
        last = done == args.max_train_steps or out_of_time
        if accelerator.is_main_process and (done % args.sample_every == 0 or last):
            plot_curves(history, args.output_dir / "loss.png", title="latent diffusion")
            with swapped_weights(unet, ema):
                unet.eval()
                images, _ = sample_latent_images(model, tokenizer, prompts, seed=0, steps=args.sample_steps,
                                                 guidance=args.guidance, preset="fast")  # fmt: skip
                unet.train()
            (args.output_dir / "samples").mkdir(exist_ok=True)
            save_grid(images, args.output_dir / "samples" / f"step_{done:06d}.png", prompts)
        if done % args.checkpointing_steps == 0 or last:
            folder = args.output_dir / f"checkpoint-{done}"
            accelerator.save_state(str(folder))
            if accelerator.is_main_process:
                save_history(folder, history)
                prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
        if out_of_time:
            logger.info(
                "--max-minutes %s reached: stopping at step %d of %d",
                args.max_minutes,
                done,
                args.max_train_steps,
            )
            break
    accelerator.wait_for_everyone()
    summary = {"steps": history[-1]["step"] + 1 if history else start, "seconds": round(time.time() - started, 1),
               "final_loss": sum(h["loss"] for h in history[-100:]) / max(1, len(history[-100:])),
               **process_record(accelerator)}  # fmt: skip
    if accelerator.is_main_process:
        with swapped_weights(unet, ema):
            export_model(model, tokenizer, args.output_dir, fp16=args.save_fp16)
        save_history(args.output_dir, history)
        plot_curves(history, args.output_dir / "loss.png", title="latent diffusion")
        args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (args.output_dir / "training_args.json").write_text(json.dumps({**args_json, **summary}, indent=1))
        logger.info(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_args())
