"""Pretrain a tiny vision encoder on Shapes, to be frozen by the demo captioners.

The real captioners freeze an encoder pretrained elsewhere (ImageNet ResNet-18, CLIP). Offline there is
no such encoder, so the demo follows the same recipe at tiny scale: the tiny encoder (the same torchvision
/ open_clip classes, see ``mmdemo/models/xattn/network.py``) is first trained to *recognise* Shapes scenes from
``scenes.jsonl`` (for each of the five positions: which colour, shape and size is there, or nothing; and
the background), never on captions; ``train/train_captioner.py --init-dir OUT`` then loads and freezes it.

    python train/pretrain_shapes_vision.py --vision resnet18-tiny --data runs/shapes --out runs/vision_resnet

Writes ``OUT/config.json`` (vision name, image size, final accuracies) and ``OUT/model.safetensors``
(keys ``vision.*``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.models.xattn.network import (
    VISION_SPECS,
    XAttnConfig,
    build_vision,
    preprocess_images,
    vision_tokens,
)
from mmdemo.training import set_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vision", required=True, choices=[k for k in VISION_SPECS if k.endswith("-tiny")])
    parser.add_argument("--data", type=Path, required=True, help="a Shapes folder (Images/, scenes.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--image-size", type=int, default=None, help="encoder input side (default: the encoder's)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    args = parser.parse_args(argv)
    if not (args.data / "scenes.jsonl").is_file():
        raise ValueError(
            f"{args.data} has no scenes.jsonl; generate it with `python -m mmdemo.data.shapes --out DIR`"
        )
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0")
    return args


def scene_targets(scenes: list) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """(N, 5 * 3 + 1) class ids: per position colour/shape/size (or none), then the background; the classes."""
    from mmdemo.data.shapes import scene_labels

    rows, classes = scene_labels(scenes)
    return torch.tensor(rows), classes


class ProbeHeads(nn.Module):
    """Flattened tokens (location kept) -> one small classifier per position attribute + background."""

    def __init__(self, tokens: int, channels: int, classes: dict[str, list[str]], positions: int):
        super().__init__()
        self.sizes = [len(classes[a]) for a in ("color", "shape", "size")] * positions + [len(classes["bg"])]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(tokens * channels, 256), nn.ReLU())
        self.out = nn.Linear(256, sum(self.sizes))

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return list(self.out(self.body(tokens)).split(self.sizes, dim=-1))


def main(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from mmdemo.data.flickr8k import load_flickr8k
    from mmdemo.data.shapes import POSITIONS, load_scenes

    set_threads()
    torch.manual_seed(args.seed)
    accelerator = Accelerator()
    config = XAttnConfig(vision=args.vision, image_size=args.image_size)
    corpus = load_flickr8k(args.data)
    scenes = load_scenes(args.data)
    names = [n for n in corpus.images if n in scenes]
    targets, classes = scene_targets([scenes[n] for n in names])
    pixels = torch.cat(
        [
            preprocess_images(config, [corpus.open_image(n) for n in names[i : i + 256]])
            for i in range(0, len(names), 256)
        ]
    )
    n_val = max(1, len(names) // 10)
    vision, channels, n_tokens = build_vision(config)
    heads = ProbeHeads(n_tokens, channels, classes, len(POSITIONS))
    model = nn.ModuleDict({"vision": vision, "heads": heads})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_idx = torch.arange(n_val, len(names))
    generator = torch.Generator().manual_seed(args.seed)
    start, history = time.time(), []
    steps_per_epoch = (len(train_idx) + args.batch_size - 1) // args.batch_size
    progress = tqdm(
        total=args.epochs * steps_per_epoch, disable=not accelerator.is_main_process, desc="pretrain"
    )
    stop = False
    for epoch in range(args.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            logits = heads(vision_tokens(vision, pixels[batch]))
            loss = sum(F.cross_entropy(lg, targets[batch, j]) for j, lg in enumerate(logits)) / len(logits)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            history.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            if args.max_minutes and time.time() - start > 60 * args.max_minutes:
                stop = True
                break
        if stop:
            break
    model.eval()
    with torch.no_grad():
        logits = heads(vision_tokens(vision, pixels[:n_val]))
    correct = torch.stack([lg.argmax(-1) == targets[:n_val, j] for j, lg in enumerate(logits)], dim=1)
    result = {
        "vision": config.vision,
        "image_size": config.image_size,
        "data": str(args.data),
        "seed": args.seed,
        "steps": len(history),
        "minutes": round((time.time() - start) / 60, 2),
        "final_loss": round(sum(history[-20:]) / len(history[-20:]), 4),
        "val_attribute_accuracy": round(correct.float().mean().item(), 4),
        "val_scene_accuracy": round(correct.all(dim=1).float().mean().item(), 4),
    }
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        args.out.mkdir(parents=True, exist_ok=True)
        state = {f"vision.{k}": v.detach().cpu().contiguous() for k, v in vision.state_dict().items()}
        save_file(state, str(args.out / "model.safetensors"))
        (args.out / "config.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
