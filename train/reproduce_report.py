"""Reproduce the report in one command: train and evaluate our models at the report's settings, write its tables.

    python train/reproduce_report.py --data FLICKR8K_DIR --out runs/report --dry-run      # the plan, with estimates
    python train/reproduce_report.py --data FLICKR8K_DIR --out runs/report                # everything, in order
    python train/reproduce_report.py --data FLICKR8K_DIR --out runs/report --models resnet18-xattn --only eval
    python train/reproduce_report.py --tiny --data SHAPES_DIR --out runs/tiny             # the chain on CPU

Stages, in order, each a command of the existing ``train/`` scripts (training under ``accelerate launch``,
``--recipe report``):

1. the four captioners (``train_captioner.py``), each evaluated on the report's validation split
   (``evaluate_captioner.py``: BLEU-1..4 as the report computed it, METEOR, ROUGE-L, CIDEr-D, 95 % intervals);
2. pixel diffusion (``train_pixel_diffusion.py``), the VQ-VAE then latent diffusion (``train_vqvae.py``,
   ``train_latent_diffusion.py``), and the SDXL LoRA (``train_sdxl_lora.py``);
3. the text-to-image comparison of the five generators on the report's 1091 test prompts (the first captions
   of the images after the LoRA's 7000; ``evaluate_generator.py --preset report``, with a gallery), our
   trained weights served from ``OUT/checkpoints`` (links, nothing copied);
4. ``OUT/table2.md`` / ``table2.json``: the report's Table 2 beside ours, with intervals, and
   ``OUT/text_to_image.md`` / ``.json``.

Every stage is resumable and skipped once done: a finished stage leaves ``OUT/stages/<stage>.json`` (its command,
exit status and time); an interrupted training resumes from its last checkpoint (``--resume-from-checkpoint
latest``). Logs: ``OUT/logs/<stage>.log``. ``--dry-run`` prints every command with a rough GPU time and memory
estimate (planning figures for one 80 GB A100, not measurements) and runs nothing.

``--tiny`` runs the same chain end to end at tiny sizes (tiny configs, a few steps, two prompts, BLEU /
ROUGE-L / CIDEr-D only) on a Shapes folder in the Flickr8k layout (``python -m mmdemo.data.shapes``), on CPU,
in a few minutes: it tests the chain itself, not the models. It prepares the tiny stand-ins the full models take
from the Hub (text encoders, a language model, an SDXL base) with the demo's own pretraining scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train"
CAPTIONERS = ("resnet18-xattn", "clipb32-xattn", "qformer-bert", "qformer-tinyllama")
TRAINED_GENERATORS = ("pixel-diffusion", "latent-diffusion", "sdxl-lora")
MODELS = (*CAPTIONERS, *TRAINED_GENERATORS)
ALL_GENERATORS = ("sdxl-base", "sdxl-lora", "infinity-2b", "pixel-diffusion", "latent-diffusion")

# Rough planning figures for one A100 80 GB at the report's settings (GPU hours, peak GiB), from each run's
# step count and typical throughput of networks this size; not measured by this project.
ESTIMATES: dict[str, tuple[float, int]] = {
    "train-resnet18-xattn": (0.3, 6),
    "train-clipb32-xattn": (0.4, 8),
    "train-qformer-bert": (2.0, 20),
    "train-qformer-tinyllama": (3.0, 28),
    "train-pixel-diffusion": (0.6, 20),
    "train-vqvae": (6.0, 30),
    "train-latent-diffusion": (10.0, 24),
    "train-sdxl-lora": (2.5, 45),
    "eval-captioner": (0.15, 20),
    "eval-text-to-image": (17.0, 30),
}


@dataclass
class Stage:
    """One step of the chain: a command, the file that proves it finished, how to resume it."""

    name: str
    command: list[str]
    produces: Path
    resume: list[str] = field(default_factory=list)  # appended when a partial run's checkpoints exist
    resume_marker: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    kind: str = "train"

    def estimate(self) -> tuple[float, int]:
        key = "eval-captioner" if self.name.startswith("eval-") and self.name[5:] in CAPTIONERS else self.name
        return ESTIMATES.get(key, (0.0, 0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="Flickr8k folder (Images/ + captions.txt)")
    p.add_argument("--out", type=Path, required=True, help="everything goes here")
    p.add_argument("--models", default="all", help=f"'all' or comma-separated: {', '.join(MODELS)}")
    p.add_argument("--only", choices=("train", "eval"), default=None, help="run only these stages")
    p.add_argument("--dry-run", action="store_true", help="print the plan with estimates; run nothing")
    p.add_argument("--tiny", action="store_true", help="tiny configs and a few steps on Shapes, on CPU")
    p.add_argument(
        "--launch", default="", help="extra `accelerate launch` arguments, e.g. '--num_processes 4' (quoted)"
    )
    p.add_argument(
        "--bert", type=Path, default=REPO / "checkpoints" / "google-bert" / "bert-base-uncased",
        help="frozen BERT for pixel diffusion (huggingface-cli download google-bert/bert-base-uncased --local-dir)",
    )  # fmt: skip
    p.add_argument(
        "--clip-text", type=Path, default=REPO / "checkpoints" / "openai" / "clip-vit-base-patch16",
        help="frozen CLIP text tower for latent diffusion (openai/clip-vit-base-patch16)",
    )  # fmt: skip
    p.add_argument("--prompts", type=int, default=None, help="use only the first N test prompts")
    args = p.parse_args(argv)
    args.model_ids = list(MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",")]
    for model_id in args.model_ids:
        if model_id not in MODELS:
            raise ValueError(f"--models: {model_id!r} is not one of our trained models ({', '.join(MODELS)})")
    if not (args.data / "captions.txt").is_file():
        raise ValueError(f"--data {args.data} has no captions.txt (a Flickr8k-layout folder)")
    return args


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


def _script(args: argparse.Namespace, name: str, distributed: bool = True) -> list[str]:
    """How a train/ script starts: through accelerate's launcher at full size, as a plain process when tiny."""
    if args.tiny or not distributed:
        return [sys.executable, str(TRAIN / name)]
    return [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(args.launch), str(TRAIN / name)]


def tiny_preparation(args: argparse.Namespace) -> list[Stage]:
    """The tiny stand-ins for what the full models download: text encoders, a language model, an SDXL base."""
    prep = args.out / "tiny"
    data = str(args.data)
    py = [sys.executable]
    stages = [
        Stage("tiny-bert", [*py, str(TRAIN / "pretrain_tiny_text_encoder.py"), "--kind", "bert", "--data", data,
              "--out", str(prep / "bert"), "--steps", "2", "--batch-size", "8"], prep / "bert"),
        Stage("tiny-clip-text", [*py, str(TRAIN / "pretrain_tiny_text_encoder.py"), "--kind", "clip", "--data",
              data, "--out", str(prep / "clip"), "--steps", "2", "--batch-size", "8"], prep / "clip"),
        Stage("tiny-llm", [*py, str(TRAIN / "pretrain_tiny_lm.py"), "--data", data, "--out",
              str(prep / "llm_init" / "llm"), "--steps", "2", "--batch-size", "8"], prep / "llm_init" / "llm"),
        Stage("tiny-sdxl-base", [*py, "-c", "import sys; from mmdemo.models.sdxl import tiny; "
              "tiny.save_demo_pipeline(tiny.build_tiny_pipeline(seed=0), sys.argv[1])", str(prep / "sdxl-base")],
              prep / "sdxl-base"),
    ]  # fmt: skip
    for stage in stages:
        stage.kind = "prep"
    return stages


def plan(args: argparse.Namespace) -> list[Stage]:
    """Every stage, in order, for the models asked for."""
    out, data = args.out, str(args.data)
    train_dir, eval_dir = out / "train", out / "eval"
    tiny = args.tiny
    stages: list[Stage] = tiny_preparation(args) if tiny else []
    tiny_captioner = [
        "--size",
        "tiny",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--checkpointing-steps",
        "100",
    ]
    for model_id in (m for m in CAPTIONERS if m in args.model_ids):
        folder = train_dir / model_id
        command = [*_script(args, "train_captioner.py"), "--model", model_id, "--data", data, "--out", str(folder),
                   "--recipe", "report"]  # fmt: skip
        if tiny:
            command += tiny_captioner
            if model_id == "qformer-tinyllama":  # stage 1 from qformer-bert, the demo recipe in miniature
                command += ["--init-dir", str(out / "tiny" / "llm_init")]
        stages.append(Stage(f"train-{model_id}", command, folder / "model.safetensors",
                            ["--resume-from-checkpoint", "latest"], folder / "state"))  # fmt: skip
        evaluation = [sys.executable, str(TRAIN / "evaluate_captioner.py"), "--model", model_id, "--data", data,
                      "--checkpoint", str(folder), "--profile", "demo" if tiny else "full", "--split", "val",
                      "--out-dir", str(eval_dir / model_id)]  # fmt: skip
        if tiny:
            evaluation += ["--metrics", "bleu,rouge_l,cider", "--resamples", "100"]
        stages.append(Stage(f"eval-{model_id}", evaluation, eval_dir / model_id / f"eval_{dataset_name(args)}.json",
                            kind="eval"))  # fmt: skip
    denoiser_tiny = ["--config", "tiny", "--max-train-steps", "2", "--train-batch-size", "4", "--sample-every", "2",
                     "--sample-steps", "2", "--checkpointing-steps", "2", "--mixed-precision", "no"]  # fmt: skip
    bert = str(out / "tiny" / "bert" if tiny else args.bert)
    clip = str(out / "tiny" / "clip" if tiny else args.clip_text)
    if "pixel-diffusion" in args.model_ids:
        folder = train_dir / "pixel-diffusion"
        command = [*_script(args, "train_pixel_diffusion.py"), "--data", data, "--text-encoder", bert,
                   "--output-dir", str(folder), "--recipe", "report", *(denoiser_tiny if tiny else [])]  # fmt: skip
        stages.append(Stage("train-pixel-diffusion", command, folder / "model.safetensors",
                            ["--resume-from-checkpoint", "latest"], folder))  # fmt: skip
    if "latent-diffusion" in args.model_ids:
        vq = train_dir / "vqvae"
        command = [
            *_script(args, "train_vqvae.py"),
            "--data",
            data,
            "--output-dir",
            str(vq),
            "--recipe",
            "report",
        ]
        if tiny:
            command += ["--config", "tiny", "--max-train-steps", "2", "--train-batch-size", "4", "--disc-start", "1",
                        "--sample-every", "2", "--checkpointing-steps", "2", "--mixed-precision", "no"]  # fmt: skip
        stages.append(Stage("train-vqvae", command, vq / "vqvae.safetensors", ["--resume-from-checkpoint", "latest"],
                            vq))  # fmt: skip
        folder = train_dir / "latent-diffusion"
        command = [*_script(args, "train_latent_diffusion.py"), "--data", data, "--vqvae", str(vq), "--text-encoder",
                   clip, "--output-dir", str(folder), "--recipe", "report", *(denoiser_tiny if tiny else [])]  # fmt: skip
        stages.append(Stage("train-latent-diffusion", command, folder / "model.safetensors",
                            ["--resume-from-checkpoint", "latest"], folder))  # fmt: skip
    if "sdxl-lora" in args.model_ids:
        folder = train_dir / "sdxl-lora"
        command = [*_script(args, "train_sdxl_lora.py"), "--data", data, "--out", str(folder), "--recipe", "report",
                   "--cache-latents"]  # fmt: skip
        if tiny:
            command += ["--pretrained", str(out / "tiny" / "sdxl-base"), "--resolution", "32", "--batch-size", "2",
                        "--rank", "4", "--max-train-steps", "2", "--no-random-flip", "--no-progress"]  # fmt: skip
        # train_sdxl_lora.py resumes from its newest checkpoint by itself (--resume latest is its default).
        stages.append(Stage("train-sdxl-lora", command, folder / "pytorch_lora_weights.safetensors"))
    generators = [m for m in ALL_GENERATORS if m not in TRAINED_GENERATORS or m in args.model_ids]
    if any(m in args.model_ids for m in TRAINED_GENERATORS):
        t2i = eval_dir / "text-to-image"
        n_prompts = args.prompts or (2 if tiny else 1091)  # the report's 1091 test prompts
        command = [*_script(args, "evaluate_generator.py"), "--models", ",".join(generators),
                   "--profile", "demo" if tiny else "full", "--preset", "fast" if tiny else "report",
                   "--prompts", str(out / "test_prompts.txt"), "--n", str(n_prompts),
                   "--out", str(t2i), "--seed", "0"]  # fmt: skip
        if not tiny:
            command += ["--real-images", str(out / "test_images")]
        else:
            command += ["--steps", "2", "--resamples", "100"]
        stages.append(Stage("eval-text-to-image", command, t2i / "comparison.json",
                            env={"MMDEMO_CHECKPOINTS": str(out / "checkpoints")}, kind="eval"))  # fmt: skip
    if args.only is not None:
        stages = [s for s in stages if s.kind == args.only or (s.kind == "prep" and args.only == "train")]
    return stages


def dataset_name(args: argparse.Namespace) -> str:
    return "shapes" if (args.data / "scenes.jsonl").is_file() else args.data.resolve().name.lower()


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def done_marker(args: argparse.Namespace, stage: Stage) -> Path:
    return args.out / "stages" / f"{stage.name}.json"


def run_stage(args: argparse.Namespace, stage: Stage) -> None:
    """Run one stage unless it finished before; resume a partial training; raise on failure."""
    marker = done_marker(args, stage)
    if marker.is_file() and stage.produces.exists():
        print(f"[skip] {stage.name}: done ({marker})", flush=True)
        return
    command = list(stage.command)
    if stage.resume and stage.resume_marker is not None and _has_checkpoint(stage.resume_marker):
        command += stage.resume
    log = args.out / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run]  {stage.name}: {shlex.join(command)}", flush=True)
    started = time.time()
    env = {
        **os.environ,
        **stage.env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with log.open("w") as handle:
        status = subprocess.run(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
        ).returncode
    if status != 0 or not stage.produces.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage {stage.name} failed (exit status {status}); log {log}:\n{tail}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"command": command, "seconds": round(time.time() - started, 1),
                                  "produces": str(stage.produces)}, indent=1))  # fmt: skip


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("checkpoint-*")) or (folder / "train_state.json").is_file())


def prepare_evaluation(args: argparse.Namespace) -> None:
    """The report's test prompts and images, and a checkpoint root serving our trained weights (links)."""
    from mmdemo.data.flickr8k import load_flickr8k, text_to_image_split
    from mmdemo.weights import checkpoint_root

    corpus = load_flickr8k(args.data)
    _, prompts = text_to_image_split(corpus)
    (args.out / "test_prompts.txt").write_text("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
    test_images = args.out / "test_images"
    test_images.mkdir(parents=True, exist_ok=True)
    n_train = len(corpus.images) - len(prompts)
    for name in corpus.images[n_train:]:
        link = test_images / name
        if not link.exists():
            link.symlink_to((args.data / "Images" / name).resolve())
    root = args.out / "checkpoints"
    profile_dir = root / "demo" if args.tiny else root
    profile_dir.mkdir(parents=True, exist_ok=True)
    original = checkpoint_root() / "demo" if args.tiny else checkpoint_root()
    trained = {m: args.out / "train" / m for m in TRAINED_GENERATORS if (args.out / "train" / m).is_dir()}
    if args.tiny and "sdxl-lora" in trained:
        trained["sdxl-base"] = args.out / "tiny" / "sdxl-base"  # the LoRA was trained on this base
    for entry in sorted(original.iterdir()) if original.is_dir() else []:
        if entry.name not in trained and entry.name != "demo":
            _link(profile_dir / entry.name, entry)
    for model_id, folder in trained.items():
        _link(profile_dir / model_id, folder)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------


def write_tables(args: argparse.Namespace) -> dict[str, Any]:
    """Table 2 (captioning, report beside ours) and the text-to-image comparison, as markdown and JSON."""
    from mmdemo.eval.bootstrap import compare, with_interval
    from mmdemo.registry import REGISTRY

    rows = []
    for model_id in (m for m in CAPTIONERS if m in args.model_ids):
        path = args.out / "eval" / model_id / f"eval_{dataset_name(args)}.json"
        ours = json.loads(path.read_text()) if path.is_file() else {}
        report = REGISTRY[model_id].report.bleu
        rows.append({"model": model_id, "report": dict(zip(("bleu1", "bleu2", "bleu3", "bleu4"), report or ())),
                     "ours": {k: ours.get(k) for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
                              if ours.get(k) is not None},
                     "intervals": ours.get("intervals", {}), "n": ours.get("n"), "command": ours.get("command")})  # fmt: skip
    lines = ["| model | report BLEU-1/2/3/4 | ours BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        report = " / ".join(f"{v:.1f}" for v in row["report"].values()) or "-"
        cells = [with_interval(row["ours"].get(k), row["intervals"].get(k), 1)
                 for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")]  # fmt: skip
        lines.append(f"| `{row['model']}` | {report} | {' | '.join(cells)} | {row['n'] or '-'} |")
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if a["ours"].get("bleu4") is not None and b["ours"].get("bleu4") is not None:
                pairs.append("BLEU-4: " + compare(a["model"], a["ours"]["bleu4"], a["intervals"].get("bleu4"),
                                                  b["model"], b["ours"]["bleu4"], b["intervals"].get("bleu4")))  # fmt: skip
    table2 = {"rows": rows, "comparisons": pairs, "data": str(args.data), "tiny": args.tiny}
    (args.out / "table2.json").write_text(json.dumps(table2, indent=1) + "\n")
    (args.out / "table2.md").write_text(
        "# Table 2: captioning on the validation split, the report's BLEU beside ours (95 % intervals)\n\n"
        + "\n".join(lines) + "\n\n" + "\n".join(f"- {p}" for p in pairs) + "\n"
    )  # fmt: skip
    result: dict[str, Any] = {"table2": table2}
    comparison = args.out / "eval" / "text-to-image" / "comparison.json"
    if comparison.is_file():
        data = json.loads(comparison.read_text())
        keys = ("shapes_eval", "clip_score", "fid", "kid", "seconds_per_image")
        t2i = ["| model | " + " | ".join(keys) + " | n |", "|---|" + "---|" * (len(keys) + 1)]
        for model_id, summary in data["models"].items():
            cells = [with_interval(summary.get(k), summary.get("intervals", {}).get(k), 3) for k in keys]
            t2i.append(f"| `{model_id}` | {' | '.join(cells)} | {summary.get('n')} |")
        (args.out / "text_to_image.md").write_text(
            "# Text to image on the report's test prompts (95 % intervals)\n\n" + "\n".join(t2i) + "\n\n"
            + "\n".join(f"- {line}" for line in data.get("comparisons", [])) + "\n"
            + f"\nGallery: {comparison.parent / 'gallery.html'}\n"
        )  # fmt: skip
        (args.out / "text_to_image.json").write_text(json.dumps(data, indent=1) + "\n")
        result["text_to_image"] = data
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    stages = plan(args)
    if args.dry_run:
        total_hours = 0.0
        for stage in stages:
            hours, memory = stage.estimate()
            total_hours += hours
            estimate = "CPU, seconds" if args.tiny else f"~{hours:g} GPU-h, ~{memory} GiB"
            print(f"# {stage.name} ({estimate})\n{shlex.join(stage.command)}")
        print(f"# total: ~{total_hours:g} GPU-hours on one A100 80 GB (rough planning figures, not measured)")
        return {"stages": [s.name for s in stages], "gpu_hours": total_hours}
    args.out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        if stage.name == "eval-text-to-image":
            prepare_evaluation(args)
        run_stage(args, stage)
    tables = write_tables(args)
    print(
        f"wrote {args.out / 'table2.md'}"
        + (f" and {args.out / 'text_to_image.md'}" if "text_to_image" in tables else "")
    )
    return tables


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, RuntimeError) as err:
        print(f"reproduce_report.py: error: {err}", file=sys.stderr)
        sys.exit(2)
