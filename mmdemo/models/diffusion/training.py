"""What the diffusion training scripts share: data in memory, EMA, per-step RNG, plots, checkpoints, and
the whole training loop of the two text-conditioned denoisers (:func:`train_denoiser`).

Batches are drawn with a generator seeded from ``(seed, process, step)``: a run resumed at step k draws
exactly the batches an uninterrupted run would have drawn from step k on, so resuming neither repeats nor
skips data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.training.checkpoints import resume_point, save_checkpoint, save_history
from mmdemo.training.plots import Curve, plot_loss_curves

logger = logging.getLogger(__name__)


@dataclass
class CaptionedImages:
    """A whole (small) dataset in memory: images as (N, 3, H, W) in [-1, 1] and all captions per image."""

    images: torch.Tensor
    captions: list[list[str]]
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def load_captioned_images(
    folder: str | Path, resolution: int, limit: int | None = None, resize: str = "crop"
) -> CaptionedImages:
    """Read a Flickr8k-layout folder (``Images/`` + ``captions.txt``): Shapes here, Flickr8k on a GPU box.

    Images are resized (bicubic) to ``resolution`` squares: ``resize="crop"`` takes the centre square first,
    ``"squash"`` resizes the whole image (changing its aspect ratio, as ``Resize((s, s))`` does).
    """
    if resize not in ("crop", "squash"):
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}")
    from PIL import Image

    from mmdemo.data.flickr8k import load_flickr8k

    corpus = load_flickr8k(folder)
    names = corpus.images[:limit] if limit else corpus.images
    if not names:
        raise ValueError(f"no images in {folder}")
    arrays = []
    for name in names:
        image = corpus.open_image(name)
        if resize == "crop":
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return CaptionedImages(images, [corpus.captions[n] for n in names], list(names))


def step_generator(seed: int, step: int, process_index: int = 0) -> torch.Generator:
    """The RNG of one optimisation step on one process (batches, noise, timesteps, condition dropout).

    Each process draws its own batch from its own stream. The streams are 2**40 steps apart: with an offset
    shorter than the run, process 1 at step s would replay process 0's batch of step s + offset. Process 0's
    seeds do not depend on the offset, so single-process checkpoints resume exactly whatever it is.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + process_index * 2**40 + step) % (2**63))


def batch_rows(
    n: int, batch_size: int, micro_step: int, *, sampling: str, seed: int, process_index: int,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """Rows of micro-batch ``micro_step``: None for ``sampling="iid"`` (the caller draws them with
    ``generator``); for ``"epochs"`` a slice of this epoch's permutation of ``range(n)`` (the last batch of an
    epoch is short), so each epoch sees every row once, as a shuffling ``DataLoader`` does. The permutation
    depends only on (seed, process, epoch): a resumed run continues the same epoch."""
    if sampling == "iid":
        return None
    if sampling != "epochs":
        raise ValueError(f"sampling must be 'epochs' or 'iid', got {sampling!r}")
    per_epoch = math.ceil(n / batch_size)
    epoch, j = divmod(micro_step, per_epoch)
    order = torch.randperm(n, generator=step_generator(seed + 1, epoch, process_index))
    return order[j * batch_size : (j + 1) * batch_size]


def draw_batch(
    clean: torch.Tensor,
    captions: list[list[str]],
    batch_size: int,
    generator: torch.Generator,
    cond_dropout: float,
    *,
    rows: torch.Tensor | None = None,
    first_caption: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """Rows of ``clean`` (images or their latents; ``rows``, or random ones), one caption of each (a random one,
    or the first with ``first_caption``), and "" for a ``cond_dropout`` fraction (for classifier-free guidance)."""
    index = rows if rows is not None else torch.randint(len(clean), (batch_size,), generator=generator)
    which = torch.randint(1_000_000, (len(index),), generator=generator)
    drop = torch.rand(len(index), generator=generator) < cond_dropout
    chosen = []
    for i, k, d in zip(index.tolist(), which.tolist(), drop.tolist()):
        chosen.append("" if d else captions[i][0 if first_caption else k % len(captions[i])])
    return clean[index], chosen


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def maybe_no_sync(accelerator: Any, model: nn.Module, sync: bool) -> Any:
    """accelerate's ``no_sync`` for a micro-batch that does not end an update: DDP then all-reduces the
    accumulated gradients once, on the last one."""
    import contextlib

    return contextlib.nullcontext() if sync else accelerator.no_sync(model)


def make_optimizer(
    params: Any, name: str, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """torch's ``Adam`` (weight decay as L2) or ``AdamW`` (decoupled), by name."""
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in classes:
        raise ValueError(f"optimizer must be one of {sorted(classes)}, got {name!r}")
    return classes[name](params, lr=lr, betas=betas, weight_decay=weight_decay)


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, name: str, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``"cosine"`` (:func:`cosine_with_warmup`) or ``"constant"`` (the learning rate as given, no warm-up)."""
    if name == "cosine":
        return cosine_with_warmup(optimizer, warmup, total)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"lr schedule must be 'cosine' or 'constant', got {name!r}")


class EMA:
    """Exponential moving average of a module's trainable parameters (kept in fp32 on the module's device).

    ``state_dict``/``load_state_dict`` make it part of ``accelerator.save_state`` via
    ``register_for_checkpointing``, so a resumed run continues the same average.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 0 (the report's pixel-diffusion schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def write_run_record(output_dir: Path, args: Any, summary: dict[str, Any]) -> None:
    """``training_args.json``: every argument of the run and its summary, so a model card can quote both."""
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (output_dir / "training_args.json").write_text(json.dumps({**args_json, **summary}, indent=1))


def plot_curves(
    history: list[dict[str, float]], path: Path, keys: tuple[str, ...] = ("loss",), title: str = ""
) -> None:
    """Loss curves (raw and a running mean) of ``keys`` in ``history`` over steps, log scale, as a PNG."""
    steps = [h["step"] for h in history]
    curves = [Curve(key, steps, [h.get(key, float("nan")) for h in history]) for key in keys]
    plot_loss_curves(path, curves, title=title, log_y=True)


def save_grid(
    images: list[Any], path: Path, captions: list[str] | None = None, columns: int = 4, scale: int = 2
) -> None:
    """A grid of PIL images (upscaled ``scale`` x, nearest), with the prompts in a text file beside it."""
    from PIL import Image

    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width * scale, rows * height * scale), (255, 255, 255))
    for i, image in enumerate(images):
        big = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
        grid.paste(big, ((i % columns) * width * scale, (i // columns) * height * scale))
    grid.save(path)
    if captions:
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def save_weights(state: dict[str, torch.Tensor], path: Path, *, fp16: bool) -> None:
    """safetensors, contiguous CPU tensors, optionally in fp16 (the adapters load them back as fp32)."""
    from safetensors.torch import save_file

    out = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        out[key] = (
            value.half()
            if fp16 and value.is_floating_point()
            else value.float()
            if value.is_floating_point()
            else value
        )
    save_file(out, str(path))


def json_ready(value: Any) -> Any:
    """Config values as JSON (tuples -> lists)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def make_accelerator(mixed_precision: str, output_dir: Path) -> Any:
    """An ``Accelerator``; fp16 falls back to full precision (with a warning) where there is no CUDA device."""
    from mmdemo import training

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logger.warning("fp16 mixed precision needs a CUDA device; training in fp32 on this machine")
        mixed_precision = "no"
    return training.make_accelerator(mixed_precision=mixed_precision, project_dir=str(output_dir))


def start_run(mixed_precision: str, output_dir: Path) -> Any:
    """What each training script here does first: honour the thread setting, log plain lines, its accelerator."""
    from mmdemo.training import set_threads

    set_threads()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return make_accelerator(mixed_precision, output_dir)


def process_record(accelerator: Any) -> dict[str, Any]:
    """How many processes trained, and how they were joined, for a run's summary (``training_args.json``)."""
    return {"processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type)}


def denoiser_config_values(
    args: argparse.Namespace, values: Mapping[str, Any], text_encoder: Any, text_config_keys: tuple[str, ...]
) -> dict[str, Any]:
    """The config a denoiser script trains: ``values`` (the registry's full or tiny config and what the script
    adds); at tiny size the frozen text encoder is ours, named by its folder and described by its config's
    ``text_config_keys``; then the command line's ``--prediction-type`` and ``--beta-schedule``."""
    values = dict(values)
    if args.config == "tiny":
        values["text_encoder"] = Path(args.text_encoder).name
        values["text_encoder_config"] = {k: getattr(text_encoder.config, k) for k in text_config_keys}
    for key in ("prediction_type", "beta_schedule"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return values


def export_text_to_image(
    model: Any, weights: Mapping[str, torch.Tensor], tokenizer: Any, out: Path, *, fp16: bool
) -> None:
    """Write the self-describing folder the text-diffusion adapter loads: ``config.json``, the trained
    ``weights``, and the frozen text encoder and its tokenizer in their sub-folders."""
    from mmdemo.generators.text_diffusion import TEXT_ENCODER_DIR, TOKENIZER_DIR
    from mmdemo.models.diffusion.text_to_image import MODEL_FILE

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(json_ready(model.config.to_dict()), indent=1))
    save_weights(dict(weights), out / MODEL_FILE, fp16=fp16)
    model.text_encoder.save_pretrained(out / TEXT_ENCODER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)


def sample_prompts(data: CaptionedImages, n: int = 8) -> list[str]:
    """Fixed prompts for the sample grids: the first caption of ``n`` evenly spaced training images."""
    picks = np.linspace(0, len(data) - 1, num=min(n, len(data))).round().astype(int)
    return [data.captions[i][0] for i in picks]


class swapped_weights:  # noqa: N801 - used as a context manager, reads like one
    """Temporarily load the EMA weights into ``module`` (for sample grids and export), then restore."""

    def __init__(self, module: nn.Module, ema: EMA | None):
        self.module, self.ema, self.backup = module, ema, None

    def __enter__(self) -> nn.Module:
        if self.ema is not None:
            self.backup = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            self.ema.copy_to(self.module)
        return self.module

    def __exit__(self, *exc: Any) -> None:
        if self.backup is not None:
            self.module.load_state_dict(self.backup)


# ---------------------------------------------------------------------------------------------------
# The loop both text-conditioned denoisers (pixel-diffusion, latent-diffusion) train with


def add_denoiser_arguments(p: argparse.ArgumentParser, recipes: Mapping[str, Any]) -> None:
    """The command-line options both denoiser scripts share, then ``--recipe``: every option that is a field
    of the recipe (:class:`mmdemo.recipes.DenoiserRecipe`) defaults to the chosen recipe's value. Call it after
    the script's own recipe options."""
    from mmdemo.recipes import add_recipe_argument

    p.add_argument("--max-images", type=int, help="use only the first N images")
    p.add_argument("--captions", choices=("first", "random"), help="each image's first caption, or a random one")
    p.add_argument("--sampling", choices=("epochs", "iid"), help="shuffled epochs, or i.i.d. batches")
    p.add_argument("--epochs", type=int, help="length in passes over the data (unless --max-train-steps)")
    p.add_argument("--max-train-steps", type=int, help="length in optimiser steps (wins over --epochs)")
    p.add_argument("--train-batch-size", type=int, help="per process")
    p.add_argument("--optimizer", choices=("adam", "adamw"))
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"))
    p.add_argument("--lr-warmup-steps", type=int)
    p.add_argument("--max-grad-norm", type=float, help="0: no clipping")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--cond-dropout", type=float, help="fraction of captions replaced by '' (CFG)")
    p.add_argument("--resize", choices=("crop", "squash"), help="centre square then resize, or resize the whole image")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None)
    p.add_argument("--beta-schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"), default=None)
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--checkpoints-total-limit", type=int, default=2)
    p.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument("--sample-every", type=int, default=500, help="loss curve + sample grid every N steps")
    p.add_argument("--sample-steps", type=int, default=20, help="fast-preset steps for the sample grids")
    p.add_argument(
        "--guidance", type=float, default=None,
        help="guidance of the sample grids (default: 3 when the model trains with condition dropout, else 1)",
    )  # fmt: skip
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
    add_recipe_argument(p, recipes)


def check_denoiser_arguments(args: argparse.Namespace) -> None:
    """Reject the shared options' impossible values before any model is built (after the recipe is applied)."""
    if args.max_train_steps is None and args.epochs is None:
        raise ValueError("give --max-train-steps or --epochs")
    if (args.max_train_steps is not None and args.max_train_steps < 1) or (args.epochs is not None and args.epochs < 1):
        raise ValueError("--max-train-steps and --epochs must be positive")
    if args.train_batch_size < 1:
        raise ValueError("--train-batch-size must be positive")
    if args.max_grad_norm < 0 or args.learning_rate <= 0 or args.weight_decay < 0:
        raise ValueError("--learning-rate must be positive, --max-grad-norm and --weight-decay >= 0")
    if args.guidance is None:
        args.guidance = 3.0 if args.cond_dropout > 0 else 1.0  # guidance needs an unconditional model
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


@dataclass
class DenoiserTask:
    """What one text-to-image model brings to :func:`train_denoiser`; the loop itself is shared.

    ``clean`` is what gets noised (pixels, or cached VQ-VAE latents), row for row with ``captions``;
    ``hflip`` mirrors half of each batch (pixels only: a mirrored latent is not the latent of a mirrored image).
    """

    title: str  # progress bar, log and plot title
    config: Any  # num_train_timesteps, prediction_type, text_max_length
    denoiser: nn.Module  # the only trainable part
    clean: torch.Tensor
    captions: list[list[str]]
    noise_scheduler: Any  # the training DDPMScheduler (add_noise, get_velocity)
    encode: Callable[[list[str]], Any]  # captions -> EncodedText of the frozen text encoder
    predict: Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (net, noisy, t, text)
    sample: Callable[[list[str]], list[Any]]  # prompts -> PIL images with the denoiser's current weights
    export: Callable[[Path], None]  # write the loadable model folder with the denoiser's current weights
    hflip: bool = False


def train_denoiser(
    args: argparse.Namespace, accelerator: Any, task: DenoiserTask, prompts: list[str]
) -> dict:
    """Train ``task.denoiser`` by denoising score matching with the shared options (see
    :func:`add_denoiser_arguments`): the recipe's data, optimiser, schedule, clipping and EMA, resumable
    checkpoints, loss curve and sample grids of ``prompts``, ``--max-minutes``; export at the end."""
    from tqdm.auto import tqdm

    from mmdemo.training import time_is_up

    device = accelerator.device
    denoiser, config, out = task.denoiser, task.config, args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    n_proc = accelerator.num_processes
    if args.max_train_steps is None:  # the recipe's epochs of the global batch; recorded in training_args.json
        from mmdemo.recipes import steps_for_epochs

        args.max_train_steps = steps_for_epochs(args.epochs, len(task.clean), args.train_batch_size * n_proc)
    optimizer = make_optimizer(denoiser.parameters(), args.optimizer, args.learning_rate, args.weight_decay)
    # accelerate steps a prepared scheduler once per process per optimiser step, hence the factor.
    lr_scheduler = make_lr_schedule(
        optimizer, args.lr_schedule, args.lr_warmup_steps * n_proc, args.max_train_steps * n_proc
    )
    ema = EMA(denoiser, args.ema_decay) if args.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    wrapped, optimizer, lr_scheduler = accelerator.prepare(denoiser, optimizer, lr_scheduler)
    start, history = resume_point(accelerator, out, args.resume_from_checkpoint)
    logger.info(
        "%s: %d trainable parameters, %d images, steps %d -> %d",
        task.title, sum(p.numel() for p in denoiser.parameters()), len(task.clean), start, args.max_train_steps,
    )  # fmt: skip
    bar = tqdm(
        range(start, args.max_train_steps), disable=not accelerator.is_local_main_process, desc=task.title
    )
    started = time.time()
    for step in bar:
        generator = step_generator(args.seed, step, accelerator.process_index)
        rows = batch_rows(len(task.clean), args.train_batch_size, step, sampling=args.sampling, seed=args.seed,
                          process_index=accelerator.process_index, generator=generator)  # fmt: skip
        clean, captions = draw_batch(
            task.clean, task.captions, args.train_batch_size, generator, args.cond_dropout,
            rows=rows, first_caption=args.captions == "first",
        )  # fmt: skip
        if task.hflip:
            clean = random_hflip(clean, generator)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, config.num_train_timesteps, (len(clean),), generator=generator)
        clean, noise, timesteps = clean.to(device), noise.to(device), timesteps.to(device)
        noisy = task.noise_scheduler.add_noise(clean, noise, timesteps)
        target = (
            noise
            if config.prediction_type == "epsilon"
            else task.noise_scheduler.get_velocity(clean, noise, timesteps)
        )
        text = task.encode(captions)
        with accelerator.autocast():
            pred = task.predict(wrapped, noisy, timesteps, text)
        loss = F.mse_loss(pred.float(), target.float())
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
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
            plot_curves(history, out / "loss.png", title=task.title)
            with swapped_weights(denoiser, ema):
                denoiser.eval()
                images = task.sample(prompts)
                denoiser.train()
            (out / "samples").mkdir(exist_ok=True)
            save_grid(images, out / "samples" / f"step_{done:06d}.png", prompts)
        if done % args.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, out, done, history, args.checkpoints_total_limit)
        if out_of_time:
            logger.info(
                "--max-minutes %s reached: stopping at step %d of %d",
                args.max_minutes,
                done,
                args.max_train_steps,
            )
            break
    accelerator.wait_for_everyone()
    recent = history[-100:]
    summary = {"steps": history[-1]["step"] + 1 if history else start, "seconds": round(time.time() - started, 1),
               "final_loss": sum(h["loss"] for h in recent) / max(1, len(recent)), **process_record(accelerator)}  # fmt: skip
    if accelerator.is_main_process:
        with swapped_weights(denoiser, ema):
            task.export(out)
        save_history(out, history)
        plot_curves(history, out / "loss.png", title=task.title)
        write_run_record(out, args, summary)
        logger.info(json.dumps(summary))
    return summary
