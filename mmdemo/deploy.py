"""Put the app on a Hugging Face Space through the Hub's upload API.

    python -m mmdemo.deploy --space OWNER/NAME --hardware t4-small \\
        [--variable MMDEMO_PROFILE=auto ...] [--secret HF_TOKEN ...] [--private] [--dry-run]

Creates the Space if it does not exist (Gradio SDK), asks for the hardware, sets the variables (and secrets,
whose values are read from this machine's environment, never from the command line), then uploads what the
app needs in one commit: ``app.py``, ``README.md`` (its front matter is the Space's configuration), the
requirements, ``mmdemo/``, ``assets/`` and the demo checkpoints. The upload API stores binary files
(safetensors, PNG) the way the Hub requires, which a plain ``git push`` of this history does not. Nothing
else goes up: no ``.env``, virtual environment, training runs, caches, tests or git metadata. ``--dry-run``
lists the files and changes nothing. The token is the one ``huggingface-cli login`` stored, or ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

REPO_ROOT = Path(__file__).resolve().parents[1]

# What the Space runs: the app, the package, the shipped demo checkpoints and example images.
ALLOW_PATTERNS: tuple[str, ...] = (
    "app.py",
    "README.md",
    "requirements.txt",
    "pyproject.toml",
    ".gitattributes",
    "mmdemo/*",
    "assets/*",
    "checkpoints/README.md",
    "checkpoints/demo/*",
)
# Never uploaded, even inside an allowed folder: secrets, environments, caches, training output.
IGNORE_PATTERNS: tuple[str, ...] = (
    ".env",
    "*.env",
    ".env.*",
    "*/.env",
    "*.pem",
    "*.key",
    ".git/*",
    ".venv/*",
    "*/.venv/*",
    "runs/*",
    "*/runs/*",
    "*__pycache__*",
    "*.pyc",
    "*.pyi",
    "*.egg-info/*",
    ".pytest_cache/*",
    ".ruff_cache/*",
    ".gradio/*",
)
_NEVER_WALKED = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
HARDWARE = (
    "cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
    "a10g-largex2", "a10g-largex4", "a100-large", "l40sx1", "l40sx4", "l40sx8", "h100", "zero-a10g",
)  # fmt: skip


@dataclass
class DeployPlan:
    space: str
    hardware: str
    variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    private: bool = False
    folder: Path = REPO_ROOT
    dry_run: bool = False


def files_to_upload(folder: Path) -> list[str]:
    """The repository-relative paths ``upload_folder`` sends, with the same pattern rules it applies."""
    paths = []
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _NEVER_WALKED]  # big trees that are ignored anyway
        paths += [(Path(base) / n).relative_to(folder).as_posix() for n in names]
    return list(
        filter_repo_objects(
            sorted(paths), allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS)
        )
    )


def deploy(plan: DeployPlan, api: HfApi | None = None) -> str:
    """Create or update the Space and upload the app; returns the Space's URL."""
    api = api or HfApi()
    repo = api.create_repo(
        plan.space,
        repo_type="space",
        space_sdk="gradio",
        space_hardware=plan.hardware,
        space_variables=[{"key": k, "value": v} for k, v in plan.variables.items()] or None,
        space_secrets=[{"key": k, "value": v} for k, v in plan.secrets.items()] or None,
        private=plan.private,
        exist_ok=True,
    )
    # create_repo leaves an existing Space as it is: apply hardware, variables and secrets explicitly.
    api.request_space_hardware(plan.space, plan.hardware)
    for key, value in plan.variables.items():
        api.add_space_variable(plan.space, key, value)
    for key, value in plan.secrets.items():
        api.add_space_secret(plan.space, key, value)
    api.upload_folder(
        repo_id=plan.space,
        repo_type="space",
        folder_path=str(plan.folder),
        allow_patterns=list(ALLOW_PATTERNS),
        ignore_patterns=list(IGNORE_PATTERNS),
        commit_message="Deploy mmdemo",
    )
    return str(getattr(repo, "url", f"https://huggingface.co/spaces/{plan.space}"))


def _pairs(items: Iterable[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--variable takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def parse_args(argv: list[str] | None = None) -> DeployPlan:
    parser = argparse.ArgumentParser(prog="python -m mmdemo.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="OWNER/NAME of the Space")
    parser.add_argument(
        "--hardware", default="cpu-basic", choices=HARDWARE, help="Space hardware (default cpu-basic)"
    )
    parser.add_argument(
        "--variable", action="append", default=[], metavar="KEY=VALUE", help="a Space variable"
    )
    parser.add_argument(
        "--secret", action="append", default=[], metavar="NAME",
        help="a Space secret, its value read from this machine's environment variable NAME",
    )  # fmt: skip
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; change nothing")
    args = parser.parse_args(argv)
    if args.space.count("/") != 1:
        parser.error(f"--space must be OWNER/NAME, got {args.space!r}")
    try:
        variables = _pairs(args.variable)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    missing = [name for name in args.secret if not os.environ.get(name)]
    if missing:
        parser.error(f"secret(s) {', '.join(missing)} not set in the environment")
    secrets = {name: os.environ[name] for name in args.secret}
    return DeployPlan(args.space, args.hardware, variables, secrets, args.private, dry_run=args.dry_run)


def main(argv: list[str] | None = None) -> None:
    plan = parse_args(argv)
    files = files_to_upload(plan.folder)
    print(f"{len(files)} files for {plan.space} ({plan.hardware}):")
    for name in files:
        print(f"  {name}")
    if plan.dry_run:
        return
    print(f"Deployed: {deploy(plan)}")


if __name__ == "__main__":
    main()
