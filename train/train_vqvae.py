"""Stage 1 of latent diffusion: train the VQ-VAE (and its PatchGAN) on a Flickr8k-layout folder.

``--recipe report`` (the default) is the report's run (its ``train_vqvae.py`` + ``flickr8k.yaml``): the report's
own VQ-VAE (the full config: 256x256 -> 32x32x4, codebook 8192 x 4, down stages 64/128/256/256 with 2 residual
layers and a 4x4 stride-2 conv each, two 4-head self-attentions in each mid block, transposed-conv decoder,
22.0M parameters), commitment 0.2 and codebook loss 1; every image, 256 centre crops, no flips; micro-batches of
8 with 4 accumulated (32 per update), 60 shuffled epochs (the report's text; 15 180 updates on Flickr8k); Adam
lr 1e-5 with betas (0.5, 0.999) for both networks, no clipping, fp32; MSE + LPIPS (weight 1) + an LSGAN loss
on the report's 3-layer PatchGAN (weight 0.5 on both sides) from update 3750 (micro-batch 15 000).

Two of the report code's bugs are not copied: its LPIPS runs on a VGG16 with random weights (ours loads the
ImageNet VGG the LPIPS weights were fitted to), and its generator step leaves adversarial gradients in the
discriminator (ours freezes it for that pass). ``--recipe ours`` (the demo's): batches of 16, no accumulation,
flips, clipping 1.0, a hinge loss on the deeper pix2pix PatchGAN from update 15 000, 50 000 updates. Every setting
can be overridden on the command line; see the README, "How our recipes differ from the report's".

LPIPS needs the ``lpips`` package and its VGG weights; without them the script says so loudly and trains
without that term (``--lpips-weight 0`` turns it off on purpose). Codebook usage (perplexity, dead codes over
the last ``--sample-every`` steps) is logged with the losses.

    accelerate launch train/train_vqvae.py --data flickr8k/ --output-dir out/vqvae            # full size, GPU
    python train/train_vqvae.py --config tiny --data runs/shapes32_single --output-dir runs/vqvae --recipe ours ...  # demo

Output: ``config.json`` (LatentDiffusionConfig) + ``vqvae.safetensors`` (the VQ-VAE's state dict), which
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

from mmdemo.models.diffusion.latent import ARCHITECTURES, LatentDiffusionConfig, build_vqvae
from mmdemo.models.diffusion.patchgan import (
    PatchDiscriminator,
    codebook_usage,
    generator_adversarial_loss,
    hinge_d_loss,
    lsgan_loss,
    perceptual_loss_or_none,
    quantize,
    report_discriminator,
    vq_losses,
)
from mmdemo.models.diffusion.sampling import to_pil
from mmdemo.models.diffusion.training import (
    batch_rows,
    json_ready,
    load_captioned_images,
    maybe_no_sync,
    plot_curves,
    process_record,
    random_hflip,
    save_grid,
    save_weights,
    start_run,
    step_generator,
    write_run_record,
)
from mmdemo.recipes import VQVAE, add_recipe_argument, apply_recipe, steps_for_epochs
from mmdemo.registry import get_spec
from mmdemo.training import time_is_up
from mmdemo.training.checkpoints import resume_point, save_checkpoint, save_history

logger = logging.getLogger(__name__)
VQVAE_FILE = "vqvae.safetensors"


class VQAutoencoder(nn.Module):
    """The VQ-VAE with our quantisation step, so DDP sees one forward: image -> (reconstruction, losses, codes)."""

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
    if args.architecture is not None:
        values["architecture"] = args.architecture
    return LatentDiffusionConfig.from_dict(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with Images/ + captions.txt")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--config", choices=("full", "tiny"), default="full")
    p.add_argument(
        "--resolution", type=int, default=None, help="image side (default: the config's image_size)"
    )
    p.add_argument(
        "--architecture", choices=ARCHITECTURES, default=None,
        help="VQ-VAE (and later UNet) structure: the report's or diffusers' (default: the config's)",
    )  # fmt: skip
    p.add_argument("--max-images", type=int)
    p.add_argument("--resize", choices=("crop", "squash"))
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    p.add_argument("--sampling", choices=("epochs", "iid"), help="shuffled epochs, or i.i.d. batches")
    p.add_argument("--train-batch-size", type=int, help="micro-batch per process")
    p.add_argument("--gradient-accumulation-steps", type=int, help="micro-batches per optimiser update")
    p.add_argument("--epochs", type=int, help="length in passes over the data (unless --max-train-steps)")
    p.add_argument("--max-train-steps", type=int, help="length in optimiser updates (wins over --epochs)")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--adam-beta1", type=float)
    p.add_argument("--adam-beta2", type=float)
    p.add_argument("--max-grad-norm", type=float, help="0: no clipping")
    p.add_argument("--lpips-weight", type=float, help="0 turns LPIPS off")
    p.add_argument("--disc-loss", choices=("lsgan", "hinge"))
    p.add_argument("--discriminator", choices=("report", "pix2pix"), help="PatchGAN structure")
    p.add_argument("--disc-start", type=int, help="optimiser update at which the PatchGAN losses start")
    p.add_argument("--disc-weight", type=float)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
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
    add_recipe_argument(p, VQVAE)
    args = p.parse_args(argv)
    apply_recipe(args, VQVAE)
    if args.max_train_steps is None and args.epochs is None:
        raise ValueError("give --max-train-steps or --epochs")
    if (args.max_train_steps or 1) < 1 or (args.epochs or 1) < 1 or args.gradient_accumulation_steps < 1:
        raise ValueError("--max-train-steps, --epochs and --gradient-accumulation-steps must be >= 1")
    if args.train_batch_size < 2:
        raise ValueError("--train-batch-size must be >= 2 (BatchNorm in the PatchGAN)")
    if args.max_grad_norm < 0:
        raise ValueError("--max-grad-norm must be >= 0 (0: no clipping)")
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

    accelerator = start_run(args.mixed_precision, args.output_dir)
    device = accelerator.device
    config = build_config(args)
    torch.manual_seed(args.seed)
    autoencoder = VQAutoencoder(build_vqvae(config), config.commitment_cost).to(device)
    width = max(16, config.vq_block_out_channels[0])  # 64 at full size, as in both PatchGANs
    discriminator = (
        report_discriminator(3, width)
        if args.discriminator == "report"
        else PatchDiscriminator(3, width=width, n_layers=2 if config.image_size <= 64 else 3)
    ).to(device)
    perceptual = perceptual_loss_or_none(device) if args.lpips_weight > 0 else None
    data = load_captioned_images(args.data, config.image_size, args.max_images, resize=args.resize)
    accumulation = args.gradient_accumulation_steps
    if args.max_train_steps is None:  # recorded in training_args.json
        args.max_train_steps = steps_for_epochs(
            args.epochs, len(data), args.train_batch_size * accelerator.num_processes, accumulation
        )
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
        use_disc = step >= args.disc_start and args.disc_weight > 0
        for micro in range(accumulation):
            micro_step = step * accumulation + micro
            generator = step_generator(args.seed, micro_step, accelerator.process_index)
            rows = batch_rows(len(data), args.train_batch_size, micro_step, sampling=args.sampling,
                              seed=args.seed, process_index=accelerator.process_index, generator=generator)  # fmt: skip
            if rows is None:
                rows = torch.randint(len(data), (args.train_batch_size,), generator=generator)
            images = data.images[rows]
            if args.hflip:
                images = random_hflip(images, generator)
            images = images.to(device)
            # Gradients are all-reduced on the last micro-batch of an update only.
            syncing = micro == accumulation - 1
            # Autoencoder: MSE + VQ losses (+ LPIPS) (+ adversarial, once the discriminator is on).
            with maybe_no_sync(accelerator, wrapped_ae, syncing):
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
                    # Frozen for this pass, so no gradient of the autoencoder's loss reaches the discriminator.
                    discriminator.requires_grad_(False)
                    g_adv = generator_adversarial_loss(discriminator(recon.float()), args.disc_loss)
                    discriminator.requires_grad_(True)
                    loss = loss + args.disc_weight * g_adv
                accelerator.backward(loss / accumulation)
            d_loss = torch.zeros((), device=device)
            if use_disc:
                fake = recon.detach().float()
                if args.disc_loss == "lsgan":
                    # As in the report: real and fake in separate passes (BatchNorm statistics of each alone),
                    # the loss weighted by disc_weight too.
                    with maybe_no_sync(accelerator, wrapped_d, False):
                        fake_loss = 0.5 * args.disc_weight * lsgan_loss(wrapped_d(fake), 0.0)
                        accelerator.backward(fake_loss / accumulation)
                    with maybe_no_sync(accelerator, wrapped_d, syncing):
                        real_loss = 0.5 * args.disc_weight * lsgan_loss(wrapped_d(images), 1.0)
                        accelerator.backward(real_loss / accumulation)
                    d_loss = fake_loss.detach() + real_loss.detach()
                else:
                    with maybe_no_sync(accelerator, wrapped_d, syncing):
                        logits = wrapped_d(torch.cat([images, fake]))  # one forward for DDP
                        d_loss = hinge_d_loss(*logits.chunk(2))
                        accelerator.backward(d_loss / accumulation)
            usage += torch.bincount(indices.detach().cpu(), minlength=config.num_vq_embeddings)
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(autoencoder.parameters(), args.max_grad_norm)
        opt_ae.step()
        opt_ae.zero_grad(set_to_none=True)
        if use_disc:
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
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
