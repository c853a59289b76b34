"""What the owner of an app that runs unattended for weeks needs: per-model counts, errors and latencies
since start, one JSON log line per model run, and the settings that keep the disk bounded.

Nothing personal is kept or logged: no IP addresses ever, and no prompts unless the owner sets
``MMDEMO_LOG_PROMPTS=1``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REQUEST_LOGGER = "mmdemo.requests"
log = logging.getLogger(REQUEST_LOGGER)

# A run ends in one of these. "recovered" ran after an out-of-memory error freed memory and it retried once;
# "unavailable" is a model without weights (or not implemented), "rejected" an input the model refused,
# "cancelled" a run stopped because its client went away.
OUTCOMES = ("ok", "recovered", "unavailable", "rejected", "cancelled", "out_of_memory", "error")
FAILED = ("out_of_memory", "error")

DEFAULT_CACHE_TTL = 3600  # seconds a generated picture, zip or upload stays downloadable
DEFAULT_MAX_FILE_SIZE = "20mb"  # a 12-megapixel phone photo is 3-8 MB; a decodable image never needs more


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class OpsSettings:
    """Launch settings for a long-running deployment, from the environment unless given.

    Attributes:
        cache_ttl: seconds before Gradio deletes generated files and uploads (``MMDEMO_CACHE_TTL``).
        max_file_size: largest upload the server accepts, e.g. ``"20mb"`` (``MMDEMO_MAX_FILE_SIZE``).
        log_prompts: put prompts in the request log (``MMDEMO_LOG_PROMPTS=1``); off by default.
    """

    cache_ttl: int = DEFAULT_CACHE_TTL
    max_file_size: str = DEFAULT_MAX_FILE_SIZE
    log_prompts: bool = False

    def __post_init__(self) -> None:
        if self.cache_ttl < 1:
            raise ValueError(f"cache time must be at least 1 second, got {self.cache_ttl}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OpsSettings:
        env = os.environ if environ is None else environ
        ttl = env.get("MMDEMO_CACHE_TTL", "").strip()
        try:
            cache_ttl = int(ttl) if ttl else DEFAULT_CACHE_TTL
        except ValueError:
            raise ValueError(f"MMDEMO_CACHE_TTL must be a whole number of seconds, got {ttl!r}") from None
        return cls(
            cache_ttl=cache_ttl,
            max_file_size=env.get("MMDEMO_MAX_FILE_SIZE", "").strip() or DEFAULT_MAX_FILE_SIZE,
            log_prompts=_env_flag(env.get("MMDEMO_LOG_PROMPTS")),
        )

    @property
    def delete_cache(self) -> tuple[int, int]:
        """Gradio's ``(frequency, age)``: files older than the TTL go at the next sweep, so none lives longer
        than 1.5 TTL; sweeps every half TTL (at most every 5 minutes: a sweep only lists the app's own files)."""
        return max(1, min(self.cache_ttl, 600) // 2), self.cache_ttl


def sweep_empty_dirs(root: str | Path, older_than: float) -> int:
    """Remove empty folders under ``root`` untouched for ``older_than`` seconds; returns how many.

    Gradio stores every cached file in a folder named after its hash and, when ``delete_cache`` removes the
    file, leaves the folder: one empty folder (an inode and a 4 KB block) per picture, forever. A folder's
    modification time is when its last file was added or removed, so an old empty folder is not about to be
    reused, except when the very same bytes are cached again in the microseconds between Gradio re-creating
    the folder and writing into it.
    """
    removed = 0
    cutoff = time.time() - older_than
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        if dirpath == str(root) or dirnames or filenames:
            continue
        try:
            if os.stat(dirpath).st_mtime < cutoff:
                os.rmdir(dirpath)
                removed += 1
        except OSError:  # filled or removed meanwhile
            continue
    return removed


def folder_size(root: str | Path) -> tuple[int, int]:
    """``(bytes, entries)`` under ``root``: files' sizes, and files plus folders."""
    total, entries = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total, entries


def new_request_id() -> str:
    """Groups the log lines of one request (a five-model generation writes five); random, not a user id."""
    return uuid.uuid4().hex[:12]


@dataclass
class _ModelStats:
    runs: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    seconds: deque = field(default_factory=lambda: deque(maxlen=RequestMonitor.LATENCY_WINDOW))


class RequestMonitor:
    """Per-model counts, errors and latency percentiles since start, and the JSON request log.

    Counts are exact since start; percentiles are over the last ``LATENCY_WINDOW`` successful runs of each
    model, so memory stays bounded however long the app runs.
    """

    LATENCY_WINDOW = 1000

    def __init__(self, *, log_prompts: bool | None = None):
        self.log_prompts = OpsSettings.from_env().log_prompts if log_prompts is None else log_prompts
        self.started = time.time()
        self._lock = threading.Lock()
        self._stats: dict[str, _ModelStats] = {}

    def record(
        self,
        model_id: str,
        *,
        action: str,
        seconds: float,
        weights: str | None,
        outcome: str,
        error_type: str | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Count one model run and write its log line; returns the line's fields."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
        with self._lock:
            stats = self._stats.setdefault(model_id, _ModelStats())
            stats.runs += 1
            stats.outcomes[outcome] += 1
            if outcome in ("ok", "recovered"):
                stats.seconds.append(seconds)
        line: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request": request_id,
            "action": action,
            "model": model_id,
            "seconds": round(seconds, 3),
            "weights": weights,
            "outcome": outcome,
            "error_type": error_type,
        }
        if self.log_prompts and prompt is not None:
            line["prompt"] = prompt
        log.info(json.dumps(line, ensure_ascii=False))
        return line

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per model id: runs, each outcome's count, errors, and p50/p90/p99 seconds of successful runs."""
        with self._lock:
            copies = {m: (s.runs, dict(s.outcomes), list(s.seconds)) for m, s in self._stats.items()}
        result = {}
        for model_id, (runs, outcomes, seconds) in sorted(copies.items()):
            p50, p90, p99 = (
                (float(round(v, 3)) for v in np.percentile(seconds, [50, 90, 99]))
                if seconds
                else (None, None, None)
            )
            result[model_id] = {
                "runs": runs,
                "errors": sum(outcomes[o] for o in FAILED),
                **outcomes,
                "p50_seconds": p50,
                "p90_seconds": p90,
                "p99_seconds": p99,
            }
        return result

    def uptime_seconds(self) -> float:
        return round(time.time() - self.started, 1)


def setup_request_log(stream=None) -> None:
    """Write request lines to ``stream`` (stderr) as bare JSON, one per line, apart from the text logs."""
    if any(getattr(h, "_mmdemo_requests", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._mmdemo_requests = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # a JSON line must not also appear wrapped in the text log's format
