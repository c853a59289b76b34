"""Where arena battles and votes live: SQLAlchemy 2 models, the engine, and the schema's version.

SQLite by default (one file in the data folder), PostgreSQL when a URL names one, so several app
replicas can share the votes. The schema is created and upgraded by Alembic migrations
(``mmdemo/arena/migrations/versions``) on every start; the ``alembic_version`` table records where a
database stands, so an older database is upgraded in place and keeps its votes.

Integrity lives in the database, not in Python: a vote's primary key *is* its battle id (one vote per
battle, even for two simultaneous requests), its foreign key must name a stored battle, and its choice
is checked against the four allowed values.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
CHOICES = ("A", "B", "tie", "both bad")
TASKS = ("generate", "caption")
SPACE_PERSISTENT_DIR = Path("/data")  # where a Hugging Face Space mounts its persistent storage


def utcnow() -> dt.datetime:
    """Naive UTC: SQLite keeps no time zone, so both databases store and compare the same values."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Battle(Base):
    """Two anonymous models answering the same input; ``a``/``b`` are the sides as the person saw them."""

    __tablename__ = "arena_battles"
    __table_args__ = (
        Index("ix_arena_battles_session_created", "session_hash", "created_at"),  # rate limit
        Index("ix_arena_battles_task_profile", "task", "profile"),  # one leaderboard's battles
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # random, unguessable
    task: Mapped[str] = mapped_column(String(16))  # "generate" or "caption"
    profile: Mapped[str] = mapped_column(String(8))  # "demo" or "full": never in one leaderboard
    model_a: Mapped[str] = mapped_column(String(64))
    model_b: Mapped[str] = mapped_column(String(64))
    input_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the prompt or the image's pixels
    prompt: Mapped[str | None] = mapped_column(Text)
    input_path: Mapped[str | None] = mapped_column(String(255))  # the captioned image, in the data folder
    seed: Mapped[int | None] = mapped_column(BigInteger)
    preset: Mapped[str | None] = mapped_column(String(16))
    settings: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    output_a: Mapped[str | None] = mapped_column(Text)  # a caption (images live in files)
    output_b: Mapped[str | None] = mapped_column(Text)
    output_a_hash: Mapped[str | None] = mapped_column(String(64))
    output_b_hash: Mapped[str | None] = mapped_column(String(64))
    output_a_path: Mapped[str | None] = mapped_column(String(255))
    output_b_path: Mapped[str | None] = mapped_column(String(255))
    seconds_a: Mapped[float | None] = mapped_column(Float)
    seconds_b: Mapped[float | None] = mapped_column(Float)
    score_a: Mapped[float | None] = mapped_column(Float)
    score_b: Mapped[float | None] = mapped_column(Float)
    score_name: Mapped[str | None] = mapped_column(String(64))
    weights_a: Mapped[str | None] = mapped_column(String(8))
    weights_b: Mapped[str | None] = mapped_column(String(8))
    error_a: Mapped[str | None] = mapped_column(Text)  # a failed side: the battle cannot be voted on
    error_b: Mapped[str | None] = mapped_column(Text)
    session_hash: Mapped[str] = mapped_column(String(64))  # salted hash of the browser session, never an IP
    app_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    vote: Mapped[Vote | None] = relationship(back_populates="battle", uselist=False)

    @property
    def failed(self) -> bool:
        return self.error_a is not None or self.error_b is not None


class Vote(Base):
    """The person's verdict; the primary key is the battle id, so a battle holds at most one vote."""

    __tablename__ = "arena_votes"
    __table_args__ = (
        CheckConstraint("choice IN ('A', 'B', 'tie', 'both bad')", name="ck_arena_votes_choice"),
        Index("ix_arena_votes_session_created", "session_hash", "created_at"),
    )

    battle_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("arena_battles.id", ondelete="CASCADE"), primary_key=True
    )
    choice: Mapped[str] = mapped_column(String(8))
    session_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    battle: Mapped[Battle] = relationship(back_populates="vote")


class Meta(Base):
    """Key-value settings shared by every replica on one database (e.g. the session-hash salt)."""

    __tablename__ = "arena_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# ------------------------------------------------------------------------------------------------ locations


def default_data_dir() -> Path:
    """``$MMDEMO_DATA_DIR``; else a Space's persistent ``/data`` when mounted; else ``~/.cache/mmdemo``.

    The default survives restarts (unlike a temp folder), so votes outlive the process.
    """
    if env := os.environ.get("MMDEMO_DATA_DIR"):
        return Path(env)
    if (
        os.environ.get("SPACE_ID")
        and SPACE_PERSISTENT_DIR.is_dir()
        and os.access(SPACE_PERSISTENT_DIR, os.W_OK)
    ):
        return SPACE_PERSISTENT_DIR / "mmdemo"
    return Path.home() / ".cache" / "mmdemo"


def database_url(db_url: str | None, data_dir: Path) -> str:
    """``db_url`` (or ``$MMDEMO_DB_URL``) when given, else SQLite in ``data_dir/arena.sqlite3``.

    ``postgresql://`` URLs use the psycopg 3 driver.
    """
    url = db_url or os.environ.get("MMDEMO_DB_URL")
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(data_dir / 'arena.sqlite3').resolve()}"
    if url.startswith("postgres://"):  # the form many hosts print
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


# ------------------------------------------------------------------------------------------------ engine


def make_engine(url: str) -> Engine:
    """An engine tuned for many short writes from several threads (and, on SQLite, crash safety)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - DB-API objects
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
            cursor.execute("PRAGMA synchronous=FULL")  # a committed vote survives a killed process
            cursor.execute("PRAGMA foreign_keys=ON")  # SQLite enforces foreign keys only when asked
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(connection=None):  # noqa: ANN001, ANN201 - alembic types stay out of the import path
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision``; replicas starting together take turns."""
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # One migrator at a time across replicas; released when this transaction ends.
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def open_database(url: str) -> sessionmaker[Session]:
    """Engine + upgraded schema + a session factory."""
    engine = make_engine(url)
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)


def meta_value(sessions: sessionmaker[Session], key: str, make: callable) -> str:  # type: ignore[valid-type]
    """The stored value for ``key``, created once by ``make()``; concurrent first starts agree on one."""
    with sessions() as session:
        found = session.scalar(select(Meta.value).where(Meta.key == key))
        if found is not None:
            return found
        try:
            session.add(Meta(key=key, value=make()))
            session.commit()
        except IntegrityError:  # another replica stored it first: use theirs
            session.rollback()
        return session.scalar(select(Meta.value).where(Meta.key == key))


def session_salt(sessions: sessionmaker[Session]) -> str:
    return meta_value(sessions, "session_salt", lambda: secrets.token_hex(32))
