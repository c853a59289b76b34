"""The one object that owns loaded models and device memory.

Models load lazily, once, even when several requests ask for the same one at the same time (a lock
per model id). On a GPU a memory budget keeps the models in use resident and offloads the least
recently used ones to the CPU, so all nine fit on one 24 GB card by taking turns. A model in use
by a request is never moved under it (``use`` counts users).

:meth:`ModelManager.run` is how the service runs a model: an out-of-memory error while loading or running
it frees what can be freed (the other idle models leave the GPU, least recently used first, and CUDA's
cache is emptied; on the CPU idle models are dropped) and retries that model once. Every run is counted
and logged by the manager's :class:`~mmdemo.monitoring.RequestMonitor`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mmdemo.monitoring import RequestMonitor
from mmdemo.registry import get_spec
from mmdemo.weights import Profile, WeightsUnavailable

log = logging.getLogger(__name__)

# Model builds take turns within a process. transformers' lazy module is not thread-safe: two threads importing
# model classes at once can fail with "cannot import name 'AutoTokenizer' from 'transformers'" (seen when the
# About tab's parameter table was built while the first caption loaded its model). Re-entrant, so a build
# that builds a shared part under it does not wait for itself.
BUILD_LOCK = threading.RLock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def module_bytes(model: Any) -> int:
    """Bytes of parameters and buffers of every ``torch.nn.Module`` held by ``model`` (one level deep)."""
    import torch

    seen: set[int] = set()
    total = 0
    candidates = [model, *vars(model).values()] if hasattr(model, "__dict__") else [model]
    for candidate in candidates:
        modules = getattr(candidate, "components", None)  # a diffusers pipeline holds its modules there
        for module in modules.values() if isinstance(modules, dict) else [candidate]:
            if not isinstance(module, torch.nn.Module):
                continue
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


class SharedParts:
    """Heavy parts that several models use (one SDXL pipeline under ``sdxl-base`` and ``sdxl-lora``), loaded once.

    ``get(key, build)`` returns the part for ``key``, building it on first use. A model that holds parts names
    their keys in its ``shared_parts`` attribute; the :class:`ModelManager` that owns this object then counts
    each part's memory once, never offloads a part a running model holds, and moves it with its users.
    """

    def __init__(self) -> None:
        self._parts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:  # one build per part; a second model asking for it waits and shares it
            if key not in self._parts:
                self._parts[key] = build()
            return self._parts[key]

    def bytes(self, key: str) -> int:
        """The part's bytes now (a LoRA loaded into a shared pipeline adds to it)."""
        part = self._parts.get(key)
        return 0 if part is None else module_bytes(part)

    def __len__(self) -> int:
        return len(self._parts)


def _parts(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model, "shared_parts", ()))


class OutOfMemory(RuntimeError):
    """A model ran out of memory twice: once as asked, once more after everything idle was freed."""

    def __init__(self, model_id: str, where: str, detail: str):
        super().__init__(
            f"Out of {where} memory running {model_id}, even after freeing the other models and retrying "
            f"({detail}). Try fewer steps, the fast preset or a smaller picture, run this model alone, or "
            f"use hardware with more memory (see the README's hardware table)."
        )
        self.model_id = model_id


class RequestCancelled(BaseException):
    """Raised from a progress callback to stop a run whose requester left.

    A ``BaseException``, like ``asyncio.CancelledError``, so the per-model ``except Exception`` that keeps one
    model's failure in its own panel lets it through and the whole request ends.
    """


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's out-of-memory error (``torch.OutOfMemoryError``) or the CPU's ``MemoryError``."""
    if isinstance(err, MemoryError):
        return True
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def outcome_of(err: BaseException) -> str:
    """The log's name for how a run failed (see :data:`mmdemo.monitoring.OUTCOMES`)."""
    from mmdemo.inputs import InputError

    if isinstance(err, WeightsUnavailable):
        return "unavailable"
    if isinstance(err, InputError):
        return "rejected"
    if isinstance(err, OutOfMemory):
        return "out_of_memory"
    if isinstance(err, RequestCancelled):
        return "cancelled"
    return "error"


def weights_profile(model: Any) -> str:
    """Which weights a loaded model runs ("demo" or "full"), from its ``weights`` record."""
    return getattr(getattr(model, "weights", None), "profile", "unknown")


@dataclass
class LoadedModel:
    model: Any
    device: str
    bytes: int
    load_seconds: float
    users: int = 0


class ModelManager:
    """Lazily loads models by id and keeps the GPU within ``gpu_budget_bytes``.

    Args:
        profile: weights profile for every model (``auto``, ``full`` or ``demo``).
        device: where models run; default CUDA when available, else CPU.
        gpu_budget_bytes: resident bytes allowed on the GPU before least-recently-used models are offloaded to
            the CPU; default 90 % of the card. Ignored on CPU.
        loader: ``loader(model_id, profile, device) -> model``; default :func:`mmdemo.load_captioner` /
            :func:`mmdemo.load_generator` by the model's kind (tests pass a fake to exercise concurrency).
        monitor: counts and logs every :meth:`run`; default a new one.
    """

    def __init__(
        self,
        profile: Profile = "auto",
        *,
        device: str | None = None,
        gpu_budget_bytes: int | None = None,
        loader: Callable[[str, Profile, str], Any] | None = None,
        monitor: RequestMonitor | None = None,
    ):
        self.profile = profile
        self.device = device or default_device()
        self.gpu_budget_bytes = gpu_budget_bytes if gpu_budget_bytes is not None else self._default_budget()
        self.shared = SharedParts()  # parts several models use, counted once
        self._loader = loader or functools.partial(_load_by_kind, shared=self.shared)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._state_lock = threading.Lock()  # guards _loaded and _load_locks
        self._load_locks: dict[str, threading.Lock] = {}
        self.monitor = monitor or RequestMonitor()

    def _default_budget(self) -> int:
        if not self.device.startswith("cuda"):
            return 0
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)

    @contextlib.contextmanager
    def use(self, model_id: str) -> Iterator[Any]:
        """Yield the loaded model on its run device; it cannot be offloaded until the block ends."""
        get_spec(model_id)  # unknown ids fail before any lock is taken
        with self._state_lock:
            load_lock = self._load_locks.setdefault(model_id, threading.Lock())
        with load_lock:  # one loader per id; concurrent callers wait for it and then share the result
            with self._state_lock:
                entry = self._loaded.get(model_id)
            if entry is None:
                start = time.perf_counter()
                with BUILD_LOCK:
                    model = self._loader(model_id, self.profile, self.device)
                entry = LoadedModel(model, self.device, module_bytes(model), time.perf_counter() - start)
                log.info("loaded %s in %.1fs (%.0f MB)", model_id, entry.load_seconds, entry.bytes / 2**20)
            with self._state_lock:
                self._loaded[model_id] = entry
                self._loaded.move_to_end(model_id)
                entry.users += 1
            try:
                self._make_room_and_place(model_id, entry)
            except BaseException:
                with self._state_lock:
                    entry.users -= 1
                raise
        try:
            yield entry.model
        finally:
            with self._state_lock:
                entry.users -= 1

    def run(
        self,
        model_id: str,
        fn: Callable[[Any], Any],
        *,
        action: str = "run",
        prompt: str | None = None,
        request_id: str | None = None,
    ) -> Any:
        """``fn(model)`` with the model loaded and pinned; returns what ``fn`` returns.

        Out of memory while loading or running it: free memory (:meth:`free_memory`) and call ``fn`` once
        more; a second out-of-memory raises :class:`OutOfMemory`, which says what to do. Every call is
        counted and logged by ``self.monitor`` (``prompt`` is logged only when the owner enabled that).
        """
        start = time.perf_counter()
        weights: str | None = None
        outcome, error_type = "ok", None
        try:
            for attempt in (1, 2):
                try:
                    with self.use(model_id) as model:
                        weights = weights_profile(model)
                        return fn(model)
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    first_line = str(err).strip().split("\n")[0]
                    detail = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
                    where = "CPU" if isinstance(err, MemoryError) else "GPU"
                # Freeing happens here, outside the except block, so the failed attempt's traceback (whose
                # frames hold that attempt's tensors) is already released when memory is counted again.
                if attempt == 1:
                    log.warning(
                        "out of memory with %s (%s); freeing memory and retrying once", model_id, detail
                    )
                    self.free_memory(keep=model_id)
                    outcome = "recovered"
            raise OutOfMemory(model_id, where, detail)
        except BaseException as err:
            outcome, error_type = outcome_of(err), type(err).__name__
            raise
        finally:
            self.monitor.record(
                model_id,
                action=action,
                seconds=time.perf_counter() - start,
                weights=weights,
                outcome=outcome,
                error_type=error_type,
                prompt=prompt,
                request_id=request_id,
            )

    def free_memory(self, keep: str | None = None) -> list[str]:
        """Free what no request is using, least recently used first; returns the ids freed.

        On a GPU idle models move to the CPU (they come back quickly when asked for) and CUDA's cache is
        emptied; on the CPU idle models are dropped (they load again when asked for). ``keep`` stays.
        """
        on_gpu = self.device.startswith("cuda")
        with self._state_lock:
            held = self._held_parts(keep)
            idle = [  # oldest first; a model whose shared part a running model holds stays with it
                (k, e)
                for k, e in self._loaded.items()
                if k != keep and e.users == 0 and not held & set(_parts(e.model))
            ]
            if not on_gpu:
                for model_id, _ in idle:
                    del self._loaded[model_id]
        freed = [model_id for model_id, entry in idle if not on_gpu or entry.device != "cpu"]
        if on_gpu:
            for model_id, entry in idle:
                if model_id in freed:
                    self._offload(entry)
        idle = entry = None  # drop our references before collecting, or a dropped model stays alive
        gc.collect()
        if on_gpu:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("freed memory: %s", ", ".join(freed) or "nothing idle")
        return freed

    def get(self, model_id: str) -> Any:
        """The loaded model (no usage pin: prefer :meth:`use` while running it)."""
        with self.use(model_id) as model:
            return model

    def _held_parts(self, model_id: str | None) -> set[str]:
        """Shared parts held by a running model or by ``model_id`` (call under ``_state_lock``)."""
        return {p for k, e in self._loaded.items() if e.users > 0 or k == model_id for p in _parts(e.model)}

    def _resident_bytes(self, entries: list[LoadedModel]) -> int:
        """Bytes of ``entries`` on the device, each shared part counted once."""
        parts = {p for e in entries for p in _parts(e.model)}
        return sum(e.bytes for e in entries) + sum(self.shared.bytes(p) for p in parts)

    def _offload(self, entry: LoadedModel) -> None:
        entry.model = entry.model.to("cpu")
        entry.device = "cpu"
        moved = set(_parts(entry.model))
        if moved:  # the models sharing a part went to the CPU with it
            with self._state_lock:
                for other in self._loaded.values():
                    if moved & set(_parts(other.model)):
                        other.device = "cpu"

    def _make_room_and_place(self, model_id: str, entry: LoadedModel) -> None:
        if not self.device.startswith("cuda"):
            return
        with self._state_lock:
            on_device = {k: e for k, e in self._loaded.items() if e.device == self.device and k != model_id}
            held = self._held_parts(model_id)
            victims = []
            for other_id, other in self._loaded.items():  # oldest first
                if self._resident_bytes([*on_device.values(), entry]) <= self.gpu_budget_bytes:
                    break
                if other_id in on_device and other.users == 0 and not held & set(_parts(other.model)):
                    victims.append((other_id, other))
                    del on_device[other_id]
        for other_id, other in victims:
            log.info("offloading %s to CPU to make room for %s", other_id, model_id)
            self._offload(other)
        if entry.device != self.device:
            entry.model = entry.model.to(self.device)
            entry.device = self.device

    def loaded(self) -> dict[str, dict[str, Any]]:
        """What is loaded where, for the About tab and the logs."""
        with self._state_lock:
            return {
                k: {
                    "device": e.device,
                    "megabytes": round(e.bytes / 2**20, 1),
                    "load_seconds": round(e.load_seconds, 2),
                }
                for k, e in self._loaded.items()
            }


def _load_by_kind(model_id: str, profile: Profile, device: str, shared: SharedParts | None = None) -> Any:
    import mmdemo

    if get_spec(model_id).kind == "captioner":
        return mmdemo.load_captioner(model_id, profile, device=device)
    return mmdemo.load_generator(model_id, profile, device=device, shared=shared)
