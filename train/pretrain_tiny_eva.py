"""Pretrain the tiny BLIP-2 vision encoder (``eva-vit-tiny``) that the Q-Former demos keep frozen.

The real Q-Former captioners freeze EVA-CLIP ViT-g/14, pretrained elsewhere. Offline there is none, so the
demo follows the recipe at tiny scale: a ``Blip2VisionModel`` of the ``eva-vit-tiny`` preset
(``mmdemo/models/qformer/network.py``) is trained here to *recognise* Shapes scenes from ``scenes.jsonl`` (for
each of the five positions: which colour, shape and size is there, or nothing; and the background), on the
report split's training images only and never on captions. Then
``train/train_captioner.py --model qformer-bert --size tiny --init-dir OUT`` loads and freezes it.

    python train/pretrain_tiny_eva.py --data runs/shapes_s1_n6000 --out runs/qformer_vit

Writes ``OUT/config.json`` (preset, accuracies on held-out training-split images) and
``OUT/model.safetensors`` (keys ``vision_model.*``, the captioner's own names), ``loss_curve.png`` and
``state/`` (``--resume-from-checkpoint latest`` continues at the exact next step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.models.qformer.network import VISION_PRESETS, _pil_to_tensor, vision_config
from mmdemo.training import (
    add_step_loop_arguments,
    check_at_least_one,
    make_accelerator,
    recent_loss,
    run_steps,
    script_parser,
    set_threads,
    step_rows,
)
from mmdemo.training.plots import Curve, plot_loss_curves


def scene_targets(scenes: list) -> tuple[torch.Tensor, list[int]]:
    """(N, 5 * 3 + 1) class ids (per position: colour, shape, size or none; then the background), class counts."""
    from mmdemo.data.shapes import LABELLED_ATTRIBUTES, POSITIONS, scene_labels

    rows, classes = scene_labels(scenes)
    return torch.tensor(rows), [len(classes[a]) for a in LABELLED_ATTRIBUTES] * len(POSITIONS) + [len(classes["bg"])]


class SceneProbe(nn.Module):
    """ViT tokens (after the output LayerNorm) -> one classifier per position attribute and the background."""

    def __init__(self, vision: nn.Module, tokens: int, width: int, sizes: list[int]):
        super().__init__()
        self.vision_model = vision
        self.sizes = sizes
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(tokens * width, 256), nn.GELU(), nn.Linear(256, sum(sizes))
        )

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.vision_model(pixel_values=pixels).last_hidden_state  # (B, 1 + patches, width)
        return list(self.head(hidden).split(self.sizes, dim=-1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--data", type=Path, required=True, help="Shapes folder (Images/, captions.txt, scenes.jsonl)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--vision", default="eva-vit-tiny", choices=[k for k in VISION_PRESETS if k.endswith("tiny")]
    )
    add_step_loop_arguments(parser, steps=1200, batch_size=64, lr=1e-3, checkpointing_steps=200)
    args = parser.parse_args(argv)
    if not (args.data / "scenes.jsonl").is_file():
        raise ValueError(
            f"{args.data} has no scenes.jsonl; write a Shapes folder with python -m mmdemo.data.shapes"
        )
    check_at_least_one(args, ("steps", "batch_size", "checkpointing_steps"))
    if args.lr <= 0:
        raise ValueError("--lr must be > 0")
    return args


def main(args: argparse.Namespace) -> dict:
    from accelerate.utils import set_seed
    from transformers import Blip2VisionModel

    from mmdemo.data.flickr8k import captioning_split, load_flickr8k
    from mmdemo.data.shapes import load_scenes

    set_threads()
    accelerator = make_accelerator()
    set_seed(args.seed)
    corpus = load_flickr8k(args.data)
    scenes = load_scenes(args.data)
    train, _ = captioning_split(corpus)  # the captioners' validation images stay unseen
    names = [p.image for p in train]
    targets, sizes = scene_targets([scenes[n] for n in names])
    size = VISION_PRESETS[args.vision]["image_size"]
    pixels = torch.cat([_pil_to_tensor([corpus.open_image(n) for n in names[i : i + 256]], size)
                        for i in range(0, len(names), 256)])  # fmt: skip
    n_held = max(1, len(names) // 10)  # accuracy check on held-out training-split images
    vision = Blip2VisionModel(vision_config(args.vision))
    cfg = vision.config
    probe = SceneProbe(vision, (cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size, sizes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=0.01)
    probe, optimizer = accelerator.prepare(probe, optimizer)
    train_rows = torch.arange(n_held, len(names))

    def train_step(step: int) -> torch.Tensor:
        rows = train_rows[step_rows(len(train_rows), step, args.batch_size, args.seed, accelerator)]
        logits = probe(pixels[rows].to(accelerator.device))
        target = targets[rows].to(accelerator.device)
        loss = sum(F.cross_entropy(lg, target[:, j]) for j, lg in enumerate(logits)) / len(logits)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    probe.train()
    state, start = run_steps(accelerator, args, "tiny ViT", train_step)
    probe.eval()
    with torch.no_grad():
        logits = probe(pixels[:n_held].to(accelerator.device))
    correct = torch.stack([lg.argmax(-1).cpu() == targets[:n_held, j] for j, lg in enumerate(logits)], dim=1)
    result = {
        "vision": args.vision,
        "image_size": size,
        "data": str(args.data),
        "seed": args.seed,
        "steps": state["global_step"],
        "final_loss": recent_loss(state["history"], 20),
        "held_out_attribute_accuracy": round(correct.float().mean().item(), 4),
        "held_out_scene_accuracy": round(correct.all(dim=1).float().mean().item(), 4),
        "minutes_this_run": round((time.time() - start) / 60, 2),
    }
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        unwrapped = accelerator.unwrap_model(probe)
        state_dict = {
            f"vision_model.{k}": v.detach().cpu().contiguous()
            for k, v in unwrapped.vision_model.state_dict().items()
        }
        save_file(state_dict, str(args.out / "model.safetensors"))
        (args.out / "config.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_loss_curves(
            args.out / "loss_curve.png",
            [Curve("train", *zip(*state["history"]), smooth=False)] if state["history"] else [],
            ylabel="mean attribute cross-entropy",
            title="tiny EVA ViT pretraining on Shapes scenes",
        )
        print(json.dumps(result))
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
