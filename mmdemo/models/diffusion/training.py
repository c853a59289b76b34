"""Helpers the diffusion training scripts share: data in memory, EMA, per-step RNG, plots, checkpoints.

Batches are drawn with a generator seeded from ``(seed, process, step)``: a run resumed at step k draws
exactly the batches an uninterrupted run would have drawn from step k on, so resuming neither repeats nor
skips data.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_PREFIX = "checkpoint-"


def set_threads() -> None:
    """Honour ``MMDEMO_NUM_THREADS`` (``/tmp/cpuslot`` sets it to 1) so shared CPUs are not oversubscribed."""
    threads = os.environ.get("MMDEMO_NUM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))


@dataclass
class CaptionedImages:
    """A whole (small) dataset in memory: images as (N, 3, H, W) in [-1, 1] and all captions per image."""

    images: torch.Tensor
    captions: list[list[str]]
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def load_captioned_images(folder: str | Path, resolution: int, limit: int | None = None) -> CaptionedImages:
    """Read a Flickr8k-layout folder (``Images/`` + ``captions.txt``): Shapes here, Flickr8k on a GPU box.

    Images are resized (bicubic) and centre-cropped to ``resolution``.
    """
    from PIL import Image

    from mmdemo.data.flickr8k import load_flickr8k

    corpus = load_flickr8k(folder)
    names = corpus.images[:limit] if limit else corpus.images
    if not names:
        raise ValueError(f"no images in {folder}")
    arrays = []
    for name in names:
        image = corpus.open_image(name)
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


def draw_batch(
    data: CaptionedImages, batch_size: int, generator: torch.Generator, cond_dropout: float
) -> tuple[torch.Tensor, list[str]]:
    """Random images, one random caption of each, and "" for a ``cond_dropout`` fraction (for CFG)."""
    index = torch.randint(len(data), (batch_size,), generator=generator)
    which = torch.randint(1_000_000, (batch_size,), generator=generator)
    drop = torch.rand(batch_size, generator=generator) < cond_dropout
    captions = []
    for i, k, d in zip(index.tolist(), which.tolist(), drop.tolist()):
        captions.append("" if d else data.captions[i][k % len(data.captions[i])])
    return data.images[index], captions


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


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder in ``output_dir``, or None."""
    folder = Path(output_dir)
    found = [
        (int(m.group(1)), p)
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if (m := re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name))
    ]
    return max(found)[1] if found else None


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    folder = Path(output_dir)
    found = sorted((checkpoint_step(p), p) for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
    import shutil

    for _, path in found[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def save_history(output_dir: Path, history: list[dict[str, float]]) -> None:
    (output_dir / "history.json").write_text(json.dumps(history))


def load_history(output_dir: Path) -> list[dict[str, float]]:
    path = output_dir / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def plot_curves(
    history: list[dict[str, float]], path: Path, keys: tuple[str, ...] = ("loss",), title: str = ""
) -> None:
    """Loss curves (raw and a running mean) over steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in keys:
        values = [h.get(key, float("nan")) for h in history]
        if not any(math.isfinite(v) for v in values):
            continue
        ax.plot(steps, values, alpha=0.3, lw=0.8)
        window = max(1, len(values) // 50)
        smooth = np.convolve(np.nan_to_num(values), np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    import logging

    from mmdemo import training

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(
            "fp16 mixed precision needs a CUDA device; training in fp32 on this machine"
        )
        mixed_precision = "no"
    return training.make_accelerator(mixed_precision=mixed_precision, project_dir=str(output_dir))


def process_record(accelerator: Any) -> dict[str, Any]:
    """How many processes trained, and how they were joined, for a run's summary (``training_args.json``)."""
    return {"processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type)}


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
