"""A Hugging Face Hub in local folders, for tests of weight resolution, downloads and loading.

``FakeHub(root)`` serves every folder ``root/<owner>/<name>/`` as a model repository: ``HfApi.model_info``
lists its files with their sizes, ``snapshot_download`` copies the files matching ``allow_patterns`` into a
cache folder and records each one in ``hub.downloaded``. A repository without a folder does not exist
(``RepositoryNotFoundError``, as the real Hub answers for an unpublished or private repo).

``lay_out_real_repos(hub)`` writes the file lists of the real repositories the registry names (the files
each one really has, with the variants the loaders must *not* fetch), with placeholder contents; tests that
load weights overwrite the files they need with tiny real ones.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

# The files of each real repository that matter here: what the registry asks for, and the alternatives and
# variants beside them that must never be downloaded (fp32 SDXL weights, TensorFlow/Flax copies, ...).
REAL_REPOS: dict[str, tuple[str, ...]] = {
    "timm/resnet18.tv_in1k": ("config.json", "model.safetensors", "pytorch_model.bin", "README.md"),
    "timm/vit_base_patch32_clip_224.openai": (
        "config.json",
        "model.safetensors",
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "merges.txt",
        "vocab.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ),
    "Salesforce/blip2-itm-vit-g": ("config.json", "model.safetensors", "README.md"),
    "google-bert/bert-base-uncased": (
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
    ),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ),
    "stabilityai/stable-diffusion-xl-base-1.0": (
        "model_index.json",
        "sd_xl_base_1.0.safetensors",
        "scheduler/scheduler_config.json",
        *(
            f"{t}/{n}"
            for t in ("tokenizer", "tokenizer_2")
            for n in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
        ),
        *(
            f"{t}/{n}"
            for t in ("text_encoder", "text_encoder_2")
            for n in ("config.json", "model.safetensors", "model.fp16.safetensors")
        ),
        *(
            f"{t}/{n}"
            for t in ("unet", "vae")
            for n in (
                "config.json",
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
            )
        ),
    ),
    "FoundationVision/Infinity": (
        "infinity_2b_reg.pth",
        "infinity_vae_d32reg.pth",
        "infinity_vae_d56_f8_14_patchify.pth",
        "infinity_8b_weights/model-00001-of-00002.safetensors",
    ),
    "google/flan-t5-xl": (
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ),
    # main branch: pickle weights only, no model.safetensors
    "openai/clip-vit-base-patch16": (
        "config.json",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "merges.txt",
        "vocab.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ),
    "madebyollin/sdxl-vae-fp16-fix": (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "sdxl_vae.safetensors",
    ),
}


@dataclass
class FakeHub:
    root: Path
    cache: Path
    downloaded: list[str] = field(default_factory=list)  # "<repo id>/<path>" per file fetched
    metadata_calls: list[str] = field(default_factory=list)
    skip_files: set[str] = field(default_factory=set)  # repo paths a download "loses" (interrupted transfers)

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def add(self, repo_id: str, path: str, content: bytes = b"x") -> Path:
        target = self.repo(repo_id) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return target

    def files(self, repo_id: str) -> dict[str, int]:
        folder = self.repo(repo_id)
        return {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    # ---- the huggingface_hub functions weights.py uses
    def model_info(self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False, **_):
        from huggingface_hub.errors import RepositoryNotFoundError

        self.metadata_calls.append(repo_id)
        if not self.repo(repo_id).is_dir():
            raise RepositoryNotFoundError(
                f"404 Client Error: Repository Not Found for url: {repo_id}", response=_404(repo_id)
            )
        siblings = [SimpleNamespace(rfilename=name, size=size) for name, size in self.files(repo_id).items()]
        return SimpleNamespace(id=repo_id, sha="0" * 40, siblings=siblings)

    def snapshot_download(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        allow_patterns=None,
        local_files_only: bool = False,
        **_,
    ) -> str:
        from huggingface_hub.errors import LocalEntryNotFoundError

        snapshot = self.cache / repo_id / (revision or "main")
        if local_files_only:
            if not snapshot.is_dir():
                raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
            return str(snapshot)
        patterns = [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns or ["*"])
        if not self.repo(repo_id).is_dir():
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"{repo_id} not found", response=_404(repo_id))
        for name in self.files(repo_id):
            if any(fnmatch.fnmatch(name, p) for p in patterns) and name not in self.skip_files:
                target = snapshot / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.repo(repo_id) / name, target)
                self.downloaded.append(f"{repo_id}/{name}")
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    def downloaded_repos(self) -> set[str]:
        return {"/".join(name.split("/")[:2]) for name in self.downloaded}


def _404(repo_id: str):
    import httpx

    return httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))


def lay_out_real_repos(hub: FakeHub, repos: dict[str, tuple[str, ...]] = REAL_REPOS) -> None:
    for repo_id, names in repos.items():
        for name in names:  # placeholders: valid (empty) JSON where a loader might parse the file
            hub.add(repo_id, name, b"{}" if name.endswith(".json") else b"x")


def install(monkeypatch, hub: FakeHub, *, gpu: bool) -> FakeHub:
    """Route weights.py's Hub calls to ``hub``; the Hub is reachable; a GPU present or not."""
    import huggingface_hub

    from mmdemo import weights

    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: hub.model_info(repo_id, **kw)
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(weights, "hub_reachable", lambda: True)
    monkeypatch.setattr(weights, "gpu_present", lambda: gpu)
    monkeypatch.delenv("MMDEMO_DOWNLOAD", raising=False)
    weights.forget_hub_listings()
    return hub


def publish_text_diffusion(hub: FakeHub, model_id: str, demo: Path) -> None:
    """Re-lay a shipped text-diffusion demo checkpoint as the real repos: the frozen text encoder's repo
    (``pytorch_model.bin`` only for bin-only CLIP, else ``model.safetensors``) and our own weights' sub-folder."""
    import torch
    from safetensors.torch import load_file

    from mmdemo.registry import OWN_WEIGHTS_REPO, get_spec

    text_source, own_source = get_spec(model_id).sources
    repo = hub.repo(text_source.repo_id)
    if text_source.repo_id == "openai/clip-vit-base-patch16":
        torch.save(load_file(str(demo / "text_encoder" / "model.safetensors")), repo / "pytorch_model.bin")
    else:
        shutil.copy(demo / "text_encoder" / "model.safetensors", repo / "model.safetensors")
    shutil.copy(demo / "text_encoder" / "config.json", repo / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / "tokenizer" / name, repo / name)
    own = hub.repo(OWN_WEIGHTS_REPO) / own_source.subfolder
    own.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(demo / name, own / name)
