"""Pretrain the tiny Llama language model that ``qformer-tinyllama``'s offline demo keeps frozen.

The real model freezes TinyLlama-1.1B-Chat, pretrained elsewhere. Offline there is none, so the demo follows
the recipe at tiny scale: a ``LlamaForCausalLM`` of the ``tiny-llama-shapes`` preset
(``mmdemo/models/qformer/network.py``) and a Llama-style BPE tokenizer are trained here on the *training* captions
of a Shapes folder (the report's 80 % image split, all five captions per image; validation images are never
seen), then ``train/train_captioner.py --model qformer-tinyllama --size tiny --init-dir INIT`` loads it from
``INIT/llm/`` and freezes it.

    python train/pretrain_tiny_lm.py --data runs/shapes_s1_n6000 --out runs/qformer_init/llm

Sequences are ``[prompt] BOS [context] caption "\\n"``; the loss covers the caption and its "\\n" only.
``prompt`` (the captioner's, with probability ``--prompt-fraction``) lets the LM see the instruction it will be
given, as TinyLlama-Chat had seen instructions. ``context`` (with probability ``--context-fraction``) is
*another* caption of the same picture, so the LM learns what a real pretrained LLM brings to BLIP-2 and a
caption-only tiny LM lacks: reading facts from the positions before the caption (in-context use) instead of
ignoring them. It never sees an image; in the captioner the projected queries take the context's place.
Without it (``--context-fraction 0``) the frozen tiny LM ignored the queries: every picture got the same caption.

Writes ``OUT/config.json`` + ``OUT/model.safetensors`` (``LlamaForCausalLM.save_pretrained``), the tokenizer
files, ``loss_curve.png``, ``train_log.json`` and ``state/`` (``--resume-from-checkpoint latest`` continues at
the exact next step).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from mmdemo.models.qformer.network import LLM_PRESETS, REPORT_PROMPT, build_shapes_bpe, llm_config
from mmdemo.training import (
    add_step_loop_arguments,
    check_at_least_one,
    check_captions_folder,
    make_accelerator,
    recent_loss,
    run_steps,
    script_parser,
    set_threads,
    step_rows,
)
from mmdemo.training.plots import Curve, plot_loss_curves


def training_captions(data: Path) -> list[list[str]]:
    """The captions of each training image of the report split (validation images stay unseen)."""
    from mmdemo.data.flickr8k import captioning_split, load_flickr8k

    corpus = load_flickr8k(data)
    train, _ = captioning_split(corpus)
    return [corpus.captions[pair.image] for pair in train]


def make_batch(
    tokenizer, captions: list[str], prompts: list[bool], contexts: list[str | None], max_tokens: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``[prompt] BOS [context] caption \\n`` ids with labels on caption tokens only."""
    prompt_ids = tokenizer(REPORT_PROMPT, add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for caption, with_prompt, context in zip(captions, prompts, contexts):
        body = tokenizer(caption.strip() + "\n", add_special_tokens=False)["input_ids"][:max_tokens]
        head = (prompt_ids if with_prompt else []) + [tokenizer.bos_token_id]
        if context:
            head = head + tokenizer(context.strip(), add_special_tokens=False)["input_ids"][:max_tokens]
        rows.append(head + body)
        labels.append([-100] * len(head) + body)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    target = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)], target[i, : len(row)], mask[i, : len(row)] = (
            torch.tensor(row),
            torch.tensor(label),
            1,
        )
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="Shapes folder (captions.txt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--llm", default="tiny-llama-shapes", choices=[k for k in LLM_PRESETS if k.startswith("tiny")]
    )
    add_step_loop_arguments(parser, steps=1500, batch_size=64, lr=2e-3, checkpointing_steps=250)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--prompt-fraction", type=float, default=0.5)
    parser.add_argument(
        "--context-fraction", type=float, default=0.75, help="share of sequences with a context"
    )
    parser.add_argument("--max-caption-tokens", type=int, default=40)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    args = parser.parse_args(argv)
    check_captions_folder(args.data)
    check_at_least_one(args, ("steps", "batch_size", "checkpointing_steps", "max_caption_tokens"))
    if not (0.0 <= args.prompt_fraction <= 1.0 and 0.0 <= args.context_fraction <= 1.0):
        raise ValueError("--prompt-fraction and --context-fraction must be between 0 and 1")
    if args.lr <= 0 or args.warmup_steps < 0:
        raise ValueError("--lr must be > 0 and --warmup-steps >= 0")
    return args


def main(args: argparse.Namespace) -> dict:
    from accelerate.utils import set_seed
    from transformers import LlamaForCausalLM


    set_threads()
    accelerator = make_accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    groups = training_captions(args.data)
    # (image, caption) pairs: every caption is a target; its context is drawn from the same image's others.
    pairs = [(g, i) for g in range(len(groups)) for i in range(len(groups[g]))]
    captions = [groups[g][i] for g, i in pairs]
    vocab_size = LLM_PRESETS[args.llm]["vocab_size"]
    # The tokenizer is a pure function of the captions, so a resumed run rebuilds the same one.
    tokenizer = build_shapes_bpe(captions, vocab_size=vocab_size)
    model = LlamaForCausalLM(llm_config(args.llm))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # The batch is split over processes, so the schedule advances once per global step: it is stepped by us
    # and only registered for checkpointing (prepare() would step it once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    def train_step(step: int) -> torch.Tensor:
        rows = step_rows(len(captions), step, args.batch_size, args.seed, accelerator).tolist()
        coin = random.Random(args.seed * 1_000_003 + step)
        prompts = [coin.random() < args.prompt_fraction for _ in rows]
        contexts = []
        for i in rows:
            group, own = pairs[i]
            others = [c for j, c in enumerate(groups[group]) if j != own]
            contexts.append(coin.choice(others) if others and coin.random() < args.context_fraction else None)
        batch = make_batch(tokenizer, [captions[i] for i in rows], prompts, contexts, args.max_caption_tokens)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    model.train()
    state, start = run_steps(accelerator, args, "tiny LM", train_step)
    result = {
        "llm": args.llm,
        "data": str(args.data),
        "seed": args.seed,
        "steps": state["global_step"],
        "train_captions": len(captions),
        "tokenizer_entries": len(tokenizer),
        "final_loss": recent_loss(state["history"], 50),
        "minutes_this_run": round((time.time() - start) / 60, 2),
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(args.out))
        tokenizer.save_pretrained(str(args.out))
        plot_loss_curves(
            args.out / "loss_curve.png",
            [Curve("train", *zip(*state["history"]), smooth=False)] if state["history"] else [],
            ylabel="LM loss (caption tokens)",
            title="tiny Llama pretraining on Shapes captions",
        )
        (args.out / "train_log.json").write_text(json.dumps({**result, "history": state["history"]}) + "\n")
        print(json.dumps(result))
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
