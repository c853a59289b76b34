"""Train our LoRA for Stable Diffusion XL on Flickr8k (or any captioned image folder).

The defaults are the course report's settings (its ``finetune_diffusion.sh`` running diffusers'
``train_text_to_image_lora_sdxl.py``): resolution 512, center crop, random flip, batch 16, 1000 steps, AdamW
lr 1e-4 (weight decay 1e-2), cosine schedule without warm-up, max grad norm 1, rank 128 on the UNet attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), bf16 mixed precision where the device has it, a
checkpoint every 100 steps, seed 1337. The VAE and both text encoders stay frozen; only the LoRA learns.

``--recipe report`` (the default) also keeps the example's precision: it casts the UNet to bf16 before adding
the adapter, so the LoRA weights and AdamW's states are bf16 (the example casts them to fp32 only under fp16),
and it encodes with an fp32 VAE. ``--recipe ours`` keeps fp32 master LoRA weights (bf16 rounds away the small
updates late in the cosine schedule) and runs the VAE in the mixed-precision dtype. See :mod:`mmdemo.recipes`
and the README, "How our recipes differ from the report's".

Data (``--data DIR``), either

* a Flickr8k folder in the Kaggle layout (``Images/`` + ``captions.txt``): the report's LoRA split, the first
  7000 images with their first caption (``mmdemo.data.flickr8k.text_to_image_split``); or
* any image folder with ``metadata.csv`` (``file_name,text``), diffusers' ImageFolder convention.

Output: ``OUT/pytorch_lora_weights.safetensors`` in diffusers' LoRA format (``pipe.load_lora_weights(OUT)``),
``OUT/config.json``, ``OUT/loss.json`` + ``OUT/loss_curve.png``, and ``OUT/checkpoint-<step>/`` folders the run
resumes from after an interruption (same batches, same noise: a resumed run equals an uninterrupted one).

    accelerate launch train/train_sdxl_lora.py --data /data/flickr8k --out runs/sdxl-lora --cache-latents
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmdemo.models.sdxl.config import LORA_TARGET_MODULES, LORA_WEIGHT_NAME, lora_config
from mmdemo.models.sdxl.training import encode_tokens, tokenize
from mmdemo.recipes import SDXL_LORA, add_recipe_argument, apply_recipe
from mmdemo.training.checkpoints import last_checkpoint, prune_checkpoints
from mmdemo.training.plots import Curve, plot_loss_curves

DEFAULT_PRETRAINED = "stabilityai/stable-diffusion-xl-base-1.0"
METADATA_FILE = "metadata.csv"


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Example:
    path: Path
    text: str


def read_examples(data: Path) -> list[Example]:
    """(image file, caption) pairs of ``data``: ``metadata.csv`` if present, else the Flickr8k LoRA split."""
    metadata = data / METADATA_FILE
    if metadata.is_file():
        with metadata.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
                raise ValueError(f"{metadata} needs the columns file_name,text; found {reader.fieldnames}")
            examples = [Example(data / row["file_name"], row["text"].strip()) for row in reader]
    elif (data / "captions.txt").is_file():
        from mmdemo.data.flickr8k import load_flickr8k, text_to_image_split

        corpus = load_flickr8k(data)
        train, _ = text_to_image_split(corpus)
        examples = [Example(corpus.image_path(pair.image), pair.caption) for pair in train]
    else:
        raise ValueError(
            f"--data {data} has neither {METADATA_FILE} (file_name,text) nor captions.txt (Flickr8k layout)"
        )
    if not examples:
        raise ValueError(f"--data {data} lists no images")
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) listed in {data} are missing, e.g. {missing[0]}")
    return examples


def load_picture(
    path: Path, resolution: int, center_crop: bool, flip: bool, rng: random.Random
) -> dict[str, Any]:
    """Resize the short side to ``resolution``, crop a square, maybe flip; with SDXL's size/crop conditioning."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    if center_crop:
        top, left = (image.height - resolution) // 2, (image.width - resolution) // 2
    else:
        top, left = rng.randint(0, image.height - resolution), rng.randint(0, image.width - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        left = size[0] - left - resolution  # the crop as seen in the flipped picture
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    time_ids = torch.tensor([*original, top, left, resolution, resolution], dtype=torch.float32)
    return {"pixels": pixels, "time_ids": time_ids}


def batch_indices(step: int, n: int, batch_size: int, world: int, rank: int, seed: int) -> list[int]:
    """The examples of ``step`` on process ``rank``: a pure function of the step, so resuming repeats nothing.

    Each epoch is a seeded permutation; a global batch of ``batch_size * world`` examples is cut from it in order
    (wrapping into the next epoch), and each process takes its own slice.
    """
    global_batch = batch_size * world
    out = []
    for k in range(step * global_batch + rank * batch_size, step * global_batch + (rank + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = _permutation(n, seed + epoch)
        out.append(perm[pos])
    return out


_PERMS: dict[tuple[int, int], list[int]] = {}


def _permutation(n: int, seed: int) -> list[int]:
    if (n, seed) not in _PERMS:
        _PERMS.clear()
        _PERMS[(n, seed)] = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return _PERMS[(n, seed)]


# ---------------------------------------------------------------------------------------------- model


def weights_variant(pretrained: str) -> str | None:
    """``"fp16"`` for a local folder that holds only the Hub's fp16 files (what the app's registry downloads)."""
    unet = Path(pretrained) / "unet"
    fp16_only = (unet / "diffusion_pytorch_model.fp16.safetensors").is_file() and not (
        unet / "diffusion_pytorch_model.safetensors"
    ).is_file()
    return "fp16" if fp16_only else None


def load_components(pretrained: str, weight_dtype: torch.dtype, vae_fp32: bool = False) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    variant = weights_variant(pretrained)

    parts: dict[str, Any] = {
        "tokenizer": CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer_2"),
        "text_encoder": CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
            pretrained, subfolder="text_encoder_2", variant=variant
        ),
        "vae": AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant),
        "unet": UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant),
        # Training noise follows the pipeline's own schedule and prediction type (epsilon for SDXL).
        "noise_scheduler": DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler"),
    }
    for name in ("text_encoder", "text_encoder_2", "vae", "unet"):
        parts[name].requires_grad_(False)
        parts[name].eval()
    # SDXL's VAE overflows in fp16 (its config says force_upcast): keep it in fp32 then, or when asked to.
    fp16_overflow = parts["vae"].config.force_upcast and weight_dtype == torch.float16
    vae_dtype = torch.float32 if vae_fp32 or fp16_overflow else weight_dtype
    parts["vae"].to(dtype=vae_dtype)
    for name in ("text_encoder", "text_encoder_2", "unet"):
        parts[name].to(dtype=weight_dtype)
    return parts


def save_lora(unet: Any, folder: Path, rank: int) -> Path:
    """``folder/pytorch_lora_weights.safetensors`` in diffusers' format, via the pipeline's own writer."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=state, unet_lora_adapter_metadata=lora_config(rank).to_dict()
    )
    return folder / LORA_WEIGHT_NAME


def load_lora_into(unet: Any, folder: Path) -> None:
    """Inverse of :func:`save_lora` for a peft-wrapped UNet (resuming): every LoRA tensor must match."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionXLPipeline.lora_state_dict(str(folder), weight_name=LORA_WEIGHT_NAME)
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {folder} has LoRA keys this UNet lacks: {result.unexpected_keys[:5]}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"checkpoint {folder} lacks LoRA keys: {missing[:5]}")


# ---------------------------------------------------------------------------------------------- caching


@torch.no_grad()
def encode_text_batch(
    parts: dict[str, Any], texts: list[str], device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    ids_1 = tokenize(parts["tokenizer"], texts).to(device)
    ids_2 = tokenize(parts["tokenizer_2"], texts).to(device)
    return encode_tokens(parts["text_encoder"], parts["text_encoder_2"], ids_1, ids_2)


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    pixels = pixels.to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample(generator)
    return latents * vae.config.scaling_factor


def build_cache(
    parts: dict[str, Any], examples: list[Example], args: argparse.Namespace, device: Any
) -> dict:
    """Latents (both orientations when flipping) and text embeddings of every example, computed once.

    With a center crop every picture has one latent per orientation, so a cached step sees exactly the pixels an
    uncached step would; the latent is the distribution's mean (no per-step VAE sampling noise).
    """
    from tqdm.auto import tqdm

    cache: dict[str, list[torch.Tensor]] = {
        "latents": [],
        "latents_flipped": [],
        "time_ids": [],
        "time_ids_flipped": [],
    }
    cache.update({"embeds": [], "pooled": []})
    rng = random.Random(0)
    vae = parts["vae"]
    for start in tqdm(
        range(0, len(examples), args.cache_batch_size), desc="caching", disable=not args.progress
    ):
        chunk = examples[start : start + args.cache_batch_size]
        for flipped in (False, True) if args.random_flip else (False,):
            items = [load_picture(e.path, args.resolution, True, flipped, rng) for e in chunk]
            pixels = torch.stack([i["pixels"] for i in items]).to(vae.device, vae.dtype)
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            suffix = "_flipped" if flipped else ""
            cache["latents" + suffix].append(latents.to("cpu", torch.float16))
            cache["time_ids" + suffix].append(torch.stack([i["time_ids"] for i in items]))
        embeds, pooled = encode_text_batch(parts, [e.text for e in chunk], device)
        cache["embeds"].append(embeds.to("cpu", torch.float16))
        cache["pooled"].append(pooled.to("cpu", torch.float16))
    return {k: torch.cat(v) for k, v in cache.items() if v}


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="Flickr8k folder or image folder with metadata.csv"
    )
    parser.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="SDXL pipeline folder or Hub id")
    parser.add_argument("--out", type=Path, default=Path("runs/sdxl-lora"), help="output folder")
    parser.add_argument("--base-model-id", default="sdxl-base", help="registry id written to config.json")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--random-flip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=16, help="per device")
    parser.add_argument("--max-train-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-scheduler", default="cosine", help="any diffusers get_scheduler name")
    parser.add_argument("--lr-warmup-steps", type=int, default=0)
    parser.add_argument("--adam-weight-decay", type=float, default=1e-2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument(
        "--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
        help="auto: bf16 where the GPU supports it, else no",
    )  # fmt: skip
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute UNet activations: less memory, ~30 %% slower",
    )
    parser.add_argument(
        "--cond-dropout", type=float, default=0.0,
        help="fraction of captions replaced by zero embeddings (the report used none)",
    )  # fmt: skip
    parser.add_argument("--checkpointing-steps", type=int, default=100)
    parser.add_argument("--checkpoints-total-limit", type=int, default=None, help="keep only the newest N")
    parser.add_argument("--resume", default="latest", help="'latest', 'none' or a checkpoint folder")
    parser.add_argument(
        "--stop-after", type=int, default=None,
        help="end this run after N steps (time-boxed or preemptible jobs); rerun to resume",
    )  # fmt: skip
    parser.add_argument("--cache-latents", action="store_true", help="cache VAE latents and text embeddings")
    parser.add_argument("--cache-batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    parser.add_argument(
        "--lora-dtype", choices=("fp32", "weight"),
        help="fp32 master LoRA weights, or the mixed-precision dtype (fp16 always gets fp32)",
    )  # fmt: skip
    parser.add_argument("--vae-dtype", choices=("fp32", "weight"), help="VAE in fp32 or the mixed-precision dtype")
    add_recipe_argument(parser, SDXL_LORA)
    args = parser.parse_args(argv)
    apply_recipe(args, SDXL_LORA)
    if not args.data.is_dir():
        raise ValueError(f"--data {args.data} is not a folder")
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    if args.random_flip is False and args.center_crop is False:
        pass  # random crops alone are fine
    if args.cache_latents and not args.center_crop:
        raise ValueError("--cache-latents needs --center-crop (a random crop changes the latent every step)")
    if not 0.0 <= args.cond_dropout < 1.0:
        raise ValueError(f"--cond-dropout must be in [0, 1), got {args.cond_dropout}")
    if args.stop_after is not None and args.stop_after < 1:
        raise ValueError(f"--stop-after must be at least 1, got {args.stop_after}")
    for name in ("batch_size", "max_train_steps", "rank", "checkpointing_steps", "cache_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0 or args.max_grad_norm <= 0 or args.lr_warmup_steps < 0:
        raise ValueError("--lr and --max-grad-norm must be positive and --lr-warmup-steps not negative")
    if args.resume not in ("latest", "none") and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume} is neither 'latest', 'none' nor a checkpoint folder")
    return args


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ---------------------------------------------------------------------------------------------- training


def main(args: argparse.Namespace) -> Path:
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    from mmdemo.training import make_accelerator, set_threads

    set_threads()
    accelerator = make_accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision))
    set_seed(args.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    examples = read_examples(args.data)
    parts = load_components(args.pretrained, weight_dtype, vae_fp32=args.vae_dtype == "fp32")
    for name in ("text_encoder", "text_encoder_2", "vae"):
        parts[name].to(accelerator.device)
    unet = parts["unet"].to(accelerator.device)
    unet.add_adapter(lora_config(args.rank))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # fp16 weights cannot take GradScaler's unscaled steps: the example casts them to fp32 too, but only for fp16.
    if args.lora_dtype == "fp32" or weight_dtype == torch.float16:
        cast_training_params(unet, dtype=torch.float32)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_params, lr=args.lr, weight_decay=args.adam_weight_decay)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    noise_scheduler = parts["noise_scheduler"]

    # Checkpoints hold the LoRA in its published format plus accelerate's optimizer/scheduler/RNG state.
    def save_hook(models: list, weights: list, folder: str) -> None:
        if accelerator.is_main_process:
            save_lora(accelerator.unwrap_model(models[0]), Path(folder), args.rank)
        weights.clear()  # accelerate must not also pickle the whole UNet

    def load_hook(models: list, folder: str) -> None:
        load_lora_into(accelerator.unwrap_model(models.pop()), Path(folder))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    args.out.mkdir(parents=True, exist_ok=True)
    start_step, losses = 0, []
    checkpoint = (
        None
        if args.resume == "none"
        else last_checkpoint(args.out)
        if args.resume == "latest"
        else Path(args.resume)
    )
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = int(checkpoint.name.split("-")[-1])
        loss_file = args.out / "loss.json"
        if loss_file.is_file():
            losses = [r for r in json.loads(loss_file.read_text()) if r["step"] <= start_step]
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    cache = build_cache(parts, examples, args, accelerator.device) if args.cache_latents else None
    unet.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    bar = tqdm(
        range(args.max_train_steps), initial=start_step, desc="lora", disable=not (args.progress and accelerator.is_local_main_process)
    )  # fmt: skip
    end_step = (
        args.max_train_steps
        if args.stop_after is None
        else min(args.max_train_steps, start_step + args.stop_after)
    )
    for step in range(start_step, end_step):
        # Every random choice of this step comes from (seed, step, process): resuming reproduces it.
        step_seed = args.seed * 1_000_003 + step * 101 + rank
        rng = random.Random(step_seed)
        generator = torch.Generator().manual_seed(step_seed)
        picks = batch_indices(step, len(examples), args.batch_size, world, rank, args.seed)
        flips = [args.random_flip and rng.random() < 0.5 for _ in picks]
        if cache is not None:
            rows = torch.tensor(picks)
            mask = torch.tensor(flips)[:, None, None, None]
            latents = torch.where(
                mask, cache.get("latents_flipped", cache["latents"])[rows], cache["latents"][rows]
            )
            time_ids = torch.where(
                mask[:, :, 0, 0],
                cache.get("time_ids_flipped", cache["time_ids"])[rows],
                cache["time_ids"][rows],
            )
            embeds, pooled = cache["embeds"][rows], cache["pooled"][rows]
        else:
            items = [
                load_picture(examples[i].path, args.resolution, args.center_crop, f, rng)
                for i, f in zip(picks, flips)
            ]
            latents = encode_pixels(parts["vae"], torch.stack([i["pixels"] for i in items]), generator)
            time_ids = torch.stack([i["time_ids"] for i in items])
            embeds, pooled = encode_text_batch(parts, [examples[i].text for i in picks], accelerator.device)
        if args.cond_dropout > 0:
            # Zero embeddings are what the pipeline feeds for an empty negative prompt: keep that branch trained.
            keep = (torch.rand(len(picks), generator=generator) >= args.cond_dropout).to(embeds.dtype)
            embeds, pooled = (
                embeds * keep.to(embeds.device)[:, None, None],
                pooled * keep.to(pooled.device)[:, None],
            )
        device = accelerator.device
        latents = latents.to(device, torch.float32)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(picks),), generator=generator
        ).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with accelerator.accumulate(unet), accelerator.autocast():
            pred = unet(
                noisy.to(weight_dtype),
                timesteps,
                encoder_hidden_states=embeds.to(device, weight_dtype),
                added_cond_kwargs={
                    "text_embeds": pooled.to(device, weight_dtype),
                    "time_ids": time_ids.to(device, weight_dtype),
                },
            ).sample
            loss = F.mse_loss(pred.float(), target.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_params, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
        losses.append({"step": step + 1, "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        done = step + 1
        if done % args.checkpointing_steps == 0 or done in (args.max_train_steps, end_step):
            folder = args.out / f"checkpoint-{done}"
            accelerator.save_state(str(folder))
            if accelerator.is_main_process:
                write_loss(args.out, losses)
                prune_checkpoints(args.out, args.checkpoints_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    if end_step < args.max_train_steps:
        accelerator.print(f"stopped after step {end_step} of {args.max_train_steps}; run again to resume")
        accelerator.end_training()
        return args.out / f"checkpoint-{end_step}"
    if accelerator.is_main_process:
        final = save_lora(accelerator.unwrap_model(unet), args.out, args.rank)
        write_loss(args.out, losses)
        write_config(args, len(examples), accelerator)
        accelerator.print(f"saved {final}")
    accelerator.end_training()
    return args.out / LORA_WEIGHT_NAME


def write_loss(out: Path, losses: list[dict]) -> None:
    (out / "loss.json").write_text(json.dumps(losses) + "\n")
    if losses:
        curve = Curve("loss", [r["step"] for r in losses], [r["loss"] for r in losses])
        plot_loss_curves(out / "loss_curve.png", [curve], ylabel="diffusion loss (MSE)", title="SDXL LoRA training")


def write_config(args: argparse.Namespace, n_examples: int, accelerator: Any) -> None:
    config = {
        "format": "diffusers-lora",
        "base_model": args.base_model_id,
        "pretrained": args.pretrained,
        "rank": args.rank,
        "lora_alpha": args.rank,
        "target_modules": list(LORA_TARGET_MODULES),
        "training_examples": n_examples,
        # The global batch is batch_size * processes: how many processes trained says what a step was.
        "processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main(parse_args())
