"""Votes out of the database: a CSV or JSON-lines download, and an optional push to a Hub dataset.

The export holds what a vote means (task, profile, the two models, the input, the choice, times), never
the session hash or file paths. On a Space without persistent storage, :class:`HubVoteExporter` appends
each new vote to a JSON-lines file that ``huggingface_hub.CommitScheduler`` commits to a dataset repo
every few minutes, so votes outlive the Space's restarts.
"""

from __future__ import annotations

import csv
import json
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mmdemo.arena import db

EXPORT_COLUMNS = (
    "battle_id",
    "task",
    "profile",
    "model_a",
    "model_b",
    "choice",
    "prompt",
    "seed",
    "preset",
    "input_hash",
    "output_a_hash",
    "output_b_hash",
    "seconds_a",
    "seconds_b",
    "score_a",
    "score_b",
    "score_name",
    "created_at",
    "voted_at",
    "app_version",
)


def vote_rows(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every vote with its battle, oldest first."""
    with sessions() as session:
        pairs = session.execute(
            select(db.Battle, db.Vote).join(db.Vote).order_by(db.Vote.created_at, db.Vote.battle_id)
        ).all()
    rows = []
    for battle, vote in pairs:
        row = {c: getattr(battle, c, None) for c in EXPORT_COLUMNS}
        row.update(
            battle_id=battle.id,
            choice=vote.choice,
            created_at=battle.created_at.isoformat() + "Z",
            voted_at=vote.created_at.isoformat() + "Z",
        )
        rows.append(row)
    return rows


def write_votes(sessions: sessionmaker[Session], fmt: str, folder: Path | None = None) -> Path:
    """All votes as ``votes.csv`` or ``votes.jsonl`` in a fresh folder; returns the file's path."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"Unknown export format {fmt!r}; choose 'csv' or 'jsonl'.")
    rows = vote_rows(sessions)
    folder = Path(folder or tempfile.mkdtemp(prefix="mmdemo-votes-"))
    path = folder / f"arena_votes.{fmt}"
    with path.open("w", newline="", encoding="utf-8") as handle:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return path


class HubVoteExporter:
    """Appends each vote to ``folder/votes-<replica>.jsonl``; a CommitScheduler pushes the folder.

    Each replica writes its own file, so replicas never overwrite each other's commits.
    ``hf_api`` lets tests replace the Hub with a stub.
    """

    def __init__(self, repo_id: str, folder: Path, every_minutes: float = 10.0, *, hf_api: Any = None):
        from huggingface_hub import CommitScheduler

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"votes-{uuid.uuid4().hex[:12]}.jsonl"
        self.scheduler = CommitScheduler(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=self.folder,
            path_in_repo="votes",
            every=every_minutes,
            allow_patterns=["*.jsonl"],
            hf_api=hf_api,
        )
        self._lock = threading.Lock()

    def append(self, reveal: dict) -> None:
        row = {
            "battle_id": reveal["battle_id"],
            "task": reveal["task"],
            "profile": reveal["profile"],
            "model_a": reveal["model_a"],
            "model_b": reveal["model_b"],
            "choice": reveal["choice"],
            "prompt": reveal["prompt"],
            "seed": reveal["seed"],
            "input_hash": reveal["input_hash"],
            "created_at": reveal["created_at"],
            "voted_at": reveal["voted_at"],
            "app_version": reveal["app_version"],
        }
        # The scheduler's lock: never commit a half-written line.
        with self._lock, self.scheduler.lock:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def push_now(self) -> Any:
        return self.scheduler.trigger().result()

    def stop(self) -> None:
        self.scheduler.stop()
