"""The deployment command, with the Hub client stubbed: which calls, which files, nothing secret uploaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from mmdemo import deploy


class RecordingHub:
    """Stands in for ``HfApi``: records every call; ``upload_folder`` lists what it would send."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: list[str] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "upload_folder":
                folder = Path(kwargs["folder_path"])
                paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                self.uploaded = list(
                    filter_repo_objects(
                        paths,
                        allow_patterns=kwargs["allow_patterns"],
                        ignore_patterns=kwargs["ignore_patterns"],
                    )  # fmt: skip
                )
            return None

        return call

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


def _tree(root: Path) -> Path:
    files = [
        "app.py", "README.md", "requirements.txt", "pyproject.toml", ".gitattributes",
        "mmdemo/__init__.py", "mmdemo/ui/app.py", "assets/examples/Images/shapes_000000.png",
        "checkpoints/demo/sdxl-base/unet/diffusion_pytorch_model.safetensors", "checkpoints/README.md",
        # never to be uploaded:
        ".env", "mmdemo/.env", "secrets.env", ".venv/lib/site.py", "runs/pixel/model.safetensors",
        ".git/config", "mmdemo/__pycache__/weights.cpython-311.pyc", "tests/test_x.py", "train/train_x.py",
        "checkpoints/pixel-diffusion/model.safetensors", "notes.txt", "id_rsa.pem",
    ]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    return root


def test_deploy_creates_the_space_sets_hardware_and_variables_and_uploads_only_the_app(tmp_path):
    folder = _tree(tmp_path / "repo")
    hub = RecordingHub()
    plan = deploy.DeployPlan(
        "me/mmdemo", "t4-small", {"MMDEMO_PROFILE": "auto"}, {"HF_TOKEN": "hf_secret"}, folder=folder
    )
    deploy.deploy(plan, api=hub)

    assert hub.names() == [
        "create_repo", "request_space_hardware", "add_space_variable", "add_space_secret", "upload_folder",
    ]  # fmt: skip
    _, args, kwargs = hub.calls[0]
    assert args == ("me/mmdemo",) and kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio"
    assert kwargs["space_hardware"] == "t4-small" and kwargs["exist_ok"] is True
    assert kwargs["space_variables"] == [{"key": "MMDEMO_PROFILE", "value": "auto"}]
    assert hub.calls[1][1] == ("me/mmdemo", "t4-small")
    upload = hub.calls[-1][2]
    assert upload["repo_id"] == "me/mmdemo" and upload["repo_type"] == "space"
    assert sorted(hub.uploaded) == sorted([
        ".gitattributes", "README.md", "app.py", "assets/examples/Images/shapes_000000.png",
        "checkpoints/README.md", "checkpoints/demo/sdxl-base/unet/diffusion_pytorch_model.safetensors",
        "mmdemo/__init__.py", "mmdemo/ui/app.py", "pyproject.toml", "requirements.txt",
    ])  # fmt: skip
    assert hub.uploaded == deploy.files_to_upload(folder)  # --dry-run lists exactly what goes up
    assert not any("hf_secret" in str(call) for call in hub.calls if call[0] != "add_space_secret"
                   and call[0] != "create_repo")  # fmt: skip


def test_the_real_tree_uploads_the_app_and_no_secret_or_training_output():
    files = deploy.files_to_upload(deploy.REPO_ROOT)
    assert {"app.py", "README.md", "requirements.txt", "mmdemo/weights.py", "mmdemo/ui/app.py"} <= set(files)
    assert any(
        f.startswith("checkpoints/demo/pixel-diffusion/") and f.endswith(".safetensors") for f in files
    )
    forbidden = (".venv/", "runs/", ".git/", "tests/", "__pycache__", ".env")
    assert not [f for f in files if any(part in f for part in forbidden)]


def test_cli_parses_variables_and_reads_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    plan = deploy.parse_args(["--space", "me/x", "--hardware", "zero-a10g", "--variable", "MMDEMO_DOWNLOAD=1",
                              "--secret", "HF_TOKEN", "--dry-run"])  # fmt: skip
    assert (plan.space, plan.hardware, plan.dry_run) == ("me/x", "zero-a10g", True)
    assert plan.variables == {"MMDEMO_DOWNLOAD": "1"} and plan.secrets == {"HF_TOKEN": "hf_from_env"}
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SystemExit):
        deploy.parse_args(["--space", "me/x", "--secret", "HF_TOKEN"])
    with pytest.raises(SystemExit):
        deploy.parse_args(["--space", "me/x", "--variable", "NOEQUALS"])
    with pytest.raises(SystemExit):
        deploy.parse_args(["--space", "just-a-name"])


def test_gitattributes_stores_binaries_with_lfs_for_git_pushes():
    rules = (deploy.REPO_ROOT / ".gitattributes").read_text()
    for pattern in ("*.safetensors", "*.png", "*.pth", "*.bin"):
        assert f"{pattern} filter=lfs diff=lfs merge=lfs -text" in rules
