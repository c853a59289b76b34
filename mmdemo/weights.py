"""Where weights come from: the only module that knows local folders, Hub look-ups and profiles.

Profiles:

* ``full``: the real weights. Every source of a model (a Hub repository and the files its loader needs) is
  looked for in a local folder, then the local Hugging Face cache, then on the Hub. The Hub is asked first
  with cheap metadata calls for *every* source; only when all of them can be had is anything downloaded,
  so a model whose own weights are not published costs no bytes. If a source cannot be had the model is
  *unavailable* (:class:`WeightsUnavailable`), with a message saying where we looked and what to do.
* ``demo``: the small checkpoints in ``<checkpoint root>/demo/<id>/``, trained by our own ``train/`` scripts on
  the offline Shapes dataset, with the same model classes at tiny sizes.
* ``auto``: per model, the real weights when they are on disk; when they are not, a download where downloads
  are on (a GPU is present, or ``MMDEMO_DOWNLOAD=1``; ``MMDEMO_DOWNLOAD=0`` turns them off) and every source
  is on the Hub; otherwise the demo weights, labelled, with the reason.

:func:`decide` answers "which weights would run, and why" without downloading anything (the banner and the
About tab show it); :func:`resolve` does the same and then fetches what is missing, with progress bars,
resuming an interrupted download (huggingface_hub keeps partial files), and checks the files the loader
needs. A resolved model exposes its components by name: ``weights["unet"]``, ``weights["text_encoder"]``...

The checkpoint root is ``$MMDEMO_CHECKPOINTS`` or ``checkpoints/`` in the repository. Whether the Hub is
reachable is decided once per process, quickly (``HF_HUB_OFFLINE=1`` or a short TCP probe), so an offline
machine never waits on Hub time-outs.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from mmdemo.registry import OWN_WEIGHTS_REPO, HubFiles, ModelSpec, get_spec

log = logging.getLogger(__name__)

Profile = Literal["auto", "full", "demo"]
PROFILES: tuple[str, ...] = ("auto", "full", "demo")
REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_PROBE_TIMEOUT_S = 1.5
DEMO_LABEL = "demo weights (tiny, trained on Shapes)"


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


def checkpoint_root() -> Path:
    """``$MMDEMO_CHECKPOINTS`` if set, else ``checkpoints/`` in the repository."""
    env = os.environ.get("MMDEMO_CHECKPOINTS")
    return Path(env).expanduser() if env else REPO_ROOT / "checkpoints"


def demo_dir(model_id: str) -> Path:
    return checkpoint_root() / "demo" / get_spec(model_id).local_dir_name


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


def gpu_present() -> bool:
    """A CUDA device is visible (on ZeroGPU the ``spaces`` package makes this true outside GPU calls too)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def downloads_allowed() -> bool:
    """Whether ``auto`` may download real weights: ``MMDEMO_DOWNLOAD`` if set (1/0), else when a GPU is present.

    Gigabytes of weights are only worth fetching where they can run at a useful speed; a CPU machine keeps
    the demo weights unless told otherwise.
    """
    value = os.environ.get("MMDEMO_DOWNLOAD", "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    return gpu_present()


# ---------------------------------------------------------------------------------------- resolved weights


@dataclass
class ResolvedWeights:
    """A model's weights, component by component.

    Args:
        model_id: the model.
        profile: ``"full"`` or ``"demo"`` (``auto`` is already decided here).
        components: name -> path (a folder, or a single file where the registry names an ``entry``), e.g.
            ``{"text_encoder": .../clip-vit-base-patch16, "model": .../latent-diffusion}``.
        origins: name -> where it was found ("local folder", "HF cache", "downloaded from the Hub", ...).
        reason: why these weights run (shown in the banner and the About tab).
    """

    model_id: str
    profile: Literal["full", "demo"]
    components: dict[str, Path]
    origins: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    def __getitem__(self, name: str) -> Path:
        try:
            return self.components[name]
        except KeyError:
            raise KeyError(
                f"{self.model_id} has no weight component {name!r}; it has: {', '.join(self.components)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.components

    def __iter__(self) -> Iterator[str]:
        return iter(self.components)

    def items(self):
        return self.components.items()

    @property
    def label(self) -> str:
        """What the UI shows next to an output: which weights ran."""
        return DEMO_LABEL if self.profile == "demo" else "full weights"

    @classmethod
    def demo(cls, spec: ModelSpec, folder: str | Path, reason: str = "demo profile") -> ResolvedWeights:
        """The components of a demo checkpoint in ``folder``, laid out as the registry's ``demo_layout`` says."""
        folder = Path(folder)
        components = {name: folder for name in _demo_names(spec)}
        for name, relative in spec.demo_layout.items():
            components[name] = Path(os.path.normpath(folder / relative))
        return cls(spec.id, "demo", components, {n: "shipped demo checkpoint" for n in components}, reason)


def _demo_names(spec: ModelSpec) -> tuple[str, ...]:
    # A demo checkpoint holds a whole model in one folder; the frozen third-party parts of the full model
    # are part of it, so the loader asks only for the components named in demo_layout or the model itself.
    own = [s.name for s in spec.sources if s.repo_id == OWN_WEIGHTS_REPO]
    return tuple(spec.demo_layout) or tuple(own) or spec.component_names


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class SourcePlan:
    """Where one source's files are, or what it takes to get them."""

    source: HubFiles
    folder: Path | None = None  # the files are already here (local folder or HF cache)
    origin: str = ""
    fetch: list[str] = field(default_factory=list)  # repo paths to download when folder is None
    fetch_bytes: int = 0
    problem: str | None = None  # why this source cannot be had
    looked: list[str] = field(default_factory=list)


@dataclass
class Decision:
    """Which weights a model would run under a profile, and why; nothing downloaded to find out.

    ``runs`` is ``"full"``, ``"demo"`` or ``None`` (unavailable); ``download_bytes`` is what a first use
    fetches (0 when everything is on disk); ``plans`` are the full profile's sources, when looked at.
    """

    model_id: str
    profile: str
    runs: Literal["full", "demo"] | None
    reason: str
    looked_in: list[str] = field(default_factory=list)
    plans: list[SourcePlan] = field(default_factory=list)
    download_bytes: int = 0

    @property
    def downloads(self) -> list[str]:
        return [f"{p.source.repo_id}/{name}" for p in self.plans if p.folder is None for name in p.fetch]


def decide(model_id: str, profile: Profile = "auto", *, download: bool | None = None) -> Decision:
    """Which weights ``resolve`` would give ``model_id`` under ``profile``, using Hub metadata only.

    ``download``: whether a download may be planned; ``None`` is the profile's policy (``full``: yes when
    the Hub is reachable; ``auto``: :func:`downloads_allowed`; ``demo``: never).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    spec = get_spec(model_id)
    if profile == "demo":
        return _decide_demo(spec, "demo profile")
    may_download = (True if profile == "full" else downloads_allowed()) if download is None else download
    plans = [plan_source(spec, source, use_hub=may_download) for source in spec.sources]
    looked = [place for plan in plans for place in plan.looked]
    problems = [f"{p.source.repo_id}: {p.problem}" for p in plans if p.problem]
    missing = [p for p in plans if p.folder is None]
    size = sum(p.fetch_bytes for p in missing)
    if not missing:
        return Decision(spec.id, profile, "full", "real weights on disk", looked, plans)
    if not problems:
        reason = f"real weights, {_gib(size)} to download from the Hub on first use"
        return Decision(spec.id, profile, "full", reason, looked, plans, size)
    why = "; ".join(problems)
    if profile == "full":
        return Decision(spec.id, profile, None, f"real weights unavailable: {why}", looked, plans)
    if not may_download:
        why = "not on disk, and downloads are off (no GPU; MMDEMO_DOWNLOAD=1 turns them on)"
    demo = _decide_demo(spec, f"real weights {why}")
    demo.profile, demo.plans, demo.looked_in = profile, plans, [*looked, *demo.looked_in]
    return demo


def _decide_demo(spec: ModelSpec, reason: str) -> Decision:
    folder = checkpoint_root() / "demo" / spec.local_dir_name
    resolved = ResolvedWeights.demo(spec, folder)
    missing = [str(path) for path in resolved.components.values() if not path.exists()]
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and not missing:
        return Decision(spec.id, "demo", "demo", f"demo weights: {reason}", [])
    looked = [f"{folder} (config.json + *.safetensors)", *missing]
    return Decision(spec.id, "demo", None, f"demo weights missing from {folder}", looked)


def plan_source(spec: ModelSpec | None, source: HubFiles, *, use_hub: bool) -> SourcePlan:
    """Look for one source: local folder, HF cache, then (with ``use_hub``) the Hub's file list. No download."""
    plan = SourcePlan(source)
    local = local_folder(spec, source)
    lacking = missing_files(source, local)
    if not lacking:
        plan.folder, plan.origin = local, "local folder"
        return plan
    plan.looked.append(f"{local} (local folder; lacks {', '.join(lacking)})")
    cached = _from_hf_cache(source)
    if cached is not None:
        plan.folder, plan.origin = cached, "HF cache"
        return plan
    plan.looked.append(f"HF cache: {_describe(source)}")
    if not use_hub:
        plan.problem = "not on disk (downloads off)"
        return plan
    if not hub_reachable():
        plan.problem = "not on disk, and the Hub is not reachable (offline, or HF_HUB_OFFLINE set)"
        plan.looked.append("Hub: not reachable (offline, or HF_HUB_OFFLINE set)")
        return plan
    try:
        listing = repo_file_sizes(source.repo_id, source.revision)
    except Exception as err:  # noqa: BLE001 - not found, gated, private, network: all mean "cannot be had"
        plan.problem = f"not on the Hub ({type(err).__name__}: {_first_line(err)})"
        plan.looked.append(f"Hub {source.repo_id}: {plan.problem}")
        return plan
    chosen, lacking = select_files(source, listing)
    if lacking:
        plan.problem = f"the Hub repo has no {', '.join(lacking)}"
        plan.looked.append(f"Hub {source.repo_id}: {plan.problem}")
        return plan
    plan.fetch, plan.fetch_bytes, plan.origin = chosen, sum(listing[f] or 0 for f in chosen), "Hub"
    return plan


_LISTINGS: dict[tuple[str, str | None], dict[str, int | None]] = {}
_LISTINGS_LOCK = threading.Lock()


def repo_file_sizes(repo_id: str, revision: str | None = None) -> dict[str, int | None]:
    """Every file of a Hub model repo with its size in bytes: one metadata call, remembered per process."""
    key = (repo_id, revision)
    with _LISTINGS_LOCK:
        if key in _LISTINGS:
            return _LISTINGS[key]
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    listing = {s.rfilename: s.size for s in info.siblings or []}
    with _LISTINGS_LOCK:
        _LISTINGS[key] = listing
    return listing


def forget_hub_listings() -> None:
    """Ask the Hub again next time (tests; a long-running app after a publication)."""
    with _LISTINGS_LOCK:
        _LISTINGS.clear()


def _requirements(source: HubFiles) -> list[list[str]]:
    """Each entry of ``source.files`` as its alternatives, prefixed with the subfolder."""
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    return [[prefix + alt for alt in entry.split("|")] for entry in source.files]


def select_files(source: HubFiles, listing: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(repo paths to fetch, requirements the repo cannot meet): per entry, the first alternative it has."""
    chosen: list[str] = []
    lacking: list[str] = []
    for entry, alternatives in zip(source.files, _requirements(source), strict=True):
        for pattern in alternatives:
            matches = sorted(name for name in listing if fnmatch.fnmatch(name, pattern))
            if matches:
                chosen.extend(m for m in matches if m not in chosen)
                break
        else:
            lacking.append(entry)
    return chosen, lacking


def missing_files(source: HubFiles, folder: Path) -> list[str]:
    """The entries of ``source.files`` that ``folder`` (already inside the subfolder) does not satisfy."""
    if not folder.is_dir():
        return list(source.files)
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    return [
        entry
        for entry in source.files
        if not any(fnmatch.fnmatch(name, alt) for alt in entry.split("|") for name in present)
    ]


def local_folder(spec: ModelSpec | None, source: HubFiles) -> Path:
    """Where ``source``'s files sit on disk without the Hub.

    Our own trained weights: ``<root>/<model id>/``. Third-party weights: a mirror of the Hub repo,
    ``<root>/<repo id>/<subfolder>/`` (what ``huggingface-cli download REPO --local-dir <root>/REPO`` writes).
    """
    if source.repo_id == OWN_WEIGHTS_REPO and spec is not None:
        return checkpoint_root() / spec.local_dir_name
    base = checkpoint_root() / source.repo_id
    return base / source.subfolder if source.subfolder else base


def _from_hf_cache(source: HubFiles) -> Path | None:
    """The cached snapshot folder holding every file ``source`` needs, or None. Never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                source.repo_id,
                revision=source.revision,
                allow_patterns=[alt for alts in _requirements(source) for alt in alts],
                local_files_only=True,
            )
        )
    except Exception:  # noqa: BLE001 - not in the cache, in whatever way the library reports it
        return None
    base = folder / source.subfolder if source.subfolder else folder
    return base if not missing_files(source, base) else None


# ---------------------------------------------------------------------------------------------- resolving


def resolve(model_id: str, profile: Profile = "auto", *, download: bool | None = None) -> ResolvedWeights:
    """``model_id``'s weights under ``profile``, fetched if :func:`decide` says so, or :class:`WeightsUnavailable`.

    Every source is checked before anything is downloaded; after fetching, the files the loader needs are
    checked to be there.
    """
    decision = decide(model_id, profile, download=download)
    spec = get_spec(model_id)
    if decision.runs is None:
        label = "auto (full or demo)" if profile == "auto" else profile
        raise WeightsUnavailable(
            spec.id, label, decision.looked_in or [decision.reason], _remedy(spec, profile)
        )
    if decision.runs == "demo":
        return ResolvedWeights.demo(spec, checkpoint_root() / "demo" / spec.local_dir_name, decision.reason)
    components: dict[str, Path] = {}
    origins: dict[str, str] = {}
    for plan in decision.plans:
        folder, origin = (
            (plan.folder, plan.origin) if plan.folder is not None else (_fetch(plan), "downloaded")
        )
        lacking = missing_files(plan.source, folder)
        if lacking:
            raise WeightsUnavailable(
                spec.id, "full", [f"{folder}: lacks {', '.join(lacking)}"], _remedy(spec, "full")
            )
        for name in plan.source.names:
            entry = plan.source.entry if name == plan.source.name else ""
            components[name] = folder / entry if entry else folder
            origins[name] = origin
    return ResolvedWeights(spec.id, "full", components, origins, decision.reason)


def fetch_source(spec: ModelSpec | None, source: HubFiles, *, download: bool = True) -> Path:
    """One source's folder (local, HF cache, or downloaded now), its files checked, or :class:`WeightsUnavailable`.

    For auxiliary weights outside the registry's models (``spec=None``: the local folder is the repo mirror
    ``<root>/<repo id>/``) and for training scripts that need the frozen parts of one model.
    """
    plan = plan_source(spec, source, use_hub=download)
    what = spec.id if spec else source.role
    remedy = f"download {_describe(source)} into {local_folder(spec, source)}/ (or let the app reach the Hub)"
    if plan.problem:
        raise WeightsUnavailable(what, "full", [*plan.looked, plan.problem], remedy)
    folder = plan.folder if plan.folder is not None else _fetch(plan)
    lacking = missing_files(source, folder)
    if lacking:
        raise WeightsUnavailable(what, "full", [f"{folder}: lacks {', '.join(lacking)}"], remedy)
    return folder


def _fetch(plan: SourcePlan) -> Path:
    """Download exactly ``plan.fetch`` (progress bars on; an interrupted download resumes where it stopped)."""
    from huggingface_hub import snapshot_download

    source = plan.source
    log.info("downloading %d file(s), %s, from %s", len(plan.fetch), _gib(plan.fetch_bytes), source.repo_id)
    folder = Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=plan.fetch))
    return folder / source.subfolder if source.subfolder else folder


def available_profile(model_id: str, profile: Profile) -> Literal["full", "demo"] | None:
    """The weights ``resolve`` would run (``"full"``, ``"demo"``) or ``None``; nothing is downloaded."""
    return decide(model_id, profile).runs


def prefetch(model_ids: list[str], profile: Profile) -> dict[str, str]:
    """Resolve (and so download) every model's weights now; model id -> "full"/"demo" or the error.

    Run at start-up in a background thread so that first uses, and on ZeroGPU the GPU window, never wait on
    a download.
    """
    done: dict[str, str] = {}
    for model_id in model_ids:
        try:
            done[model_id] = resolve(model_id, profile).profile
        except Exception as err:  # noqa: BLE001 - one model's failure is reported with it, others go on
            done[model_id] = f"{type(err).__name__}: {_first_line(err)}"
    return done


def _describe(source: HubFiles) -> str:
    sub = f"/{source.subfolder}" if source.subfolder else ""
    rev = f"@{source.revision}" if source.revision else ""
    return f"{source.repo_id}{rev}{sub} ({', '.join(source.files)})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GB" if size >= 2**30 / 10 else f"{size / 2**20:.1f} MB"


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


def load_state_dict(path: str | Path, *, device: str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load tensors safely: safetensors when the file is one, else ``torch.load(weights_only=True)``.

    ``mmap=True`` maps a ``torch.save`` file instead of reading it into memory (tensors are paged in as they
    are copied to their destination; safetensors files are always mapped). A missing or corrupt file raises
    ``ValueError`` naming the file, never a pickle execution.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=device)
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
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
