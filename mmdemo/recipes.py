"""Training recipes: the report's, and ours where we chose differently, one typed dataclass per trained model.

Every training script takes ``--recipe`` (default ``report``). A recipe fills in every setting the command line
leaves out; an option given on the command line always wins (``--recipe report --max-train-steps 10``).

* ``report`` is what the report trained, read from the report and its authors' code (data split and captions,
  resolution, augmentation, length, optimiser, schedule, batch and accumulation, precision, latents). Where the
  authors' code has a bug, the recipe does not copy it; the bugs are listed in the README section "How our
  recipes differ from the report's", next to the deviations that remain.
* ``ours`` is our own choice where we believe it is better (condition dropout so classifier-free guidance works,
  EMA, masked padding, fp32 master LoRA weights, ...). It is never called the report's. The shipped demo
  checkpoints were trained with it (plus the tiny-size overrides their model cards list).

The scripts record the recipe's name and every resolved setting in ``training_args.json``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

REPORT, OURS = "report", "ours"


@dataclass(frozen=True)
class DenoiserRecipe:
    """Settings shared by the two text-conditioned denoisers (pixel and latent diffusion).

    Args:
        max_images: train on the first N images of the folder (None: all of them).
        captions: ``"first"`` (each image's first caption) or ``"random"`` (a random one of its captions per draw).
        sampling: ``"epochs"`` (shuffled passes over the data, a short last batch, as a ``DataLoader`` with
            ``shuffle=True``) or ``"iid"`` (each batch drawn uniformly with replacement).
        epochs / max_train_steps: the run's length; ``max_train_steps`` wins when set, else
            ``epochs * ceil(images / global batch)`` optimiser steps.
        train_batch_size: per process.
        optimizer: ``"adam"`` or ``"adamw"`` (torch's), with ``learning_rate`` and ``weight_decay``.
        lr_schedule: ``"cosine"`` (linear warm-up over ``lr_warmup_steps``, then cosine to 0) or ``"constant"``.
        max_grad_norm: clip the gradient norm to this; 0 turns clipping off.
        mixed_precision: accelerate's ``"no"`` (fp32), ``"fp16"`` or ``"bf16"``.
        cond_dropout: fraction of captions replaced by "" (0: no unconditional training, so no guidance).
        use_ema / ema_decay: export an exponential moving average of the weights.
        resize: ``"squash"`` (the whole image resized to a square) or ``"crop"`` (centre square, then resize).
        hflip: random horizontal flips (pixel space only).
    """

    max_images: int | None
    captions: str
    sampling: str
    epochs: int | None
    max_train_steps: int | None
    train_batch_size: int
    optimizer: str
    learning_rate: float
    weight_decay: float
    lr_schedule: str
    lr_warmup_steps: int
    max_grad_norm: float
    mixed_precision: str
    cond_dropout: float
    use_ema: bool
    ema_decay: float
    resize: str
    hflip: bool


@dataclass(frozen=True)
class PixelDiffusionRecipe(DenoiserRecipe):
    """Pixel diffusion. ``cross_attention_mask``: hide the prompt's padding from cross-attention (stored in the
    model's config, so sampling does the same). The resolution is the config's ``sample_size`` (full: the
    report's 128)."""

    cross_attention_mask: bool


@dataclass(frozen=True)
class LatentDiffusionRecipe(DenoiserRecipe):
    """Latent diffusion, stage 2. ``latents``: ``"quantized"`` (the VQ-VAE's codebook vectors, what its
    ``encode`` returns in the report's code) or ``"continuous"`` (before quantisation); ``scale_latents``:
    multiply them by 1/std of the training set (unit variance, as Stable Diffusion does) or leave them as they are."""

    latents: str
    scale_latents: bool


@dataclass(frozen=True)
class VQVAERecipe:
    """Latent diffusion, stage 1 (the VQ-VAE and its PatchGAN).

    Args:
        max_images / resize / hflip / sampling: data, as in :class:`DenoiserRecipe`.
        train_batch_size / gradient_accumulation_steps: micro-batch per process, and micro-batches per update.
        epochs / max_train_steps: length; ``max_train_steps`` (optimiser updates) wins when set.
        learning_rate / adam_beta1 / adam_beta2: Adam for the autoencoder and the discriminator alike.
        max_grad_norm: 0 turns clipping off. mixed_precision: as for the denoisers.
        lpips_weight: weight of the LPIPS (VGG) perceptual loss.
        disc_loss: ``"lsgan"`` (least squares: D(real) -> 1, D(fake) -> 0, G: D(fake) -> 1) or ``"hinge"``.
        discriminator: ``"report"`` (three stride-2 4x4 convs 64/128/256 with BatchNorm after the first, then a
            4x4 conv to one logit, torch's default init) or ``"pix2pix"`` (the deeper NLayer PatchGAN, N(0, 0.02)).
        disc_start: optimiser update from which the adversarial losses are on. disc_weight: their weight (on the
            generator's loss and, as in the report, on the discriminator's).
    """

    max_images: int | None
    resize: str
    hflip: bool
    sampling: str
    train_batch_size: int
    gradient_accumulation_steps: int
    epochs: int | None
    max_train_steps: int | None
    learning_rate: float
    adam_beta1: float
    adam_beta2: float
    max_grad_norm: float
    mixed_precision: str
    lpips_weight: float
    disc_loss: str
    discriminator: str
    disc_start: int
    disc_weight: float


@dataclass(frozen=True)
class CaptionerRecipe:
    """The four captioners (one recipe; the report trained its captioners alike).

    Args:
        epochs / batch_size / lr / weight_decay / lr_step_epochs / lr_gamma / seed: Adam + StepLR, global batch.
        captions_per_image: training pairs per image (the first N captions).
        mixed_precision: ``"no"`` (fp32), ``"auto"`` (bf16 where the GPU has it), ``"fp16"``, ``"bf16"``.
        image_dropout: dropout on the projected image features the decoder attends to (cross-attention models).
        resize: image preprocessing of the cross-attention models, ``"squash"`` or ``"crop"`` (as above).
        prompt_format: how ``qformer-tinyllama`` tokenises its prompt and captions (``QFormerLlamaConfig``).
        max_caption_tokens: where the Q-Former captioners cut a training caption (in tokens).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_step_epochs: int
    lr_gamma: float
    seed: int
    captions_per_image: int
    mixed_precision: str
    image_dropout: float
    resize: str
    prompt_format: str
    max_caption_tokens: int


@dataclass(frozen=True)
class SDXLLoRARecipe:
    """SDXL LoRA. ``lora_dtype``: ``"fp32"`` (fp32 master LoRA weights and optimiser states under mixed
    precision) or ``"weight"`` (the LoRA weights in the base model's mixed-precision dtype, which is what the
    diffusers example does under bf16); ``vae_dtype``: ``"fp32"`` or ``"weight"`` (the mixed-precision dtype)."""

    lora_dtype: str
    vae_dtype: str


# ---------------------------------------------------------------------------------------------------- the values

PIXEL_DIFFUSION: dict[str, PixelDiffusionRecipe] = {
    # The report's train_my_diffusion.py: the LoRA folder (first 7000 images, first caption), Resize((128, 128))
    # + RandomHorizontalFlip, 5 epochs of 32 (1095 steps), AdamW 1e-4 (torch's weight decay 0.01), cosine with
    # 500 warm-up steps, clip 1.0, fp16, no condition dropout, no EMA, the padded prompt unmasked.
    REPORT: PixelDiffusionRecipe(
        max_images=7000, captions="first", sampling="epochs", epochs=5, max_train_steps=None, train_batch_size=32,
        optimizer="adamw", learning_rate=1e-4, weight_decay=0.01, lr_schedule="cosine", lr_warmup_steps=500,
        max_grad_norm=1.0, mixed_precision="fp16", cond_dropout=0.0, use_ema=False, ema_decay=0.999,
        resize="squash", hflip=True, cross_attention_mask=False,
    ),  # fmt: skip
    # Ours (the demo's): the same 7000 images (the test-prompt images stay unseen) with a random one of their
    # captions, 10 % condition dropout so guidance works, the padding masked, centre crops; 20 000 i.i.d. steps.
    OURS: PixelDiffusionRecipe(
        max_images=7000, captions="random", sampling="iid", epochs=None, max_train_steps=20000, train_batch_size=32,
        optimizer="adamw", learning_rate=1e-4, weight_decay=0.01, lr_schedule="cosine", lr_warmup_steps=500,
        max_grad_norm=1.0, mixed_precision="fp16", cond_dropout=0.1, use_ema=False, ema_decay=0.999,
        resize="crop", hflip=False, cross_attention_mask=True,
    ),  # fmt: skip
}

LATENT_DIFFUSION: dict[str, LatentDiffusionRecipe] = {
    # The report's train_ddpm_cond.py + flickr8k_text_cond.yaml: every image, a random one of its five captions,
    # 256 centre crop, no flip, Adam 5e-6 constant, no clipping, fp32, batch 16, 100 epochs (50 600 steps),
    # condition dropout 0.1, the quantised VQ-VAE latents without scaling.
    REPORT: LatentDiffusionRecipe(
        max_images=None, captions="random", sampling="epochs", epochs=100, max_train_steps=None, train_batch_size=16,
        optimizer="adam", learning_rate=5e-6, weight_decay=0.0, lr_schedule="constant", lr_warmup_steps=0,
        max_grad_norm=0.0, mixed_precision="no", cond_dropout=0.1, use_ema=False, ema_decay=0.999,
        resize="crop", hflip=False, latents="quantized", scale_latents=False,
    ),  # fmt: skip
    # Ours (the demo's): the pixel model's optimiser, continuous latents scaled to unit variance (as LDM and
    # Stable Diffusion train on them), 50 000 i.i.d. steps of 32; the first 7000 images only, so the test-prompt
    # images stay unseen (the report trained on all 8091).
    OURS: LatentDiffusionRecipe(
        max_images=7000, captions="random", sampling="iid", epochs=None, max_train_steps=50000, train_batch_size=32,
        optimizer="adamw", learning_rate=1e-4, weight_decay=0.01, lr_schedule="cosine", lr_warmup_steps=500,
        max_grad_norm=1.0, mixed_precision="fp16", cond_dropout=0.1, use_ema=False, ema_decay=0.999,
        resize="crop", hflip=False, latents="continuous", scale_latents=True,
    ),  # fmt: skip
}

VQVAE: dict[str, VQVAERecipe] = {
    # The report's train_vqvae.py + flickr8k.yaml: micro-batches of 8, 4 accumulated (32 per update), 60 epochs
    # (the report's text; 15 180 updates), Adam 1e-5 (0.5, 0.999), no clipping, fp32, no flip, LPIPS weight 1,
    # an LSGAN PatchGAN from micro-batch 15 000 (update 3750) with weight 0.5.
    REPORT: VQVAERecipe(
        max_images=None, resize="crop", hflip=False, sampling="epochs", train_batch_size=8,
        gradient_accumulation_steps=4, epochs=60, max_train_steps=None, learning_rate=1e-5, adam_beta1=0.5,
        adam_beta2=0.999, max_grad_norm=0.0, mixed_precision="no", lpips_weight=1.0, disc_loss="lsgan",
        discriminator="report", disc_start=3750, disc_weight=0.5,
    ),  # fmt: skip
    # Ours (the demo's): batches of 16 without accumulation, flips, clipping, a hinge loss on the deeper pix2pix
    # PatchGAN from update 15 000, 50 000 i.i.d. updates.
    OURS: VQVAERecipe(
        max_images=None, resize="crop", hflip=True, sampling="iid", train_batch_size=16,
        gradient_accumulation_steps=1, epochs=None, max_train_steps=50000, learning_rate=1e-5, adam_beta1=0.5,
        adam_beta2=0.999, max_grad_norm=1.0, mixed_precision="no", lpips_weight=1.0, disc_loss="hinge",
        discriminator="pix2pix", disc_start=15000, disc_weight=0.5,
    ),  # fmt: skip
}

CAPTIONER: dict[str, CaptionerRecipe] = {
    # The report's image2text main.py: Adam 1e-4, weight decay 1e-4, StepLR(30, 0.1) per epoch, 50 epochs,
    # batch 24, seed 2024, one caption per image, fp32, Dropout(0.2) on the projected image features,
    # Resize((224, 224)) (a squash); TinyLlama's prompt with <s> padded to 9 tokens, captions cut at 50 tokens.
    REPORT: CaptionerRecipe(
        epochs=50, batch_size=24, lr=1e-4, weight_decay=1e-4, lr_step_epochs=30, lr_gamma=0.1, seed=2024,
        captions_per_image=1, mixed_precision="no", image_dropout=0.2, resize="squash", prompt_format="report",
        max_caption_tokens=50,
    ),  # fmt: skip
    # Ours (the demos'): bf16 autocast where the GPU has it, no image-feature dropout, centre crops, the prompt
    # without special tokens or padding, captions cut at 40 tokens.
    OURS: CaptionerRecipe(
        epochs=50, batch_size=24, lr=1e-4, weight_decay=1e-4, lr_step_epochs=30, lr_gamma=0.1, seed=2024,
        captions_per_image=1, mixed_precision="auto", image_dropout=0.0, resize="crop", prompt_format="ours",
        max_caption_tokens=40,
    ),  # fmt: skip
}

SDXL_LORA: dict[str, SDXLLoRARecipe] = {
    # The diffusers example as the report ran it under bf16: the UNet is cast to bf16 before the adapter is
    # added, so the LoRA weights (and AdamW's states) are bf16; the VAE stays fp32.
    REPORT: SDXLLoRARecipe(lora_dtype="weight", vae_dtype="fp32"),
    # Ours: fp32 master LoRA weights (small late-cosine updates are not rounded away), VAE in the weight dtype.
    OURS: SDXLLoRARecipe(lora_dtype="fp32", vae_dtype="weight"),
}


# ---------------------------------------------------------------------------------------------------- command line


def recipe_fields(recipes: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(next(iter(recipes.values()))))


def add_recipe_argument(parser: argparse.ArgumentParser, recipes: Mapping[str, Any]) -> None:
    """``--recipe`` (default ``report``); every option named like a recipe field then defaults to the recipe."""
    parser.add_argument(
        "--recipe",
        choices=tuple(recipes),
        default=REPORT,
        help="training recipe: 'report' (the report's settings) or 'ours'; options given here override it",
    )
    names = set(recipe_fields(recipes))
    # SUPPRESS: an option left out leaves no attribute, so apply_recipe can tell "not given" from any value.
    # (Set on the actions themselves: ``set_defaults`` would also store it as a namespace-wide default.)
    for action in parser._actions:
        if action.dest in names:
            action.default = argparse.SUPPRESS


def apply_recipe(args: argparse.Namespace, recipes: Mapping[str, Any]) -> Any:
    """Fill every recipe setting the command line left out; returns the recipe with the command line applied."""
    recipe = recipes[args.recipe]
    for name in recipe_fields(recipes):
        if not hasattr(args, name):
            setattr(args, name, getattr(recipe, name))
    return replace(recipe, **{name: getattr(args, name) for name in recipe_fields(recipes)})


def steps_for_epochs(epochs: int, images: int, global_batch: int, accumulation: int = 1) -> int:
    """Optimiser updates of ``epochs`` passes over ``images`` in batches of ``global_batch`` (the last one short),
    ``accumulation`` batches per update."""
    return math.ceil(epochs * math.ceil(images / global_batch) / accumulation)
