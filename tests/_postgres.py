"""A throw-away PostgreSQL server for tests: ``MMDEMO_TEST_DB_URL`` when set, else a cluster we start.

Our own cluster lives in a fresh temporary folder owned by the ``postgres`` user (PostgreSQL refuses
to run as root), listens on a Unix socket in that folder only (no TCP port, so nothing to pick or collide
on), trusts local connections, and is stopped and deleted after the session. ``.ci/run`` starts one the same way and exports ``MMDEMO_TEST_DB_URL``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _newest_server_bin() -> Path:
    """``$MMDEMO_PG_BIN``, else the newest Debian server install (``/usr/lib/postgresql/<version>/bin``)."""
    if env := os.environ.get("MMDEMO_PG_BIN"):
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _newest_server_bin()


def missing_reason() -> str | None:
    """Why no PostgreSQL server can be had here, or None."""
    if os.environ.get("MMDEMO_TEST_DB_URL"):
        return None
    if not (PG_BIN / "initdb").is_file():
        return f"no PostgreSQL server binaries at {PG_BIN} (apt-get install postgresql, or set MMDEMO_TEST_DB_URL)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster on a Unix socket in a fresh folder; yield its superuser URL; stop and delete it."""
    folder = Path(tempfile.mkdtemp(prefix="mmdemo-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_server_user([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), **run
    )
    # The port only names the socket file (.s.PGSQL.5432) inside our private folder.
    options = f"-p 5432 -k {folder} -c listen_addresses='' -c fsync=on"
    subprocess.run(
        _as_server_user(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        ),
        **run,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={folder}"
    finally:
        subprocess.run(
            _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server for one test; dropped afterwards."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"mmdemo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
