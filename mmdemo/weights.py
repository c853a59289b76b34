"""Where weights come from: the only module that knows local folders, Hub look-ups and profiles.

Profiles (SPEC section 6):

* ``full``: the real weights. Each model resolves them in order: a local folder
  (``<checkpoint root>/<id>/``), the local Hugging Face cache, then the Hub itself if it
  is reachable. If none has them the model is *unavailable* (:class:`WeightsUnavailable`),
  with a message saying where we looked and what to do. Other weights are never
  substituted silently.
* ``demo``: the small checkpoints in ``<checkpoint root>/demo/<id>/``, trained by our own
  ``train/`` scripts on the offline Shapes dataset, with the same model classes at tiny sizes.
* ``auto``: per model, ``full`` where the real weights resolve, else ``demo``.

The checkpoint root is ``$MMDEMO_CHECKPOINTS`` or ``checkpoints/`` in the repository.
Whether the Hub is reachable is decided once per process, quickly (``HF_HUB_OFFLINE=1`` or a
short TCP probe), so an offline machine never waits on Hub time-outs.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from mmdemo.registry import OWN_WEIGHTS_REPO, HubFiles, ModelSpec, get_spec

Profile = Literal["auto", "full", "demo"]
PROFILES: tuple[str, ...] = ("auto", "full", "demo")
REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_PROBE_TIMEOUT_S = 1.5


class WeightsUnavailable(RuntimeError):
    """The weights a model needs could not be found; the message says where we looked and what to do."""

    def __init__(self, model_id: str, profile: str, looked_in: list[str], remedy: str):
        self.model_id = model_id
        self.profile = profile
        self.looked_in = list(looked_in)
        self.remedy = remedy
        where = "\n".join(f"  - {place}" for place in looked_in)
        super().__init__(
            f"{model_id}: {profile} weights unavailable. Looked in:\n{where}\nWhat to do: {remedy}"
        )


class ModelNotImplemented(NotImplementedError):
    """The id is registered but its implementation has not landed yet."""

    def __init__(self, spec: ModelSpec):
        self.model_id = spec.id
        issue = f" (tracked in issue #{spec.issue})" if spec.issue else ""
        super().__init__(f"{spec.display_name} ({spec.id}) is not implemented yet{issue}.")


def checkpoint_root() -> Path:
    """``$MMDEMO_CHECKPOINTS`` if set, else ``checkpoints/`` in the repository."""
    env = os.environ.get("MMDEMO_CHECKPOINTS")
    return Path(env).expanduser() if env else REPO_ROOT / "checkpoints"


def demo_dir(model_id: str) -> Path:
    return checkpoint_root() / "demo" / get_spec(model_id).local_dir_name


def full_dir(model_id: str) -> Path:
    return checkpoint_root() / get_spec(model_id).local_dir_name


@functools.cache
def hub_reachable() -> bool:
    """Whether Hub downloads can work: False when ``HF_HUB_OFFLINE`` is set or a short TCP probe fails.

    Cached for the life of the process: the app decides once instead of letting every model wait on
    its own network time-out.
    """
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class ResolvedWeights:
    """Where a model's weights were found.

    Args:
        model_id: the model.
        profile: ``"full"`` or ``"demo"`` (``auto`` is already decided here).
        paths: for each :class:`HubFiles` source of the spec (full), in order, the local folder in which that
            source's files sit directly (its subfolder already applied); for demo, the single demo folder.
        origin: human-readable description per path ("local folder", "HF cache", "downloaded from the Hub").
    """

    model_id: str
    profile: Literal["full", "demo"]
    paths: list[Path]
    origin: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The single folder of a demo checkpoint, or the first full-profile source."""
        return self.paths[0]

    @property
    def label(self) -> str:
        """What the UI shows next to an output: which weights ran."""
        return "demo weights (tiny, trained on Shapes)" if self.profile == "demo" else "full weights"


def resolve(model_id: str, profile: Profile = "auto", *, download: bool = True) -> ResolvedWeights:
    """Find ``model_id``'s weights for ``profile``, or raise :class:`WeightsUnavailable`.

    With ``download=False`` nothing is fetched: a Hub source counts as resolved only when it is already in the
    local cache. ``auto`` tries ``full`` without downloading, then ``demo``, then ``full`` with downloading.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    spec = get_spec(model_id)
    if profile == "demo":
        return _resolve_demo(spec)
    if profile == "full":
        return _resolve_full(spec, download=download)
    # auto: real weights already on disk win; then the shipped demo weights; a download of gigabytes is only
    # started when neither is there (the Space's first run).
    failures: list[str] = []
    attempts: list[tuple[str, Any]] = [
        ("full", lambda: _resolve_full(spec, download=False)),
        ("demo", lambda: _resolve_demo(spec)),
    ]
    if download:
        attempts.append(("full", lambda: _resolve_full(spec, download=True)))
    for _, attempt in attempts:
        try:
            return attempt()
        except WeightsUnavailable as err:
            failures.extend(err.looked_in)
    raise WeightsUnavailable(
        spec.id, "auto (full or demo)", list(dict.fromkeys(failures)), _remedy(spec, "auto")
    )


def available_profile(model_id: str, profile: Profile) -> Literal["full", "demo"] | None:
    """The profile ``resolve`` would use without downloading, or ``None`` if neither resolves."""
    try:
        return resolve(model_id, profile, download=False).profile
    except WeightsUnavailable:
        return None


def _resolve_demo(spec: ModelSpec) -> ResolvedWeights:
    folder = checkpoint_root() / "demo" / spec.local_dir_name
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return ResolvedWeights(spec.id, "demo", [folder], ["shipped demo checkpoint"])
    raise WeightsUnavailable(
        spec.id, "demo", [f"{folder} (config.json + *.safetensors)"], _remedy(spec, "demo")
    )


def _resolve_full(spec: ModelSpec, *, download: bool) -> ResolvedWeights:
    paths: list[Path] = []
    origins: list[str] = []
    for source in spec.sources:
        found, origin, looked = find_source(source, local_folder(spec, source), download=download)
        if found is None:
            raise WeightsUnavailable(spec.id, "full", looked, _remedy(spec, "full"))
        paths.append(found)
        origins.append(origin)
    return ResolvedWeights(spec.id, "full", paths, origins)


def find_source(source: HubFiles, local: Path, *, download: bool) -> tuple[Path | None, str, list[str]]:
    """Look for one source's files: ``local`` folder, HF cache, then (if allowed and reachable) the Hub.

    Returns ``(folder or None, where it was found, every place looked at)``.
    """
    if _glob(local, source.files[0]):
        return local, "local folder", []
    looked = [f"{local} (local folder)"]
    cached = _from_hf_cache(source)
    if cached is not None:
        return cached, "HF cache", looked
    looked.append(f"HF cache: {_describe(source)}")
    if download and hub_reachable():
        try:
            return _download(source), "downloaded from the Hub", looked
        except Exception as err:  # noqa: BLE001 - every Hub failure means "unavailable", with its reason
            looked.append(f"Hub {source.repo_id}: {type(err).__name__}: {err}")
    elif download:
        looked.append("Hub: not reachable (offline, or HF_HUB_OFFLINE set)")
    return None, "", looked


def local_folder(spec: ModelSpec, source: HubFiles) -> Path:
    """Where ``source``'s files sit on disk without the Hub.

    Our own trained weights: ``<root>/<model id>/``. Third-party weights: a mirror of the Hub repo,
    ``<root>/<repo id>/<subfolder>/`` (what ``huggingface-cli download REPO --local-dir <root>/REPO`` writes).
    """
    if source.repo_id == OWN_WEIGHTS_REPO:
        return checkpoint_root() / spec.local_dir_name
    base = checkpoint_root() / source.repo_id
    return base / source.subfolder if source.subfolder else base


def _describe(source: HubFiles) -> str:
    sub = f"/{source.subfolder}" if source.subfolder else ""
    return f"{source.repo_id}{sub} ({', '.join(source.files)})"


def _glob(base: Path, pattern: str) -> list[Path]:
    if not base.is_dir():
        return []
    return [
        p for p in base.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(base).as_posix(), pattern)
    ]


def _from_hf_cache(source: HubFiles) -> Path | None:
    """The cached snapshot folder holding ``source``'s first file, or None. Never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(source.repo_id, allow_patterns=_patterns(source), local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - not in the cache, in whatever way the library reports it
        return None
    base = folder / source.subfolder if source.subfolder else folder
    return base if _glob(base, source.files[0]) else None


def _download(source: HubFiles) -> Path:
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(source.repo_id, allow_patterns=_patterns(source)))
    return folder / source.subfolder if source.subfolder else folder


def _patterns(source: HubFiles) -> list[str]:
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    return [prefix + pattern for pattern in source.files]


def _remedy(spec: ModelSpec, profile: str) -> str:
    demo = (
        f"the demo checkpoint ships in checkpoints/demo/{spec.id}/ in the repository; if it is missing, "
        f"re-clone or re-train it with the command in the model card"
    )
    places = "; ".join(f"{_describe(s)} -> {local_folder(spec, s)}/" for s in spec.sources)
    full = (
        "let the app download the weights from the Hub (network access, HF_HUB_OFFLINE unset), or put the files "
        f"in these local folders (root: $MMDEMO_CHECKPOINTS or checkpoints/): {places}"
    )
    if profile == "demo":
        return demo
    if profile == "full":
        return full
    return f"either {full}; or {demo}. Or start the app with --profile demo."


# ---------------------------------------------------------------------------------------------- safe loading


def load_state_dict(path: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Load tensors safely: safetensors when the file is one, else ``torch.load(weights_only=True)``.

    A missing or corrupt file raises ``ValueError`` naming the file, never a pickle execution.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=device)
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a corrupt checkpoint to the user
        raise ValueError(f"could not read checkpoint {path}: {type(err).__name__}: {err}") from err


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, with a clear error when it is missing or not JSON."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint config not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint config {path} is not valid JSON: {err}") from err
