"""Pretrain a tiny frozen-to-be text encoder on Shapes captions, standing in for BERT or CLIP's text tower.

Our diffusion models condition on *pretrained, frozen* encoders (``bert-base-uncased``, CLIP ViT-B/16's text
tower). Those cannot be downloaded here, so the demo checkpoints use the same classes at tiny size, first
pretrained the way the real ones were, on Shapes captions:

* ``--kind bert``: ``BertForMaskedLM`` with masked-language modelling (15 % of tokens: 80 % ``[MASK]``,
  10 % random, 10 % kept); the ``BertModel`` trunk is saved. ``--contrastive-weight w`` adds w x the
  InfoNCE loss below on the mean token state: 300 MLM-only steps left a tiny BERT whose states for "a red
  circle" and "a blue circle" had cosine 0.995 (real BERT's 110M parameters and corpus don't have this
  problem), and a diffusion model conditioned on it never learned colours in 640 steps; grounded, it did.
* ``--kind clip``: ``CLIPTextModel`` trained contrastively (InfoNCE, learnable temperature) against a small
  convolutional image tower on the Shapes pictures; only the text tower is saved. Give it time: after 250
  steps the image tower could not yet tell circles from squares, so InfoNCE had pulled the two words
  together (cosine 0.97 in ``closest_shapes``) and the latent model drew squares as circles; 3000 steps
  (3 CPU minutes) bring that to 0.28.

The summary (``pretrain_summary.json``) records the closest pair of shape words and of colour words in the
encoder's states (``closest_shapes``, ``closest_colours``): what a generator conditioned on it can tell apart.

Output: a folder ``from_pretrained`` reads (``config.json`` + ``model.safetensors`` + tokenizer files)::

    python train/pretrain_tiny_text_encoder.py --kind bert --data runs/shapes32_single --out runs/tiny-bert
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdemo.data.shapes import COLORS, SHAPES
from mmdemo.models.diffusion.text import (
    build_tiny_bert_tokenizer,
    build_tiny_clip_tokenizer,
    closest_word_pair,
)
from mmdemo.models.diffusion.training import (
    cosine_with_warmup,
    load_captioned_images,
    plot_curves,
    step_generator,
)
from mmdemo.training import set_threads

logger = logging.getLogger(__name__)


class TinyImageTower(nn.Module):
    """Four stride-2 convolutions and a mean pool: enough to tell Shapes colours, shapes and places apart."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(4):
            layers += [nn.Conv2d(channels, width * (1 + i // 2), 3, stride=2, padding=1), nn.GELU()]
            channels = width * (1 + i // 2)
        self.convs = nn.Sequential(*layers)
        # Position matters for Shapes, so the pooled vector keeps a coarse 2x2 layout instead of a global mean.
        self.proj = nn.Linear(channels * 4, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(self.convs(images), 2).flatten(1)  # (B, C * 4)
        return self.proj(features)


def contrastive_loss(extra: nn.Module, text_vectors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between projected text vectors and the image tower's embeddings.

    Captions of the same scene are all positives of each other's images; a scene rarely repeats in a batch of 64
    out of thousands, and when it does the loss only gets a little noisier.
    """
    text = F.normalize(extra["text_proj"](text_vectors), dim=-1)
    image = F.normalize(extra["image"](images), dim=-1)
    logits = extra.logit_scale.exp().clamp(max=100) * text @ image.T
    target = torch.arange(len(text), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def mask_tokens(input_ids: torch.Tensor, tokenizer, generator: torch.Generator, special: torch.Tensor):
    """BERT's MLM corruption; labels are -100 except at the chosen positions."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < 0.15) & ~special
    labels[~chosen] = -100
    corrupted = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    corrupted[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[swap] = random_ids[swap]
    return corrupted, labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("bert", "clip"), required=True)
    parser.add_argument("--data", type=Path, required=True, help="Flickr8k-layout folder (Shapes)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=None, help="default: 24 (bert), 32 (clip)")
    parser.add_argument("--resolution", type=int, default=32, help="image side for the CLIP image tower")
    parser.add_argument(
        "--contrastive-weight",
        type=float,
        default=0.0,
        help="bert only: add this much image-text InfoNCE on the mean token state to MLM",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:
        raise ValueError("--steps must be >= 1 and --batch-size >= 2 (contrastive learning needs pairs)")
    if args.hidden % args.heads:
        raise ValueError(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if not (args.data / "captions.txt").is_file():
        raise ValueError(
            f"{args.data}/captions.txt not found; write Shapes with `python -m mmdemo.data.shapes`"
        )
    args.max_length = args.max_length or (24 if args.kind == "bert" else 32)
    return args


def main(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    set_threads()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = Accelerator()
    torch.manual_seed(args.seed)
    data = load_captioned_images(args.data, args.resolution)
    all_captions = [c for caps in data.captions for c in caps]
    if args.kind == "bert":
        from transformers import BertConfig, BertForMaskedLM

        tokenizer = build_tiny_bert_tokenizer(all_captions, args.max_length)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, intermediate_size=2 * args.hidden,
            max_position_embeddings=max(32, args.max_length),
        )  # fmt: skip
        model: nn.Module = BertForMaskedLM(config)
        extra: nn.Module = nn.ModuleDict(
            {
                "image": TinyImageTower(32, args.hidden),
                "text_proj": nn.Linear(args.hidden, args.hidden, bias=False),
            }
        )
        extra.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = build_tiny_clip_tokenizer(all_captions, max_length=args.max_length)
        config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, intermediate_size=2 * args.hidden,
            max_position_embeddings=args.max_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=args.hidden,
        )  # fmt: skip
        model = CLIPTextModel(config)
        extra = nn.ModuleDict(
            {
                "image": TinyImageTower(32, args.hidden),
                "text_proj": nn.Linear(args.hidden, args.hidden, bias=False),
            }
        )
        extra.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    params = [*model.parameters(), *extra.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    lr_scheduler = cosine_with_warmup(optimizer, warmup=min(50, args.steps // 10), total=args.steps)
    model, extra, optimizer, lr_scheduler = accelerator.prepare(model, extra, optimizer, lr_scheduler)
    history = []
    bar = tqdm(range(args.steps), disable=not accelerator.is_local_main_process, desc=f"tiny {args.kind}")
    for step in bar:
        generator = step_generator(args.seed, step, accelerator.process_index)
        index = torch.randint(len(data), (args.batch_size,), generator=generator)
        which = torch.randint(5, (args.batch_size,), generator=generator).tolist()
        captions = [data.captions[i][k % len(data.captions[i])] for i, k in zip(index.tolist(), which)]
        batch = tokenizer(
            captions, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device)
        if args.kind == "bert":
            special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
            corrupted, labels = mask_tokens(batch["input_ids"], tokenizer, generator, special)
            loss = model(
                input_ids=corrupted.to(ids.device), attention_mask=mask, labels=labels.to(ids.device)
            ).loss
            if args.contrastive_weight > 0:
                # Grounding: the mean token state of the clean caption must pick out its picture (InfoNCE).
                # Without it a tiny MLM-only BERT's token states hardly differ between "red" and "blue"
                # captions (cosine 0.995), which a frozen conditioning encoder cannot afford.
                states = (
                    accelerator.unwrap_model(model).bert(input_ids=ids, attention_mask=mask).last_hidden_state
                )
                pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                loss = loss + args.contrastive_weight * contrastive_loss(
                    accelerator.unwrap_model(extra), pooled, data.images[index].to(ids.device)
                )
        else:
            images = data.images[index].to(accelerator.device)
            pooled = model(input_ids=ids, attention_mask=mask).pooler_output
            loss = contrastive_loss(accelerator.unwrap_model(extra), pooled, images)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        history.append({"step": step, "loss": float(loss.detach())})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    trunk = accelerator.unwrap_model(model)
    trunk = trunk.bert if args.kind == "bert" else trunk
    trunk.eval()
    # What a generator conditioned on this encoder can tell apart (lower is better; see closest_word_pair).
    closest_shapes = closest_word_pair(tokenizer, trunk, SHAPES, args.max_length)
    closest_colours = closest_word_pair(tokenizer, trunk, list(COLORS), args.max_length, "a large {} circle")
    summary = {
        "kind": args.kind,
        "steps": args.steps,
        "final_loss": sum(h["loss"] for h in history[-50:]) / len(history[-50:]),
        "closest_shapes": [round(closest_shapes[0], 3), *closest_shapes[1]],
        "closest_colours": [round(closest_colours[0], 3), *closest_colours[1]],
    }
    if accelerator.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        trunk.save_pretrained(args.out, safe_serialization=True)
        tokenizer.save_pretrained(args.out)
        plot_curves(history, args.out / "loss.png", title=f"tiny {args.kind} pretraining")
        (args.out / "pretrain_summary.json").write_text(
            json.dumps({**{k: str(v) for k, v in vars(args).items()}, **summary}, indent=1)
        )
        logger.info(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_args())
