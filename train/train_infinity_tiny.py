"""Train the tiny Infinity demo model on Shapes: BSQ-VAE first, then the transformer with its T5 encoder.

The demo checkpoint proves the sampler: a tiny BSQ-VAE and a tiny Infinity of the *same classes* as the
2B model, trained here on a CPU in minutes.

* ``--phase vae``: encoder + multi-scale BSQ + decoder, reconstruction loss (MSE + L1) through the
  straight-through bit quantiser, on the schedule's scales.
* ``--phase transformer``: the VAE is frozen; every image's multi-scale residual bits are computed once;
  the transformer is trained with teacher forcing (inputs = the summed codes of coarser scales resampled
  to each scale, exactly as sampling builds them) and a bitwise cross-entropy over all bits of all scales.
  The tiny ``T5EncoderModel`` (word-level tokenizer built from the training captions) is trained jointly
  with it from scratch; 10 % of prompts are replaced by the learned empty prompt so guidance works.
* ``--phase all``: both, then the demo folder is written: ``config.json``, ``transformer.safetensors``,
  ``vae.safetensors``, ``text_encoder.safetensors`` (fp16), ``tokenizer.json``, ``loss.png``.

Batches are drawn from a generator seeded by (seed, step), so a resumed run (``--resume``, from the last
``checkpoints/<phase>-<step>`` accelerate state) continues with exactly the batches it would have seen.
Runs unchanged under ``accelerate launch`` (each process draws its own shard of every batch)::

    python -m mmdemo.data.shapes --out runs/shapes32 --n 4000 --seed 7 --size 32 --max-objects 1
    python train/train_infinity_tiny.py --data runs/shapes32 --out runs/infinity-tiny --phase all
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdemo.models.infinity import (
    BSQVAE,
    BSQVAEConfig,
    Infinity,
    InfinityConfig,
    InfinityFamilyConfig,
    build_word_tokenizer,
    teacher_forcing_inputs,
    tiny_t5_config,
)
from mmdemo.models.infinity.loading import save_demo_checkpoint
from mmdemo.models.infinity.schedules import get_schedule
from mmdemo.registry import get_spec
from mmdemo.training import check_at_least_one, check_captions_folder, script_parser, set_threads
from mmdemo.training.checkpoints import checkpoint_step, last_checkpoint
from mmdemo.training.plots import Curve, plot_loss_curves

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ helpers


def load_shapes(folder: Path, image_size: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Images in [-1, 1] (N, 3, S, S) and their captions, in captions.txt order."""
    from PIL import Image

    from mmdemo.data.flickr8k import read_captions_txt

    names, captions = read_captions_txt(folder / "captions.txt")
    images = []
    for name in names:
        with Image.open(folder / "Images" / name) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    x = torch.stack(images).float() / 127.5 - 1.0
    return x, [captions[n] for n in names]


def batch_indices(step: int, seed: int, n: int, batch: int, accelerator) -> torch.Tensor:
    """This process's share of step ``step``'s batch; depends only on (seed, step), so resumes are exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(n, (batch,), generator=g)
    return idx[accelerator.process_index :: accelerator.num_processes]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def previous_losses(path: Path, start: int) -> list[float]:
    """The loss history of the steps before ``start`` (a resumed run keeps its curve)."""
    if start == 0 or not path.is_file():
        return []
    return json.loads(path.read_text())[:start]


def resume_phase(args: argparse.Namespace, accelerator, phase: str) -> tuple[int, list[float]]:
    """The first step of ``phase`` ("vae" or "transformer") still to run and the losses before it; with
    ``--resume``, the phase's newest ``checkpoints/<phase>-<step>`` is loaded into ``accelerator`` first."""
    folder = last_checkpoint(args.out / "checkpoints", prefix=f"{phase}-") if args.resume else None
    start = 0
    if folder is not None:
        start = checkpoint_step(folder, prefix=f"{phase}-")
        accelerator.load_state(str(folder))
        logger.info("resumed %s from %s", phase, folder)
    return start, previous_losses(args.out / f"{phase}_losses.json", start)


def update(accelerator, opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, clip: float) -> None:
    """One optimiser step on ``loss`` with the gradient norm clipped to ``clip``."""
    opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def end_step(args: argparse.Namespace, accelerator, phase: str, step: int, total: int, loss: torch.Tensor,
             losses: list[float], started: float) -> None:
    """After ``step`` of ``total``: record the loss, log it every 100 steps, and every ``--checkpoint-every``
    steps and at the end save the accelerate state as ``checkpoints/<phase>-<done>`` with the loss history."""
    losses.append(loss.item())
    if step % 100 == 0 or step == total - 1:
        logger.info("%s step %d loss %.4f (%.1fs)", phase, step, loss.item(), time.time() - started)
    done = step + 1
    if done % args.checkpoint_every == 0 or done == total:
        accelerator.save_state(str(args.out / "checkpoints" / f"{phase}-{done}"))
        (args.out / f"{phase}_losses.json").write_text(json.dumps(losses))


# ------------------------------------------------------------------------------------------ args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser(__doc__)
    p.add_argument("--data", type=Path, required=True, help="Shapes folder (Images/ + captions.txt)")
    p.add_argument(
        "--out", type=Path, required=True, help="run folder; the demo checkpoint goes to OUT/final"
    )
    p.add_argument("--phase", choices=("vae", "transformer", "all"), default="all")
    p.add_argument("--config", type=str, default="", help="JSON overriding the registry's tiny config")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--tf-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--tf-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of each phase")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    args = p.parse_args(argv)
    check_captions_folder(args.data)
    check_at_least_one(args, ("vae_steps", "tf_steps", "batch_size", "checkpoint_every"))
    if args.vae_lr <= 0 or args.tf_lr <= 0:
        raise ValueError("learning rates must be > 0")
    return args


def family_config(args: argparse.Namespace) -> InfinityFamilyConfig:
    kwargs = dict(get_spec("infinity-2b").tiny_config)
    if args.config:
        kwargs.update(json.loads(args.config))
    return InfinityFamilyConfig(**kwargs)


# ------------------------------------------------------------------------------------------ phases


def train_vae(args, fam: InfinityFamilyConfig, images: torch.Tensor, accelerator) -> BSQVAE:
    torch.manual_seed(args.seed)
    vae = BSQVAE(BSQVAEConfig(**fam.vae))
    scales = list(get_schedule(1.0, fam.default_budget, fam.budget_scales, fam.stride).scales)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    vae, opt = accelerator.prepare(vae, opt)
    start, losses = resume_phase(args, accelerator, "vae")
    t0 = time.time()
    for step in range(start, args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, args.vae_lr, args.warmup)
        idx = batch_indices(step, args.seed, len(images), args.batch_size, accelerator)
        x = images[idx].to(accelerator.device)
        with accelerator.autocast():
            recon, _ = vae(x, scales)
            loss = F.mse_loss(recon, x) + 0.2 * F.l1_loss(recon, x)
        update(accelerator, opt, vae, loss, clip=1.0)
        end_step(args, accelerator, "vae", step, args.vae_steps, loss, losses, t0)
    (args.out / "vae_losses.json").write_text(json.dumps(losses))
    return accelerator.unwrap_model(vae)


class TextToBits(torch.nn.Module):
    """T5 encoder + Infinity in one module, so accelerate wraps both for DDP."""

    def __init__(self, t5: torch.nn.Module, infinity: Infinity):
        super().__init__()
        self.t5, self.infinity = t5, infinity

    def forward(self, ids, mask, inputs, scales, rope_grid):
        text = self.t5(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.infinity(text, mask.bool(), inputs, scales, rope_grid)


def train_transformer(args, fam: InfinityFamilyConfig, vae: BSQVAE, images, captions, tokenizer, accelerator):
    from transformers import T5EncoderModel

    schedule = get_schedule(1.0, fam.default_budget, fam.budget_scales, fam.stride)
    scales = list(schedule.scales)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        chunks = []
        for i in range(0, len(images), 256):
            _, bits = vae.encode(images[i : i + 256], scales)
            chunks.append(bits)
        bits_per_scale = [torch.cat([c[k] for c in chunks]) for k in range(len(scales))]  # (N, h, w, d) each
    d = fam.transformer["codebook_dim"]
    targets = torch.cat([b.reshape(b.shape[0], -1, d) for b in bits_per_scale], dim=1)  # (N, L, d)
    inputs_all = teacher_forcing_inputs(bits_per_scale, scales, d)  # (N, L - 1, d)
    flat_caps = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    enc = tokenizer(
        flat_caps,
        padding="longest",
        truncation=True,
        max_length=fam.transformer["text_maxlen"],
        return_tensors="pt",
    )
    ids_all, mask_all = enc["input_ids"], enc["attention_mask"]

    torch.manual_seed(args.seed + 1)
    model = TextToBits(
        T5EncoderModel(tiny_t5_config(fam.t5, len(tokenizer))), Infinity(InfinityConfig(**fam.transformer))
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.tf_lr, betas=(0.9, 0.95), weight_decay=0.01)
    model, opt = accelerator.prepare(model, opt)
    start, losses = resume_phase(args, accelerator, "transformer")
    t0 = time.time()
    model.train()
    for step in range(start, args.tf_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.tf_steps, args.tf_lr, args.warmup)
        cap = batch_indices(step, args.seed + 7, len(flat_caps), args.batch_size, accelerator)
        img = owner[cap]
        ids, mask = ids_all[cap], mask_all[cap]
        keep = int(mask.sum(1).max())
        dev = accelerator.device
        with accelerator.autocast():
            # The demo's sampler spreads RoPE over its own largest grid (schedule.rope_grid); train the same way.
            logits = model(
                ids[:, :keep].to(dev), mask[:, :keep].to(dev), inputs_all[img].to(dev), scales, schedule.rope_grid
            )
            B, L, _ = logits.shape
            loss = F.cross_entropy(logits.float().view(B * L * d, 2), targets[img].to(dev).view(-1))
        update(accelerator, opt, model, loss, clip=2.0)  # the loss: bit cross-entropy
        end_step(args, accelerator, "transformer", step, args.tf_steps, loss, losses, t0)
    (args.out / "transformer_losses.json").write_text(json.dumps(losses))
    unwrapped = accelerator.unwrap_model(model)
    return unwrapped.t5, unwrapped.infinity


def write_demo(out: Path, fam: InfinityFamilyConfig, vae, t5, infinity, tokenizer) -> Path:
    return save_demo_checkpoint(out / "final", fam, vae, t5, infinity, tokenizer)


def main(args: argparse.Namespace) -> None:
    from accelerate import Accelerator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads()
    random.seed(args.seed)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    args.out.mkdir(parents=True, exist_ok=True)
    fam = family_config(args)
    images, captions = load_shapes(args.data, fam.image_size)
    if args.max_images:
        images, captions = images[: args.max_images], captions[: args.max_images]
    logger.info("%d images, %d captions", len(images), sum(map(len, captions)))
    tokenizer = build_word_tokenizer([c for caps in captions for c in caps])

    vae_file = args.out / "vae_stage.safetensors"
    if args.phase in ("vae", "all"):
        vae = train_vae(args, fam, images, accelerator)
        if accelerator.is_main_process:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(vae_file))
        accelerator.wait_for_everyone()
    if args.phase in ("transformer", "all"):
        from safetensors.torch import load_file

        vae = BSQVAE(BSQVAEConfig(**fam.vae))
        vae.load_state_dict(load_file(str(vae_file)))
        t5, infinity = train_transformer(args, fam, vae, images, captions, tokenizer, accelerator)
        if accelerator.is_main_process:
            curves = []
            for name in ("vae", "transformer"):
                path = args.out / f"{name}_losses.json"
                if path.is_file():
                    values = json.loads(path.read_text())
                    curves.append(Curve(name, range(len(values)), values, smooth=False))
            plot_loss_curves(args.out / "loss.png", curves, log_y=True, separate=True)
            final = write_demo(args.out, fam, vae, t5, infinity, tokenizer)
            (final / "loss.png").write_bytes((args.out / "loss.png").read_bytes())
            logger.info("demo checkpoint written to %s", final)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
