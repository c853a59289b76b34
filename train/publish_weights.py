"""Publish one of our trained checkpoints to the Hub repo the registry names.

    python train/publish_weights.py --model pixel-diffusion --folder runs/pixel-diffusion/best [--repo ORG/NAME]

Uploads the folder's files (safetensors, config.json, tokenizer files, model card, eval_*.json) into
the sub-folder ``<model id>/`` of ``mmdemo.registry.OWN_WEIGHTS_REPO`` (or ``--repo``), which is where
``mmdemo.weights`` looks for the full profile. Pickle files are refused: only safetensors are published.
``--dry-run`` lists what would be uploaded. Needs ``huggingface-cli login`` (a write token).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmdemo.registry import OWN_WEIGHTS_REPO, get_spec

PUBLISHED_SUFFIXES = {".safetensors", ".json", ".txt", ".md", ".model", ".png"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="registry id, e.g. pixel-diffusion")
    parser.add_argument(
        "--folder", required=True, type=Path, help="checkpoint folder written by a train/ script"
    )
    parser.add_argument("--repo", default=OWN_WEIGHTS_REPO, help="Hub model repo (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="list the files, upload nothing")
    args = parser.parse_args(argv)
    get_spec(args.model)  # unknown ids fail here, listing the valid ones
    if not (args.folder / "config.json").is_file():
        raise ValueError(f"{args.folder} has no config.json: pass the folder a train/ script wrote")
    if any(args.folder.rglob("*.bin")) or any(args.folder.rglob("*.pt")) or any(args.folder.rglob("*.pth")):
        raise ValueError(f"{args.folder} holds pickle files (.bin/.pt/.pth): publish safetensors only")
    return args


def files_to_publish(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PUBLISHED_SUFFIXES)


def main(args: argparse.Namespace) -> None:
    files = files_to_publish(args.folder)
    for path in files:
        print(f"{args.repo}/{args.model}/{path.relative_to(args.folder).as_posix()}")
    if args.dry_run:
        return
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo, repo_type="model", exist_ok=True)
    api.upload_folder(
        repo_id=args.repo,
        folder_path=str(args.folder),
        path_in_repo=args.model,
        allow_patterns=[p.relative_to(args.folder).as_posix() for p in files],
        commit_message=f"Publish {args.model}",
    )


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, KeyError) as err:
        sys.exit(f"error: {err.args[0] if isinstance(err, KeyError) else err}")
