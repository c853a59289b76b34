"""Train any of the four captioners on Flickr8k (or Shapes).

    python train/train_captioner.py --model resnet18-xattn --data /data/flickr8k --out runs/resnet18-xattn
    accelerate launch --num_processes 2 train/train_captioner.py --model clipb32-xattn --data ... --out ...
    python train/train_captioner.py --model resnet18-xattn --size tiny --init-dir runs/vision_resnet18-tiny \\
        --data runs/shapes --out runs/demo-resnet --recipe ours --save-dtype fp16   # the demo (see the model cards)

``--recipe report`` (the default) is the report's (its image2text ``main.py``): Adam lr 1e-4, weight decay 1e-4,
StepLR(30 epochs, 0.1), 50 epochs, batch 24 (global: split over processes), seed 2024, the report's captioning
split (one caption per image, first 80 % of images train), best-validation-loss checkpoint, fp32, and for the
cross-attention models Dropout(0.2) on the projected image features and images squashed to 224x224.
``--recipe ours`` (the demos') trains under bf16 autocast where the GPU has it, without the image-feature dropout,
on centre crops. Options given on the command line override the recipe (:mod:`mmdemo.recipes`). What still
differs from the report's run, and the report-code bugs we do not copy: README, "How our recipes differ from
the report's".

The frozen encoder runs once: its features for every image are computed before training and cached in
``--cache-dir`` under a key made of ``network.encoder_fingerprint()`` (encoder weights, input size,
normalisation), the data folder's image list and captions file, and the feature dtype; a changed encoder
or preprocessing gives a new key, so stale features are never reused (``--no-cache-features`` keeps them
in memory only).

Output folder ``--out``: ``config.json`` + ``model.safetensors`` (+ tokenizer files) of the best
validation epoch, loadable with ``CaptionNetwork.from_pretrained`` and, copied to
``checkpoints/demo/<id>/``, by ``mmdemo.load_captioner(id, profile="demo")``; ``loss_curve.png``;
``train_log.json``; ``state/`` (accelerate state + ``train_state.json``) from which
``--resume-from-checkpoint latest`` continues at the exact next step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mmdemo.captioners.base import (
    CaptionNetwork,
    Features,
    TrainingInit,
    features_cat,
    features_index,
    features_to,
)
from mmdemo.recipes import CAPTIONER, add_recipe_argument, apply_recipe
from mmdemo.training import (
    add_data_argument,
    add_rolling_state_arguments,
    check_at_least_one,
    check_captions_folder,
    script_parser,
)
from mmdemo.training.checkpoints import resume_state
from mmdemo.training.checkpoints import save_state as save_rolling_state
from mmdemo.training.plots import Curve, plot_loss_curves

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------ helpers


def data_split(corpus: Any, captions_per_image: int, max_train: int | None, max_val: int | None) -> tuple:
    """Train pairs (``captions_per_image`` first captions of each training image) and validation pairs.

    Images and the 80/20 split are the report's (:func:`mmdemo.data.flickr8k.captioning_split`); with
    ``captions_per_image=1`` the pairs are exactly its pairs.
    """
    from mmdemo.data.flickr8k import ImageCaption, captioning_split

    train, val = captioning_split(corpus)
    train, val = train[:max_train] if max_train else train, val[:max_val] if max_val else val
    if captions_per_image > 1:
        train = [
            ImageCaption(p.image, c) for p in train for c in corpus.captions[p.image][:captions_per_image]
        ]
    return train, val


def third_party_sources(spec: Any, overrides: list[Path] | None) -> dict[str, Path]:
    """Local folders of the spec's third-party sources (everything but our own weights), by component name.

    ``overrides`` (``--source-dir``, repeated) are taken in registry order."""
    from mmdemo.registry import OWN_WEIGHTS_REPO
    from mmdemo.weights import WeightsUnavailable, fetch_source

    sources = [s for s in spec.sources if s.repo_id != OWN_WEIGHTS_REPO]
    if overrides:
        if len(overrides) != len(sources):
            raise ValueError(
                f"--source-dir given {len(overrides)} times; {spec.id} needs {len(sources)}: "
                + ", ".join(s.repo_id for s in sources)
            )
        return {source.name: Path(folder) for source, folder in zip(sources, overrides, strict=True)}
    folders: dict[str, Path] = {}
    for source in sources:
        try:
            folders[source.name] = fetch_source(spec, source)
        except WeightsUnavailable as err:
            raise WeightsUnavailable(
                spec.id, "full (training)", err.looked_in,
                f"{err.remedy}; or pass --source-dir, or train the tiny size (--size tiny)",
            ) from err  # fmt: skip
    return folders


def cache_key(network: CaptionNetwork, corpus: Any, names: list[str], dtype: str) -> str:
    digest = hashlib.sha256()
    captions_file = Path(corpus.root) / "captions.txt" if corpus.root else None
    stat = captions_file.stat() if captions_file and captions_file.is_file() else None
    parts = [
        network.encoder_fingerprint(),
        str(Path(corpus.root).resolve()) if corpus.root else "",
        f"{stat.st_size}-{stat.st_mtime_ns}" if stat else "",
        dtype,
        "\n".join(names),
    ]
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def compute_features(
    network: CaptionNetwork,
    corpus: Any,
    names: list[str],
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device,
    show: bool,
) -> Features:
    from tqdm.auto import tqdm

    parts = []
    network.eval()
    for start in tqdm(range(0, len(names), batch_size), desc="encoding images", disable=not show):
        images = [corpus.open_image(n) for n in names[start : start + batch_size]]
        with torch.inference_mode():
            features = network.encode_images(network.preprocess(images).to(device))
        parts.append(features_to(features, "cpu", dtype))
    return features_cat(parts)


def load_or_compute_features(
    args: argparse.Namespace, network: CaptionNetwork, corpus: Any, names: list[str], accelerator: Any
) -> tuple[Features, dict]:
    """Features of ``names`` (in that order), from the disk cache when its key matches."""
    from safetensors.torch import load_file, save_file

    def compute() -> Features:
        return compute_features(
            network,
            corpus,
            names,
            args.encode_batch_size,
            DTYPES[args.feature_dtype],
            accelerator.device,
            accelerator.is_local_main_process,
        )

    info: dict[str, Any] = {"cache": "off"}
    if args.no_cache_features:
        return compute(), info
    key = cache_key(network, corpus, names, args.feature_dtype)
    path = args.cache_dir / f"features-{key}.safetensors"
    info = {"cache": str(path), "key": key}
    with accelerator.main_process_first():  # the main process writes it; the others then read it
        if path.is_file():
            stored = load_file(str(path))
            info["hit"] = True
        else:
            info["hit"] = False
            feats = compute()
            stored = feats if isinstance(feats, dict) else {"__tensor__": feats}
            if accelerator.is_main_process:
                args.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
                tmp.replace(path)
    feats = stored["__tensor__"] if set(stored) == {"__tensor__"} else stored
    return feats, info


def plot_loss_curve(path: Path, history: list[list[float]], val_history: list[list[float]]) -> None:
    curves = [Curve("train", *zip(*history))] if history else []
    if val_history:
        steps, losses = zip(*[(s, v) for s, _, v in val_history])
        curves.append(Curve("validation (per epoch)", steps, losses, smooth=False, style="o-"))
    plot_loss_curves(path, curves, ylabel="cross-entropy")


def recipe_config(cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's settings that are part of the model's config (and so saved with it): the image-feature
    dropout and resize of the cross-attention models, the prompt format and caption cut of the Q-Former ones;
    each only where the model's config has the field."""
    from dataclasses import fields

    known = {f.name for f in fields(cls.network_class.config_class)}
    keys = ("image_dropout", "resize", "prompt_format", "max_caption_tokens")
    return {k: getattr(args, k) for k in keys if k in known}


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmdemo.registry import CAPTIONER_IDS

    parser = script_parser(__doc__)
    parser.add_argument("--model", required=True, choices=CAPTIONER_IDS)
    add_data_argument(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (checkpoint, state, loss curve)"
    )
    parser.add_argument(
        "--size", choices=("full", "tiny"), default="full", help="registry full_config or tiny_config"
    )
    parser.add_argument(
        "--config-override", default="{}", help="JSON merged into the config, e.g. '{\"num_layers\": 1}'"
    )
    parser.add_argument("--init-dir", type=Path, default=None, help="our pretrained tiny frozen parts (demo)")
    parser.add_argument(
        "--source-dir",
        type=Path,
        action="append",
        default=None,
        help="folder of a third-party source (full size), once per source in registry order",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size (split over processes)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr-step-epochs", type=int, help="StepLR step size in epochs")
    parser.add_argument("--lr-gamma", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--captions-per-image",
        type=int,
        help="training captions per image (report: 1, the first; up to 5 as augmentation)",
    )
    parser.add_argument(
        "--image-dropout", type=float, help="dropout on the projected image features (cross-attention models)"
    )
    parser.add_argument(
        "--resize", choices=("squash", "crop"), help="image preprocessing of the cross-attention models"
    )
    parser.add_argument("--prompt-format", choices=("report", "ours"), help="qformer-tinyllama's prompt tokens")
    parser.add_argument("--max-caption-tokens", type=int, help="Q-Former captioners: training caption cut")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-val-images", type=int, default=None)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps"
    )
    add_rolling_state_arguments(parser, checkpointing_steps=500)
    parser.add_argument(
        "--no-cache-features", action="store_true", help="keep encoder features in memory only"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache folder (default OUT/feature_cache)"
    )
    parser.add_argument("--feature-dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--encode-batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"))
    parser.add_argument(
        "--save-dtype", choices=("fp32", "fp16"), default="fp32", help="dtype of the saved weights"
    )
    add_recipe_argument(parser, CAPTIONER)
    args = parser.parse_args(argv)
    apply_recipe(args, CAPTIONER)

    check_captions_folder(args.data)
    check_at_least_one(args, ("epochs", "batch_size", "captions_per_image", "checkpointing_steps",
                              "encode_batch_size", "eval_batch_size", "lr_step_epochs", "max_steps"))
    if args.captions_per_image > 5:
        raise ValueError("--captions-per-image must be between 1 and 5")
    if not (args.lr > 0 and args.weight_decay >= 0 and 0 < args.lr_gamma <= 1):
        raise ValueError("--lr must be > 0, --weight-decay >= 0 and --lr-gamma in (0, 1]")
    try:
        args.config_override = json.loads(args.config_override)
    except json.JSONDecodeError as err:
        raise ValueError(f"--config-override is not valid JSON: {err}") from None
    if not isinstance(args.config_override, dict):
        raise ValueError("--config-override must be a JSON object")
    if args.init_dir is not None and not args.init_dir.is_dir():
        raise ValueError(f"--init-dir {args.init_dir} is not a folder")
    if args.init_dir is not None and args.size == "full":
        raise ValueError("--init-dir holds tiny pretrained parts; use it with --size tiny")
    args.cache_dir = args.cache_dir or args.out / "feature_cache"
    return args


# ------------------------------------------------------------------------------------------------ main


def main(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from mmdemo import adapter_class
    from mmdemo.data.flickr8k import load_flickr8k
    from mmdemo.registry import get_spec
    from mmdemo.training import make_accelerator, set_threads, time_is_up

    set_threads()
    accelerator = make_accelerator(mixed_precision=mixed_precision(args.mixed_precision))
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(args.seed)
    spec = get_spec(args.model, "captioner")
    cls = adapter_class(spec)
    config = {**(spec.tiny_config if args.size == "tiny" else spec.full_config),
              **recipe_config(cls, args), **args.config_override}  # fmt: skip

    corpus = load_flickr8k(args.data)
    train_pairs, val_pairs = data_split(
        corpus, args.captions_per_image, args.max_train_images, args.max_val_images
    )
    if len(train_pairs) < world or not val_pairs:
        raise ValueError(
            f"too few images: {len(train_pairs)} training pairs, {len(val_pairs)} validation pairs"
        )
    sources = third_party_sources(spec, args.source_dir) if args.size == "full" else None
    network = cls.network_for_training(
        config,
        TrainingInit(
            train_captions=[p.caption for p in train_pairs],
            sources=sources,
            init_dir=args.init_dir,
            device=accelerator.device,
        ),
    )

    # Frozen-encoder features, once, for every image in use (train then validation order).
    names = list(dict.fromkeys([p.image for p in train_pairs] + [p.image for p in val_pairs]))
    row_of = {name: i for i, name in enumerate(names)}
    features, cache_info = load_or_compute_features(args, network, corpus, names, accelerator)
    train_rows = torch.tensor([row_of[p.image] for p in train_pairs])
    val_rows = torch.tensor([row_of[p.image] for p in val_pairs])

    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.lr, weight_decay=args.weight_decay)
    # Stepped once per epoch by us, so it is not given to prepare() (which would step it per process).
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_epochs, gamma=args.lr_gamma)
    model, optimizer = accelerator.prepare(network, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped: CaptionNetwork = accelerator.unwrap_model(model)

    # Every global batch is `batch_size` pairs of a per-epoch permutation seeded by (seed, epoch); process r
    # takes rows r, r + world, ... of it. So the step -> data mapping is a pure function of the step number,
    # which is what lets a resumed run continue exactly where the interrupted one stopped.
    steps_per_epoch = len(train_pairs) // args.batch_size + (len(train_pairs) % args.batch_size >= world)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    state: dict[str, Any] = {
        "global_step": 0,
        "best_val_loss": math.inf,
        "best_epoch": None,
        "history": [],
        "val_history": [],
        "epochs_done": 0,
    }
    state = resume_state(accelerator, args.out, args.resume_from_checkpoint, state)

    def save_state() -> None:
        save_rolling_state(accelerator, args.out, state)

    def validation_loss() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), accelerator.autocast():
            for start in range(0, len(val_pairs), args.eval_batch_size):
                pairs = val_pairs[start : start + args.eval_batch_size]
                feats = features_to(
                    features_index(features, val_rows[start : start + len(pairs)]), accelerator.device
                )
                total += unwrapped(feats, [p.caption for p in pairs]).item() * len(pairs)
                count += len(pairs)
        model.train()
        return total / count

    def batch_rows(epoch: int, index: int) -> torch.Tensor:
        order = torch.randperm(
            len(train_pairs), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch)
        )
        return order[index * args.batch_size : (index + 1) * args.batch_size][rank::world]

    args.out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    progress = tqdm(
        total=total_steps,
        initial=state["global_step"],
        desc=args.model,
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    stopped_early = False
    while state["global_step"] < total_steps:
        step = state["global_step"]
        epoch, index = divmod(step, steps_per_epoch)
        rows = batch_rows(epoch, index)
        # Dropout noise is a function of the step too (not of how many steps this process has run).
        torch.manual_seed(args.seed * 1_000_003 + step * world + rank)
        feats = features_to(features_index(features, train_rows[rows]), accelerator.device)
        with accelerator.autocast():
            loss = model(feats, [train_pairs[i].caption for i in rows.tolist()])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
        state["history"].append([step, mean_loss])
        state["global_step"] = step = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.3f}", epoch=epoch, lr=f"{scheduler.get_last_lr()[0]:.1e}")
        if step % steps_per_epoch == 0:  # end of an epoch: validate, keep the best, step the LR schedule
            val = validation_loss()
            state["val_history"].append([step, epoch, val])
            state["epochs_done"] = epoch + 1
            scheduler.step()
            if val < state["best_val_loss"]:
                state["best_val_loss"], state["best_epoch"] = val, epoch
                if accelerator.is_main_process:
                    unwrapped.save_pretrained(
                        args.out,
                        include_frozen=args.size == "tiny",
                        dtype=torch.float16 if args.save_dtype == "fp16" else None,
                    )
            accelerator.print(f"epoch {epoch}: validation loss {val:.4f} (best {state['best_val_loss']:.4f})")
            save_state()
        elif step % args.checkpointing_steps == 0:
            save_state()
        if step < total_steps and time_is_up(accelerator, start_time, args.max_minutes):
            stopped_early = True
            break
    progress.close()
    if state["global_step"] % steps_per_epoch:  # stopped inside an epoch: keep the exact place
        save_state()
    if not (args.out / "config.json").is_file() and accelerator.is_main_process:
        # No epoch finished yet (a short or interrupted run): still leave a loadable checkpoint.
        unwrapped.save_pretrained(
            args.out,
            include_frozen=args.size == "tiny",
            dtype=torch.float16 if args.save_dtype == "fp16" else None,
        )
    summary = {
        "model": args.model,
        "size": args.size,
        "steps": state["global_step"],
        "epochs_done": state["epochs_done"],
        "best_val_loss": state["best_val_loss"] if math.isfinite(state["best_val_loss"]) else None,
        "best_epoch": state["best_epoch"],
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "processes": world,
        "distributed_type": str(accelerator.distributed_type),
        "feature_cache": cache_info,
        "minutes_this_run": round((time.time() - start_time) / 60, 2),
        "stopped_early": stopped_early,
    }
    if accelerator.is_main_process:
        plot_loss_curve(args.out / "loss_curve.png", state["history"], state["val_history"])
        log = {
            **summary,
            "args": {k: str(v) for k, v in vars(args).items()},
            "config": unwrapped.config_dict(),
            "history": state["history"],
            "val_history": state["val_history"],
        }
        (args.out / "train_log.json").write_text(json.dumps(log) + "\n")
        print(json.dumps(summary))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(parse_args())
