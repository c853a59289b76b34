"""Stage 1 of latent diffusion: train the VQ-VAE (diffusers ``VQModel``) on a Flickr8k-layout folder.

Defaults are the report's: 256x256 images, codebook 8192 x 4, downsampling 8 (blocks
64/128/256/256 with 2 residual layers each, self-attention in the mid block), commitment 0.2, Adam lr 1e-5 with
betas (0.5, 0.999), MSE + LPIPS perceptual loss + PatchGAN adversarial loss from step 15000 with weight 0.5.

LPIPS needs the ``lpips`` package and its VGG weights; without them the script says so loudly and trains
without that term (``--lpips-weight 0`` turns it off on purpose). Codebook usage (perplexity, dead codes over
the last ``--sample-every`` steps) is logged with the losses.

    accelerate launch train/train_vqvae.py --data flickr8k/ --output-dir out/vqvae            # full size, GPU
    python train/train_vqvae.py --config tiny --data runs/shapes32_single --output-dir runs/vqvae ...   # demo

Output: ``config.json`` (LatentDiffusionConfig) + ``vqvae.safetensors`` (``VQModel`` state dict), which
``train/train_latent_diffusion.py --vqvae DIR`` reads; ``checkpoint-<step>/`` for ``--resume-from-checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.generators.latent_diffusion import LatentDiffusionConfig, build_vqvae
from mmdemo.models.diffusion.patchgan import (
    PatchDiscriminator,
    codebook_usage,
    hinge_d_loss,
    perceptual_loss_or_none,
    quantize,
    vq_losses,
)
from mmdemo.models.diffusion.sampling import to_pil
from mmdemo.models.diffusion.training import (
    json_ready,
    load_captioned_images,
    make_accelerator,
    plot_curves,
    process_record,
    save_grid,
    save_weights,
    step_generator,
    write_run_record,
)
from mmdemo.registry import get_spec
from mmdemo.training import set_threads, time_is_up
from mmdemo.training.checkpoints import resume_point, save_checkpoint, save_history

logger = logging.getLogger(__name__)
VQVAE_FILE = "vqvae.safetensors"


class VQAutoencoder(nn.Module):
    """``VQModel`` with our quantisation step, so DDP sees one forward: image -> (reconstruction, losses, codes)."""

    def __init__(self, vqvae: nn.Module, commitment: float):
        super().__init__()
        self.vqvae = vqvae
        self.commitment = commitment

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.vqvae.encode(images).latents  # (B, C, h, w), after quant_conv
        z_q, indices = quantize(z, self.vqvae.quantize.embedding.weight)
        codebook_loss, commitment_loss = vq_losses(z, z_q, self.commitment)
        z_st = z + (z_q - z).detach()  # straight-through estimator
        recon = self.vqvae.decode(z_st, force_not_quantize=True).sample
        return recon, codebook_loss, commitment_loss, indices


def build_config(args: argparse.Namespace) -> LatentDiffusionConfig:
    spec = get_spec("latent-diffusion")
    values = dict(spec.full_config if args.config == "full" else spec.tiny_config)
    if args.resolution is not None:
        values["image_size"] = args.resolution
    return LatentDiffusionConfig.from_dict(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with Images/ + captions.txt")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--config", choices=("full", "tiny"), default="full")
    p.add_argument(
        "--resolution", type=int, default=None, help="image side (default: the config's image_size)"
    )
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--train-batch-size", type=int, default=16, help="per process")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--adam-beta1", type=float, default=0.5)
    p.add_argument("--adam-beta2", type=float, default=0.999)
    p.add_argument("--max-train-steps", type=int, default=50000)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--lpips-weight", type=float, default=1.0, help="0 turns LPIPS off")
    p.add_argument("--disc-start", type=int, default=15000, help="step at which the PatchGAN loss starts")
    p.add_argument("--disc-weight", type=float, default=0.5)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--checkpointing-steps", type=int, default=1000)
    p.add_argument("--checkpoints-total-limit", type=int, default=2)
    p.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument(
        "--sample-every", type=int, default=500, help="loss curve + reconstruction grid every N steps"
    )
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop (checkpoint + export) after this long"
    )
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)
    if args.max_train_steps < 1 or args.train_batch_size < 2:
        raise ValueError(
            "--max-train-steps must be >= 1 and --train-batch-size >= 2 (BatchNorm in the PatchGAN)"
        )
    if args.disc_start < 0 or args.disc_weight < 0 or args.lpips_weight < 0:
        raise ValueError("--disc-start, --disc-weight and --lpips-weight must be >= 0")
    if args.checkpointing_steps < 1 or args.sample_every < 1:
        raise ValueError("--checkpointing-steps and --sample-every must be positive")
    if not (args.data / "captions.txt").is_file():
        raise ValueError(
            f"{args.data}/captions.txt not found; write Shapes with `python -m mmdemo.data.shapes --out DIR`"
        )
    return args


def main(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    set_threads()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = make_accelerator(args.mixed_precision, args.output_dir)
    device = accelerator.device
    config = build_config(args)
    torch.manual_seed(args.seed)
    autoencoder = VQAutoencoder(build_vqvae(config), config.commitment_cost).to(device)
    discriminator = PatchDiscriminator(
        3, width=max(16, config.vq_block_out_channels[0]), n_layers=2 if config.image_size <= 64 else 3
    ).to(device)
    perceptual = perceptual_loss_or_none(device) if args.lpips_weight > 0 else None
    data = load_captioned_images(args.data, config.image_size, args.max_images)
    betas = (args.adam_beta1, args.adam_beta2)
    opt_ae = torch.optim.Adam(autoencoder.parameters(), lr=args.learning_rate, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=betas)
    wrapped_ae, wrapped_d, opt_ae, opt_d = accelerator.prepare(autoencoder, discriminator, opt_ae, opt_d)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    start, history = resume_point(accelerator, args.output_dir, args.resume_from_checkpoint)
    usage = torch.zeros(config.num_vq_embeddings, dtype=torch.long)
    fixed = data.images[torch.linspace(0, len(data) - 1, 8).long()]
    bar = tqdm(
        range(start, args.max_train_steps), disable=not accelerator.is_local_main_process, desc="vq-vae"
    )
    started = time.time()
    for step in bar:
        generator = step_generator(args.seed, step, accelerator.process_index)
        index = torch.randint(len(data), (args.train_batch_size,), generator=generator)
        images = data.images[index]
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images).to(device)
        use_disc = step >= args.disc_start and args.disc_weight > 0
        # Autoencoder step: MSE + VQ losses (+ LPIPS) (+ adversarial, once the discriminator is on).
        with accelerator.autocast():
            recon, codebook_loss, commitment_loss, indices = wrapped_ae(images)
        mse = F.mse_loss(recon.float(), images)
        loss = mse + codebook_loss + commitment_loss
        lp = (
            perceptual(recon.float(), images).mean()
            if perceptual is not None
            else torch.zeros((), device=device)
        )
        loss = loss + args.lpips_weight * lp
        g_adv = torch.zeros((), device=device)
        if use_disc:
            discriminator.requires_grad_(False)
            g_adv = -discriminator(recon.float()).mean()  # unwrapped: no DDP hooks for a frozen pass
            discriminator.requires_grad_(True)
            loss = loss + args.disc_weight * g_adv
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(autoencoder.parameters(), args.max_grad_norm)
        opt_ae.step()
        opt_ae.zero_grad(set_to_none=True)
        d_loss = torch.zeros((), device=device)
        if use_disc:
            logits = wrapped_d(torch.cat([images, recon.detach().float()]))  # one forward for DDP
            d_loss = hinge_d_loss(*logits.chunk(2))
            accelerator.backward(d_loss)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        usage += torch.bincount(indices.detach().cpu(), minlength=config.num_vq_embeddings)
        record = {"step": step, "loss": float(accelerator.reduce(loss.detach(), "mean")), "mse": float(mse.detach()),
                  "commit": float(commitment_loss.detach()), "codebook": float(codebook_loss.detach()), "lpips": float(lp.detach()),
                  "g_adv": float(g_adv.detach()), "d_loss": float(d_loss.detach())}  # fmt: skip
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss became {record['loss']} at step {step}; lower --learning-rate")
        history.append(record)
        bar.set_postfix(mse=f"{record['mse']:.4f}")
        done = step + 1
        out_of_time = time_is_up(accelerator, started, args.max_minutes)
        last = done == args.max_train_steps or out_of_time
        if done % args.sample_every == 0 or last:
            # Every process counts the codes of its own batches; the statistics are over all of them.
            stats = codebook_usage(accelerator.reduce(usage.to(device), "sum").cpu())
            history[-1].update(stats)
            usage.zero_()
            if accelerator.is_main_process:
                logger.info("step %d: mse %.4f, perplexity %.1f, dead codes %d / %d", done, record["mse"],
                            stats["perplexity"], stats["dead_codes"], config.num_vq_embeddings)  # fmt: skip
                plot_curves(
                    history,
                    args.output_dir / "loss.png",
                    keys=("mse", "commit", "codebook", "d_loss"),
                    title="VQ-VAE",
                )
                with torch.no_grad():
                    autoencoder.eval()
                    shown = autoencoder(fixed.to(device))[0]
                    autoencoder.train()
                (args.output_dir / "samples").mkdir(exist_ok=True)
                # Top row: originals; bottom row: reconstructions.
                save_grid(
                    to_pil(torch.cat([fixed.to(device), shown])),
                    args.output_dir / "samples" / f"step_{done:06d}.png",
                    columns=8,
                )
        if done % args.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, args.output_dir, done, history, args.checkpoints_total_limit)
        if out_of_time:
            logger.info("--max-minutes reached: stopping at step %d", done)
            break
    accelerator.wait_for_everyone()
    summary = {"steps": history[-1]["step"] + 1 if history else start, "seconds": round(time.time() - started, 1),
               "final_mse": sum(h["mse"] for h in history[-100:]) / max(1, len(history[-100:])),
               "lpips": perceptual is not None, **process_record(accelerator)}  # fmt: skip
    usage_records = [h for h in history if "perplexity" in h]
    if usage_records:
        summary.update(perplexity=usage_records[-1]["perplexity"], dead_codes=usage_records[-1]["dead_codes"])
    if accelerator.is_main_process:
        (args.output_dir / "config.json").write_text(json.dumps(json_ready(config.to_dict()), indent=1))
        save_weights(autoencoder.vqvae.state_dict(), args.output_dir / VQVAE_FILE, fp16=False)
        save_history(args.output_dir, history)
        write_run_record(args.output_dir, args, summary)
        logger.info(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_args())
