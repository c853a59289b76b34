"""Train our pixel-space diffusion model (``pixel-diffusion``) on a Flickr8k-layout folder.

Defaults are the report's (SPEC section 4): 64x64 pixels, the report's UNet2DConditionModel, frozen
``bert-base-uncased`` + trainable Linear(768,512)/GELU/LayerNorm, DDPM T=1000 with linear betas and epsilon
prediction, AdamW lr 1e-4, cosine schedule with 500 warm-up steps, batch 32, grad clip 1.0, fp16 mixed
precision, text max length 24; plus 10 % condition dropout so classifier-free guidance works.

Full size on a GPU (after ``huggingface-cli download google-bert/bert-base-uncased --local-dir DIR``)::

    accelerate launch train/train_pixel_diffusion.py --data flickr8k/ --text-encoder DIR --output-dir out/pixel

The demo checkpoint (tiny config, CPU, see checkpoints/demo/pixel-diffusion/README.md)::

    python train/train_pixel_diffusion.py --config tiny --data runs/shapes32_single \
        --text-encoder runs/tiny-bert-shapes --output-dir runs/pixel --prediction-type v_prediction \
        --beta-schedule squaredcos_cap_v2 --use-ema --ema-decay 0.995 --learning-rate 1e-3 ...

Every ``--sample-every`` steps a loss-curve PNG and a sample-grid PNG are written; every
``--checkpointing-steps`` the full training state (``checkpoint-<step>/``); ``--resume-from-checkpoint latest``
continues from the newest one exactly where it stopped. The final model (``config.json``,
``model.safetensors``, ``text_encoder/``, ``tokenizer/``) is what ``mmdemo.load_generator`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.generators.pixel_diffusion import (  # noqa: E402
    MODEL_FILE,
    PixelDiffusionConfig,
    PixelDiffusionModel,
    sample_pixels,
)
from mmdemo.generators.text_diffusion import TEXT_ENCODER_DIR, TOKENIZER_DIR  # noqa: E402
from mmdemo.models.diffusion.sampling import training_scheduler  # noqa: E402
from mmdemo.models.diffusion.text import encode_text, load_text_encoder, load_tokenizer  # noqa: E402
from mmdemo.models.diffusion.training import (  # noqa: E402
    EMA,
    checkpoint_step,
    cosine_with_warmup,
    draw_batch,
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
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings")  # fmt: skip


def build_config(args: argparse.Namespace, text_encoder) -> PixelDiffusionConfig:
    """The registry's full or tiny config, with the command line's overrides applied."""
    spec = get_spec("pixel-diffusion")
    values = dict(spec.full_config if args.config == "full" else spec.tiny_config)
    if args.config == "tiny":
        values["text_encoder"] = Path(args.text_encoder).name
        values["text_encoder_config"] = {k: getattr(text_encoder.config, k) for k in TEXT_CONFIG_KEYS}
    for key in ("prediction_type", "beta_schedule"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.resolution is not None:
        values["sample_size"] = args.resolution
    return PixelDiffusionConfig.from_dict(values)


def export_model(model: PixelDiffusionModel, tokenizer, out: Path, *, fp16: bool) -> None:
    """Write the self-describing checkpoint the adapter loads (weights as they are in ``model`` now)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(json_ready(model.config.to_dict()), indent=1))
    save_weights(model.denoiser.state_dict(), out / MODEL_FILE, fp16=fp16)
    model.text_encoder.save_pretrained(out / TEXT_ENCODER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, required=True, help="folder with Images/ + captions.txt (Flickr8k or Shapes)"
    )
    p.add_argument(
        "--text-encoder",
        type=Path,
        required=True,
        help="folder of the frozen BERT (bert-base-uncased snapshot, or a tiny one we pretrained)",
    )
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument(
        "--config", choices=("full", "tiny"), default="full", help="registry configuration to train"
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="image side (default: the config's sample_size)"
    )
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--train-batch-size", type=int, default=32, help="per process")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=500)
    p.add_argument("--max-train-steps", type=int, default=20000)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="fp16")
    p.add_argument(
        "--cond-dropout", type=float, default=0.1, help="fraction of captions replaced by '' (CFG)"
    )
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None)
    p.add_argument("--beta-schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"), default=None)
    p.add_argument("--use-ema", action="store_true")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--checkpoints-total-limit", type=int, default=2)
    p.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument("--sample-every", type=int, default=500, help="loss curve + sample grid every N steps")
    p.add_argument("--sample-steps", type=int, default=20, help="fast-preset steps for the sample grids")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance of the sample grids")
    p.add_argument(
        "--save-fp16", action="store_true", help="store the final weights in fp16 (loaded back as fp32)"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (checkpoint + export) at the first step boundary after this much training time",
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
    if not (args.text_encoder / "config.json").is_file():
        raise ValueError(
            f"{args.text_encoder} holds no text encoder (config.json); download bert-base-uncased with "
            "`huggingface-cli download google-bert/bert-base-uncased --local-dir DIR` or pretrain a tiny one with "
            "train/pretrain_tiny_text_encoder.py --kind bert"
        )
    return args


def main(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    set_threads()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = make_accelerator(args.mixed_precision, args.output_dir)
    device = accelerator.device
    text_encoder = load_text_encoder("bert", args.text_encoder)
    config = build_config(args, text_encoder)
    tokenizer = load_tokenizer(args.text_encoder, config.text_max_length)
    torch.manual_seed(args.seed)  # the UNet's initial weights
    model = PixelDiffusionModel(config, text_encoder).to(device)
    data = load_captioned_images(args.data, config.sample_size, args.max_images)
    noise_scheduler = training_scheduler(config, clip_sample=True)
    denoiser = model.denoiser
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=args.learning_rate)
    # accelerate steps a prepared scheduler once per process per optimiser step, hence the factor.
    n_proc = accelerator.num_processes
    lr_scheduler = cosine_with_warmup(optimizer, args.lr_warmup_steps * n_proc, args.max_train_steps * n_proc)
    ema = EMA(denoiser, args.ema_decay) if args.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    wrapped, optimizer, lr_scheduler = accelerator.prepare(denoiser, optimizer, lr_scheduler)

    history: list[dict] = []
    start = 0
    if args.resume_from_checkpoint:
        path = (
            last_checkpoint(args.output_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if path is None:
            logger.info("no checkpoint in %s; starting from scratch", args.output_dir)
        else:
            accelerator.load_state(str(path))
            start = checkpoint_step(path)
            history = [h for h in load_history(path) if h["step"] < start]
            logger.info("resumed from %s at step %d", path, start)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(data)
    trainable = sum(p.numel() for p in denoiser.parameters())
    logger.info(
        "pixel diffusion: %d trainable parameters, %d images, steps %d -> %d",
        trainable,
        len(data),
        start,
        args.max_train_steps,
    )
    bar = tqdm(
        range(start, args.max_train_steps),
        disable=not accelerator.is_local_main_process,
        desc="pixel diffusion",
    )
    started = time.time()
    for step in bar:
        generator = step_generator(args.seed, step, accelerator.process_index)
        images, captions = draw_batch(data, args.train_batch_size, generator, args.cond_dropout)
        noise = torch.randn(images.shape, generator=generator)
        timesteps = torch.randint(0, config.num_train_timesteps, (len(images),), generator=generator)
        images, noise, timesteps = images.to(device), noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(images, noise, timesteps)
        target = (
            noise
            if config.prediction_type == "epsilon"
            else noise_scheduler.get_velocity(images, noise, timesteps)
        )
        text = encode_text(tokenizer, text_encoder, captions, config.text_max_length, device)
        with accelerator.autocast():
            pred = wrapped(noisy, timesteps, text.hidden, text.attention_mask)
        loss = F.mse_loss(pred.float(), target.float())
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(denoiser.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(denoiser)
        mean_loss = float(accelerator.reduce(loss.detach(), "mean"))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} at step {step}; lower --learning-rate")
        history.append({"step": step, "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        done = step + 1
        out_of_time = time_is_up(accelerator, started, args.max_minutes)
        last = done == args.max_train_steps or out_of_time
        if accelerator.is_main_process and (done % args.sample_every == 0 or last):
            plot_curves(history, args.output_dir / "loss.png", title="pixel diffusion")
            with swapped_weights(denoiser, ema):
                denoiser.eval()
                sampled = sample_pixels(model, tokenizer, prompts, seed=0, steps=args.sample_steps,
                                        guidance=args.guidance, preset="fast")  # fmt: skip
                denoiser.train()
            (args.output_dir / "samples").mkdir(exist_ok=True)
            save_grid(sampled.images, args.output_dir / "samples" / f"step_{done:06d}.png", prompts)
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
        with swapped_weights(denoiser, ema):
            export_model(model, tokenizer, args.output_dir, fp16=args.save_fp16)
        save_history(args.output_dir, history)
        plot_curves(history, args.output_dir / "loss.png", title="pixel diffusion")
        args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (args.output_dir / "training_args.json").write_text(json.dumps({**args_json, **summary}, indent=1))
        logger.info(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_args())
