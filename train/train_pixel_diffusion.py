"""Train our pixel-space diffusion model (``pixel-diffusion``) on a Flickr8k-layout folder.

``--recipe report`` (the default) is the report's run (its ``train_my_diffusion.py``): the report's
UNet2DConditionModel trained at 128x128 pixels (its listing's ``sample_size=64`` is metadata only), frozen
``bert-base-uncased`` + trainable Linear(768,512)/GELU/LayerNorm, text max length 24 with the padding **not**
masked, DDPM T=1000 with linear betas and epsilon prediction; the first 7000 images with their first caption
(the LoRA split: the other 1091 images are the test prompts), squashed to 128x128 with random horizontal flips;
5 shuffled epochs of batch 32 (1095 steps), AdamW lr 1e-4 (weight decay 0.01), cosine schedule with 500 warm-up
steps, grad clip 1.0, fp16 mixed precision, no condition dropout and no EMA. The report sampled without
guidance (the registry's "report" preset does too).

``--recipe ours`` (the demo's) adds 10 % condition dropout so classifier-free guidance works and masks the
padding, trains on the same 7000 images with a random one of their captions (centre crops, no flips), 20 000
steps.
Every setting of :mod:`mmdemo.recipes` can be overridden on the command line. What still differs from the
report's run, and the report-code bugs we do not copy (its frozen BERT left in dropout mode): README, "How our
recipes differ from the report's".

Full size on a GPU (after ``huggingface-cli download google-bert/bert-base-uncased --local-dir DIR``)::

    accelerate launch train/train_pixel_diffusion.py --data flickr8k/ --text-encoder DIR --output-dir out/pixel

The demo checkpoint (tiny config, CPU, see checkpoints/demo/pixel-diffusion/README.md)::

    python train/train_pixel_diffusion.py --config tiny --data runs/shapes32_single \
        --text-encoder runs/tiny-bert-shapes --output-dir runs/pixel --recipe ours --prediction-type v_prediction \
        --beta-schedule squaredcos_cap_v2 --use-ema --ema-decay 0.995 --learning-rate 1e-3 ...

Every ``--sample-every`` steps a loss-curve PNG and a sample-grid PNG are written; every
``--checkpointing-steps`` the full training state (``checkpoint-<step>/``); ``--resume-from-checkpoint latest``
continues from the newest one exactly where it stopped. The final model (``config.json``,
``model.safetensors``, ``text_encoder/``, ``tokenizer/``) is what ``mmdemo.load_generator`` reads.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from mmdemo.models.diffusion.pixel import PixelDiffusionConfig, PixelDiffusionModel
from mmdemo.models.diffusion.sampling import training_scheduler
from mmdemo.models.diffusion.text import encode_text, load_text_encoder, load_tokenizer
from mmdemo.models.diffusion.text_to_image import sample_images
from mmdemo.models.diffusion.training import (
    DenoiserTask,
    add_denoiser_arguments,
    check_denoiser_arguments,
    denoiser_config_values,
    export_text_to_image,
    load_captioned_images,
    sample_prompts,
    start_run,
    train_denoiser,
)
from mmdemo.recipes import PIXEL_DIFFUSION, apply_recipe
from mmdemo.registry import get_spec

logger = logging.getLogger(__name__)
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings")  # fmt: skip


def build_config(args: argparse.Namespace, text_encoder) -> PixelDiffusionConfig:
    """The registry's full or tiny config, with the command line's overrides applied."""
    spec = get_spec("pixel-diffusion")
    registry = spec.full_config if args.config == "full" else spec.tiny_config
    values = denoiser_config_values(args, registry, text_encoder, TEXT_CONFIG_KEYS)
    if args.resolution is not None:
        values["sample_size"] = args.resolution
    values["cross_attention_mask"] = args.cross_attention_mask  # training and sampling must agree
    return PixelDiffusionConfig.from_dict(values)


def export_model(model: PixelDiffusionModel, tokenizer, out: Path, *, fp16: bool) -> None:
    """Write the self-describing checkpoint the adapter loads (weights as they are in ``model`` now)."""
    export_text_to_image(model, model.denoiser.state_dict(), tokenizer, out, fp16=fp16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, required=True, help="folder with Images/ + captions.txt (Flickr8k or Shapes)"
    )
    p.add_argument(
        "--text-encoder",
        type=Path,
        required=True,
        help="folder of the frozen BERT (bert-base-uncased snapshot, or a tiny one we pretrained)",
    )
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument(
        "--config", choices=("full", "tiny"), default="full", help="registry configuration to train"
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="image side (default: the config's sample_size)"
    )
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    p.add_argument(
        "--cross-attention-mask", action=argparse.BooleanOptionalAction, help="hide the prompt's padding"
    )
    add_denoiser_arguments(p, PIXEL_DIFFUSION)
    args = p.parse_args(argv)
    apply_recipe(args, PIXEL_DIFFUSION)
    check_denoiser_arguments(args)
    if not (args.text_encoder / "config.json").is_file():
        raise ValueError(
            f"{args.text_encoder} holds no text encoder (config.json); download bert-base-uncased with "
            "`huggingface-cli download google-bert/bert-base-uncased --local-dir DIR` or pretrain a tiny one with "
            "train/pretrain_tiny_text_encoder.py --kind bert"
        )
    return args


def main(args: argparse.Namespace) -> dict:
    accelerator = start_run(args.mixed_precision, args.output_dir)
    device = accelerator.device
    text_encoder = load_text_encoder("bert", args.text_encoder)
    config = build_config(args, text_encoder)
    tokenizer = load_tokenizer(args.text_encoder, config.text_max_length)
    torch.manual_seed(args.seed)  # the UNet's initial weights
    model = PixelDiffusionModel(config, text_encoder).to(device)
    data = load_captioned_images(args.data, config.sample_size, args.max_images, resize=args.resize)

    def encode(captions: list[str]):
        return encode_text(tokenizer, text_encoder, captions, config.text_max_length, device)

    def sample(prompts: list[str]) -> list:
        return sample_images(model, tokenizer, prompts, seed=0, steps=args.sample_steps, guidance=args.guidance,
                             preset="fast").images  # fmt: skip

    task = DenoiserTask(
        title="pixel diffusion",
        config=config,
        denoiser=model.denoiser,
        clean=data.images,
        captions=data.captions,
        noise_scheduler=training_scheduler(config, clip_sample=True),
        encode=encode,
        predict=lambda net, noisy, t, text: net(noisy, t, text.hidden, text.attention_mask),
        sample=sample,
        export=lambda folder: export_model(model, tokenizer, folder, fp16=args.save_fp16),
        hflip=args.hflip,
    )
    return train_denoiser(args, accelerator, task, sample_prompts(data))


if __name__ == "__main__":
    main(parse_args())
