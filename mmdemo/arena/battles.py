"""Blind battles: draw two models, run them on the same input, store everything, take one vote.

The browser (and the API) only ever sees the battle's random id and the two outputs: pictures are
re-encoded from their pixels into fresh PNGs with random file names (no text chunks, no model name
anywhere), captions are plain text. Names, times and scores come back only with the vote, or at once
for a battle that cannot be voted on because one side failed.

Pictures behind votes are kept in ``<data dir>/arena_images/`` for ``keep_images_days`` days and at
most ``max_image_bytes`` in total (oldest first out); the database keeps each picture's sha256, so a
vote stays meaningful after its picture is gone.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mmdemo import inputs, service
from mmdemo.arena import db
from mmdemo.arena.ratings import Leaderboard, compute_leaderboard
from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY
from mmdemo.runtime import ModelManager

log = logging.getLogger(__name__)
TASK_MODELS = {"generate": GENERATOR_IDS, "caption": CAPTIONER_IDS}
# The report's 1091 text-to-image test prompts are computed from a Flickr8k ``captions.txt`` (or a folder or
# dataset id) named here, never shipped: the captions are Flickr8k's, not ours to redistribute.
FLICKR8K_ENV = "MMDEMO_FLICKR8K"


class ArenaError(ValueError):
    """A request the arena refuses, with a message written for the person (unknown id, already voted...)."""


class RateLimited(ArenaError):
    pass


@dataclass
class ArenaConfig:
    """Where votes live and how the arena protects them. Every field has a command-line/env twin in app.py."""

    data_dir: Path | None = None  # None: db.default_data_dir() (survives restarts)
    db_url: str | None = None  # None: SQLite in data_dir; "postgresql://..." for a shared server
    battles_per_minute: int = 30  # per browser session; a person rarely reads two pictures in 2 s
    votes_per_minute: int = 60
    battle_ttl_minutes: float = 60.0  # an older battle can no longer be voted on
    keep_images_days: float = 30.0  # arena pictures older than this are deleted
    max_image_bytes: int = 2 * 2**30  # and the folder never grows past this (oldest deleted first)
    models: tuple[str, ...] | None = None  # restrict the draw to these ids (None: every available model)
    preset: str = "fast"  # generation preset used in every battle
    bootstrap_rounds: int = 200
    export_repo: str | None = None  # a Hub dataset repo id: new votes pushed there as JSON lines
    export_every_minutes: float = 10.0

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, db_url: str | None = None) -> ArenaConfig:
        """Defaults, overridden by ``MMDEMO_ARENA_MODELS`` (comma-separated ids), ``MMDEMO_ARENA_EXPORT_REPO``,
        ``MMDEMO_ARENA_BATTLES_PER_MINUTE`` and ``MMDEMO_ARENA_VOTES_PER_MINUTE``."""
        env = os.environ
        models = tuple(m.strip() for m in env.get("MMDEMO_ARENA_MODELS", "").split(",") if m.strip())
        return cls(
            data_dir=Path(data_dir) if data_dir else None,
            db_url=db_url,
            models=models or None,
            export_repo=env.get("MMDEMO_ARENA_EXPORT_REPO") or None,
            battles_per_minute=int(env.get("MMDEMO_ARENA_BATTLES_PER_MINUTE", cls.battles_per_minute)),
            votes_per_minute=int(env.get("MMDEMO_ARENA_VOTES_PER_MINUTE", cls.votes_per_minute)),
        )

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else db.default_data_dir()


@dataclass
class BattleView:
    """What the person sees of a fresh battle: never a model name while it can still be voted on."""

    battle_id: str
    outputs: tuple[Any, Any]  # picture paths or captions; None for a side that failed
    votable: bool
    status: str
    reveal: dict | None = None  # names, times, errors: only for a battle that cannot be voted on


def app_version() -> str:
    try:
        from importlib.metadata import version

        return version("mmdemo")
    except Exception:  # noqa: BLE001 - not installed as a package: a checkout
        return "dev"


# ------------------------------------------------------------------------------------------------ service calls

# The only places that call the model service, so a change in its signatures is a change here.


def check_generation(prompt: Any, seed: Any, preset: str, manager: ModelManager, availability: dict) -> Any:
    """Checked settings (``.prompt``, ``.seed``, ``.preset``, ``.notices``) shared by both generators."""
    profiles = {m: p for m, p in availability.items() if p}
    return service.check_generate_settings(
        prompt, seed, preset, profiles=profiles, device=str(manager.device)
    )


def run_generator(
    manager: ModelManager, settings: Any, model_id: str, scorer: Callable | None
) -> tuple[Any, Any]:
    """(PIL image or None, record with .seconds/.weights/.score/.score_name/.error) for one generator."""
    for _, image, record in service.generate_images(manager, settings, [model_id], scorer=scorer):
        return image, record
    raise RuntimeError(f"the service returned nothing for {model_id}")


def run_captioner(manager: ModelManager, image: Any, model_id: str) -> Any:
    """The record (with .caption/.seconds/.weights/.error) of one captioner on one checked image."""
    records, _notices = service.caption_image(manager, image, model_id)
    return records[0]


# ------------------------------------------------------------------------------------------------ the arena


def _set_side(battle: db.Battle, side: str, record: Any, **outputs: Any) -> None:
    """One side's columns: its ``record``'s seconds and weights, and ``outputs`` by column name without the side
    (``output_path=`` sets ``output_a_path``, ``score=`` sets ``score_a``)."""
    for name, value in {"seconds": record.seconds, "weights": record.weights, **outputs}.items():
        head, _, tail = name.partition("_")
        setattr(battle, f"{head}_{side}_{tail}" if tail else f"{head}_{side}", value)


class Arena:
    """Battles, votes and leaderboards on one database, for the models one app can run.

    Args:
        config: storage and limits.
        manager: runs the models.
        availability: model id -> ``"full"``, ``"demo"`` or None (what resolves where).
        scorer: optional prompt-alignment judge for generated pictures (revealed with the vote).
    """

    def __init__(
        self,
        config: ArenaConfig,
        manager: ModelManager,
        availability: dict[str, str | None],
        *,
        scorer: Callable | None = None,
    ):
        self.config = config
        self.manager = manager
        self.availability = availability
        self.scorer = scorer
        self.data_dir = config.resolved_data_dir()
        self.images_dir = self.data_dir / "arena_images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.url = db.database_url(config.db_url, self.data_dir)
        self.sessions = db.open_database(self.url)
        self.salt = db.session_salt(self.sessions)
        self.version = app_version()
        self._cache: dict[tuple[str, str], tuple[tuple, Leaderboard]] = {}
        self._cache_lock = threading.Lock()
        self._battles_since_prune = 0
        self.exporter = None
        if config.export_repo:
            from mmdemo.arena.export import HubVoteExporter

            self.exporter = HubVoteExporter(
                config.export_repo, self.data_dir / "arena_export", config.export_every_minutes
            )
        self.prune_images()

    # -------------------------------------------------------------------------------- who plays

    def pool(self, task: str) -> tuple[str, list[str]]:
        """(weights profile, model ids) a battle of ``task`` draws from.

        Both sides always run the same kind of weights, so demo and full votes never meet: full
        weights when at least two models of the task have them, else demo weights.
        """
        if task not in TASK_MODELS:
            raise ArenaError(f"Unknown task {task!r}; choose 'generate' or 'caption'.")
        allowed = [m for m in TASK_MODELS[task] if self.config.models is None or m in self.config.models]
        by_profile = {p: [m for m in allowed if self.availability.get(m) == p] for p in ("full", "demo")}
        profile = "full" if len(by_profile["full"]) >= 2 else "demo"
        return profile, by_profile[profile]

    def _draw(self, task: str) -> tuple[str, str, str]:
        profile, models = self.pool(task)
        if len(models) < 2:
            raise ArenaError(
                f"The arena needs two {'generators' if task == 'generate' else 'captioners'} with weights; "
                f"only {len(models)} available here."
            )
        model_a, model_b = random.SystemRandom().sample(models, 2)  # random sides: no position bias
        return profile, model_a, model_b

    def anonymous(self, session_id: str | None) -> str:
        """Salted hash of the browser session: enough to rate-limit and to count, never who it was."""
        return hashlib.sha256(f"{self.salt}:{session_id or 'anonymous'}".encode()).hexdigest()[:32]

    def _check_rate(self, session: Any, table: type, who: str, limit: int, what: str) -> None:
        since = db.utcnow() - timedelta(seconds=60)
        recent = session.scalar(
            select(func.count())
            .select_from(table)
            .where(table.session_hash == who, table.created_at >= since)
        )
        if recent >= limit:
            raise RateLimited(
                f"Slow down: at most {limit} {what} a minute per session. Try again in a minute."
            )

    # -------------------------------------------------------------------------------- battles

    def _admit_battle(self, session_id: str | None) -> str:
        """The session's anonymous hash, once its battle rate allows one more."""
        who = self.anonymous(session_id)
        with self.sessions() as session:
            self._check_rate(session, db.Battle, who, self.config.battles_per_minute, "battles")
        return who

    def start_generate(self, prompt: Any, seed: Any, session_id: str | None = None) -> BattleView:
        """Two anonymous generators draw the same prompt with the same seed and preset."""
        who = self._admit_battle(session_id)
        try:
            settings = check_generation(prompt, seed, self.config.preset, self.manager, self.availability)
        except inputs.InputError as err:
            raise ArenaError(str(err)) from None
        battle = self._new_battle("generate", who)
        battle.input_hash = hashlib.sha256(settings.prompt.encode()).hexdigest()
        battle.prompt, battle.seed, battle.preset = settings.prompt, settings.seed, settings.preset
        paths: list[str | None] = []
        used: dict[str, Any] = {}
        for side, model_id in (("a", battle.model_a), ("b", battle.model_b)):
            image, record = run_generator(self.manager, settings, model_id, self.scorer)
            path = digest = None
            if image is not None and record.error is None:
                path, digest = self._store_image(image)
            _set_side(battle, side, record, output_path=str(path) if path else None, output_hash=digest,
                      score=record.score, error=record.error if path else (record.error or "no picture"))
            battle.score_name = battle.score_name or record.score_name
            used[side] = getattr(record, "settings", {})  # what the model actually ran with
            paths.append(str(path) if path else None)
        battle.settings = json.dumps({"notices": settings.notices, **used}, default=str)
        return self._save_battle(battle, (paths[0], paths[1]))

    def start_caption(self, image: Any, session_id: str | None = None) -> BattleView:
        """Two anonymous captioners describe the same picture."""
        who = self._admit_battle(session_id)
        try:
            checked = inputs.load_image(image).value
        except inputs.InputError as err:
            raise ArenaError(str(err)) from None
        battle = self._new_battle("caption", who)
        input_path, battle.input_hash = self._store_image(checked)
        battle.input_path = str(input_path)
        captions: list[str | None] = []
        used: dict[str, Any] = {}
        for side, model_id in (("a", battle.model_a), ("b", battle.model_b)):
            record = run_captioner(self.manager, checked, model_id)
            used[side] = getattr(record, "settings", {})
            caption_hash = None if record.caption is None else hashlib.sha256(record.caption.encode()).hexdigest()
            _set_side(battle, side, record, output=record.caption, output_hash=caption_hash, error=record.error)
            captions.append(record.caption)
        battle.settings = json.dumps(used, default=str)
        return self._save_battle(battle, (captions[0], captions[1]))

    def _new_battle(self, task: str, who: str) -> db.Battle:
        """A battle of ``task`` between two models drawn for it, by session ``who``; inputs and outputs follow."""
        profile, model_a, model_b = self._draw(task)
        return db.Battle(id=secrets.token_urlsafe(18), task=task, profile=profile, model_a=model_a,
                         model_b=model_b, settings="{}", session_hash=who, app_version=self.version)  # fmt: skip

    def _save_battle(self, battle: db.Battle, outputs: tuple[Any, Any]) -> BattleView:
        battle.created_at = db.utcnow()
        with self.sessions() as session:
            session.add(battle)
            session.commit()
        self._battles_since_prune += 1
        if self._battles_since_prune >= 50:
            self._battles_since_prune = 0
            self.prune_images()
        if battle.failed:
            failed = " and ".join(s for s, e in (("A", battle.error_a), ("B", battle.error_b)) if e)
            status = f"⚠️ Model {failed} failed, so this battle cannot be voted on. Start a new battle."
            return BattleView(battle.id, outputs, False, status, reveal=self._reveal(battle, None))
        return BattleView(battle.id, outputs, True, "Which is better? Vote to reveal the models.")

    # -------------------------------------------------------------------------------- votes

    def vote(self, battle_id: Any, choice: Any, session_id: str | None = None) -> dict:
        """Record the one vote of a battle and reveal its models; refuses anything else clearly."""
        if choice not in db.CHOICES:
            raise ArenaError(f"Unknown choice {choice!r}; vote one of: {', '.join(db.CHOICES)}.")
        if not isinstance(battle_id, str) or not battle_id.strip():
            raise ArenaError("No battle to vote on: start a battle first.")
        battle_id = battle_id.strip()
        who = self.anonymous(session_id)
        with self.sessions() as session:
            self._check_rate(session, db.Vote, who, self.config.votes_per_minute, "votes")
            battle = session.get(db.Battle, battle_id)
            if battle is None:
                raise ArenaError(f"Unknown battle id {battle_id[:60]!r}: start a new battle.")
            if battle.failed:
                raise ArenaError("This battle cannot be voted on: one side failed. Start a new battle.")
            if battle.created_at < db.utcnow() - timedelta(minutes=self.config.battle_ttl_minutes):
                raise ArenaError(
                    f"This battle expired ({self.config.battle_ttl_minutes:g} minutes to vote). Start a new battle."
                )
            vote = db.Vote(battle_id=battle_id, choice=choice, session_hash=who, created_at=db.utcnow())
            session.add(vote)
            try:
                session.commit()  # the primary key refuses a second vote, even a simultaneous one
            except IntegrityError:
                session.rollback()
                raise ArenaError("This battle already has a vote: each battle counts once.") from None
            reveal = self._reveal(battle, vote)
        if self.exporter is not None:
            self.exporter.append(reveal)
        return reveal

    def _reveal(self, battle: db.Battle, vote: db.Vote | None) -> dict:
        def side(s: str) -> dict:
            model_id = getattr(battle, f"model_{s}")
            return {
                "model": model_id,
                "name": REGISTRY[model_id].display_name if model_id in REGISTRY else model_id,
                "seconds": getattr(battle, f"seconds_{s}"),
                "weights": getattr(battle, f"weights_{s}"),
                "score": getattr(battle, f"score_{s}"),
                "error": getattr(battle, f"error_{s}"),
            }

        a, b = side("a"), side("b")
        return {
            "battle_id": battle.id,
            "task": battle.task,
            "profile": battle.profile,
            "model_a": a["model"],
            "model_b": b["model"],
            "choice": vote.choice if vote else None,
            "a": a,
            "b": b,
            "score_name": battle.score_name,
            "prompt": battle.prompt,
            "seed": battle.seed,
            "preset": battle.preset,
            "input_hash": battle.input_hash,
            "created_at": battle.created_at.isoformat() + "Z",
            "voted_at": vote.created_at.isoformat() + "Z" if vote else None,
            "app_version": battle.app_version,
        }

    def battle_reveal(self, battle_id: str) -> dict | None:
        """The reveal of a battle that has a vote or cannot get one; None while it is still blind."""
        with self.sessions() as session:
            battle = session.get(db.Battle, battle_id)
            if battle is None or (battle.vote is None and not battle.failed):
                return None
            return self._reveal(battle, battle.vote)

    # -------------------------------------------------------------------------------- leaderboard

    def leaderboard(self, task: str, profile: str | None = None) -> Leaderboard:
        """Ratings for ``task`` on this app's weights profile; refitted only when votes were added."""
        profile = profile or self.pool(task)[0]
        where = (db.Battle.task == task, db.Battle.profile == profile)
        with self.sessions() as session:
            stamp = session.execute(
                select(func.count(), func.max(db.Vote.created_at))
                .select_from(db.Vote)
                .join(db.Battle)
                .where(*where)
            ).one()
            key = (task, profile)
            with self._cache_lock:
                cached = self._cache.get(key)
            if cached and cached[0] == tuple(stamp):
                return cached[1]
            rows = session.execute(
                select(db.Battle.model_a, db.Battle.model_b, db.Vote.choice)
                .join(db.Vote)
                .where(*where)
                .order_by(db.Vote.created_at, db.Vote.battle_id)
            ).all()
        names = {m: REGISTRY[m].display_name for m in REGISTRY}
        board = compute_leaderboard(
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            bootstrap_rounds=self.config.bootstrap_rounds,
            display_names=names,
        )
        with self._cache_lock:
            self._cache[key] = (tuple(stamp), board)
        return board

    # -------------------------------------------------------------------------------- pictures

    def _store_image(self, image: Image.Image) -> tuple[Path, str]:
        """A fresh PNG from the pixels only (no text chunks) under a random name; (path, sha256)."""
        clean = Image.fromarray(np.asarray(image.convert("RGB")))
        buffer = io.BytesIO()
        clean.save(buffer, format="PNG")
        data = buffer.getvalue()
        name = secrets.token_hex(16)
        folder = self.images_dir / name[:2]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, path)  # never a half-written picture under a real name
        return path, hashlib.sha256(data).hexdigest()

    def prune_images(self) -> int:
        """Apply the retention policy; returns how many pictures were deleted."""
        files = []
        for path in self.images_dir.glob("*/*.png"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another replica pruned it
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        cutoff = time.time() - self.config.keep_images_days * 86400
        total = sum(size for _, size, _ in files)
        deleted = 0
        for mtime, size, path in files:
            if mtime >= cutoff and total <= self.config.max_image_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            deleted += 1
        if deleted:
            log.info("arena: deleted %d old pictures (retention policy)", deleted)
        return deleted


# ------------------------------------------------------------------------------------------------ prompts


def flickr8k_test_prompts() -> list[str]:
    """The report's text-to-image test prompts from ``$MMDEMO_FLICKR8K``, or [] when it names nothing."""
    source = os.environ.get(FLICKR8K_ENV)
    if not source:
        return []
    return _test_prompts(source)


@functools.lru_cache(maxsize=2)
def _test_prompts(source: str) -> list[str]:
    from mmdemo.data.flickr8k import load_flickr8k, text_to_image_split

    return [p.strip() for p in text_to_image_split(load_flickr8k(source))[1] if p.strip()]


def random_prompt(profile: str, rng: random.Random | None = None) -> str:
    """A prompt from the running profile's prompt set: Shapes for demo weights; for full weights the report's
    Flickr8k test prompts when ``$MMDEMO_FLICKR8K`` names the captions, else Shapes too."""
    rng = rng or random.Random()
    prompts = flickr8k_test_prompts() if profile == "full" else []
    if prompts:
        return rng.choice(prompts)
    from mmdemo.data.shapes import sample_single_object_prompts

    return sample_single_object_prompts(1, seed=rng.randrange(2**31))[0][0]
