"""Train the demo-size SDXL-architecture pipeline from scratch on Shapes (the ``sdxl-base`` demo weights).

The real SDXL base is 3.5B parameters trained by Stability AI; the demo profile needs the *same* pipeline class
small enough to run on a laptop, so this script trains every part of :func:`build_tiny_pipeline` itself:

1. the tiny ``AutoencoderKL`` (32 px pictures -> 16x16x4 latents; MSE + a small KL term), then its latent
   scaling factor is set to 1/std of the training latents, as SD's 0.18215 / SDXL's 0.13025 were;
2. the tiny ``UNet2DConditionModel`` (SDXL's ``text_time`` added conditioning) *and* both tiny CLIP text
   encoders, jointly, on cached VAE latents with v-prediction, a cosine noise schedule, 10 % caption dropout
   (zero embeddings, what the pipeline feeds for an empty negative prompt) and an EMA of the weights.

``--data`` takes several folders. Give it every picture style a LoRA may later favour, as SDXL has seen
every style before any LoRA: a style LoRA shifts a base towards something the base can already draw. A base
(and VAE) that never saw a dark background decodes dark latents as noise, and a dark-style LoRA trained on
top of it learns nothing it can show (the first demo LoRA's failure).

The output is a standard diffusers pipeline folder (``StableDiffusionXLPipeline.from_pretrained`` loads it) plus
our root ``config.json``::

    python -m mmdemo.data.shapes --out data/shapes32 --n 4000 --seed 0 --size 32 --max-objects 1
    python -m mmdemo.data.shapes --out data/shapes32_dark --n 1000 --seed 2 --size 32 --max-objects 1 --style dark
    python train/train_tiny_sdxl_base.py --data data/shapes32 data/shapes32_dark --out checkpoints/demo/sdxl-base
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdemo.data.flickr8k import load_flickr8k, text_to_image_split
from mmdemo.models.sdxl.config import TINY_SCHEDULER_CONFIG
from mmdemo.models.sdxl.tiny import build_tiny_pipeline, save_demo_pipeline
from mmdemo.models.sdxl.training import add_time_ids, encode_tokens, tokenize
from mmdemo.training import set_threads
from mmdemo.training.plots import Curve, plot_loss_curves


def load_pictures(data: Path, resolution: int) -> tuple[torch.Tensor, list[list[str]]]:
    """The training split's pictures in [-1, 1] (N, 3, R, R) and all captions of each."""
    from PIL import Image

    corpus = load_flickr8k(data)
    train, _ = text_to_image_split(corpus)
    arrays, captions = [], []
    for pair in train:
        image = corpus.open_image(pair.image)
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        captions.append(corpus.captions[pair.image])
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), captions


def train_vae(vae, pictures: torch.Tensor, args: argparse.Namespace, log: list[dict]) -> None:
    """Plain VAE training: reconstruction MSE + KL weight ``args.kl_weight`` (no GAN: flat shapes need none)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    generator = torch.Generator().manual_seed(args.seed)
    vae.train()
    start = time.time()
    for step in range(args.vae_steps):
        batch = pictures[torch.randint(len(pictures), (args.batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(recon, batch)
        loss = mse + args.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.vae_steps - 1:
            log.append({"phase": "vae", "step": step, "mse": mse.item(), "seconds": time.time() - start})
            print(f"vae step {step} mse {mse.item():.5f} ({time.time() - start:.0f}s)", flush=True)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, pictures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of every picture's latent distribution, computed once."""
    means, stds = [], []
    for chunk in pictures.split(256):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(pipe, latents: tuple[torch.Tensor, torch.Tensor], captions, args, log) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    scheduler = DDPMScheduler(**{k: v for k, v in TINY_SCHEDULER_CONFIG.items() if k != "timestep_spacing"})
    modules = torch.nn.ModuleList([pipe.unet, pipe.text_encoder, pipe.text_encoder_2])
    modules.train()
    optimizer = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=1e-2)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / args.warmup_steps)
            * 0.5
            * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
        ),
    )
    ema = EMAModel(modules.parameters(), decay=args.ema_decay)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    all_captions = [c for caps in captions for c in caps]
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    # Token ids never change: tokenise every caption once.
    ids_1, ids_2 = tokenize(pipe.tokenizer, all_captions), tokenize(pipe.tokenizer_2, all_captions)
    mean, std = latents
    scale = pipe.vae.config.scaling_factor
    side = args.resolution
    time_ids = add_time_ids(side, side, args.batch_size)
    start = time.time()
    for step in range(args.steps):
        picks = [rng.randrange(len(all_captions)) for _ in range(args.batch_size)]
        rows = torch.tensor([owner[p] for p in picks])
        x0 = (mean[rows] + std[rows] * torch.randn(mean[rows].shape, generator=generator)) * scale
        embeds, pooled = encode_tokens(pipe.text_encoder, pipe.text_encoder_2, ids_1[picks], ids_2[picks])
        keep = (torch.rand(args.batch_size, generator=generator) >= args.cond_dropout).float()
        embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = pipe.unet(
            noisy,
            t,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        loss = F.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(modules.parameters())
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.time() - start
            log.append({"phase": "unet", "step": step, "loss": loss.item(), "seconds": elapsed})
            print(f"unet step {step} loss {loss.item():.4f} ({elapsed:.0f}s)", flush=True)
    ema.copy_to(modules.parameters())  # sample with the averaged weights
    modules.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="Shapes (or Flickr8k-layout) folders"
    )
    parser.add_argument("--out", type=Path, required=True, help="output pipeline folder")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=1200, help="UNet + text encoder steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--cond-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for folder in args.data:
        if not (folder / "captions.txt").is_file():
            raise ValueError(
                f"--data {folder} has no captions.txt; write one with `python -m mmdemo.data.shapes`"
            )
    if args.resolution != 32:
        raise ValueError(
            "the tiny pipeline's UNet is sized for 32 px pictures (16x16 latents); use --resolution 32"
        )
    for name in ("batch_size", "vae_steps", "steps", "warmup_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.cond_dropout < 1.0:
        raise ValueError("--cond-dropout must be in [0, 1)")
    return args


def main(args: argparse.Namespace) -> None:
    set_threads()
    torch.manual_seed(args.seed)
    pipe = build_tiny_pipeline(seed=args.seed)
    loaded = [load_pictures(folder, args.resolution) for folder in args.data]
    pictures = torch.cat([folder_pictures for folder_pictures, _ in loaded])
    captions = [caps for _, folder_captions in loaded for caps in folder_captions]
    print(f"{len(pictures)} training pictures from {', '.join(map(str, args.data))}", flush=True)
    log: list[dict] = []
    train_vae(pipe.vae, pictures, args, log)
    mean, std = encode_latents(pipe.vae, pictures)
    scaling = float(1.0 / mean.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    print(f"latent scaling factor {scaling:.4f}", flush=True)
    train_denoiser(pipe, (mean, std), captions, args, log)
    command = "python train/train_tiny_sdxl_base.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
    )
    pipe.to(torch.float16)  # shipped in fp16 (half the size); the loader upcasts to fp32 on CPU
    save_demo_pipeline(
        pipe, args.out, description={"trained_by": command, "training_pictures": len(pictures)}
    )
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    curves = [
        Curve(f"{phase}: {key}", [r["step"] for r in rows], [r[key] for r in rows], smooth=False, style=".-")
        for phase, key in (("vae", "mse"), ("unet", "loss"))
        if (rows := [r for r in log if r["phase"] == phase])
    ]
    plot_loss_curves(args.out / "loss_curve.png", curves, log_y=True, separate=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main(parse_args())
