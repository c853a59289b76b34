"""Shared test fixtures and helpers: one of each, so no test file grows its own.

* :func:`require_or_skip`: a missing prerequisite (the shared Flickr8k data, Chromium, PostgreSQL) skips a test on
  a developer's machine and says why, but FAILS it under CI (``CI`` set), where everything must be present.
* ``app_server``: launches a Gradio app in-process on a port the server itself bound, yields its URL;
  ``browser_app_url``: the demo app served that way for a browser test module (``CHROMIUM``, ``CHROMIUM_ARGS``).
* ``shapes_dataset``: builds (once per session and settings) a Shapes dataset in the Flickr8k layout.
* ``fake_module``: puts a stand-in module into ``sys.modules`` (or makes an import fail) for one test.
* :func:`load_script`: imports a ``train/`` or ``bench/`` script as a module from its file path.

The real Flickr8k captions and the report's split live outside the repository (``../shared/data/flickr8k``
next to the checkout, or wherever ``MMDEMO_SHARED_DATA`` points); the ``flickr8k_shared`` fixture finds them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set to anything but empty/0/false, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_or_skip(reason: str) -> None:
    """Skip the calling test because a prerequisite is missing; under CI, fail it instead.

    A skip is right on a laptop without Chromium; in CI the same skip would hide a test that never ran.
    """
    if in_ci():
        pytest.fail(f"CI is missing a prerequisite (a skip would hide this test): {reason}", pytrace=False)
    pytest.skip(reason)


# Tiers that take minutes: each of their tests is also in the slow tier, which the default run leaves out
# (pyproject.toml: -m 'not slow and not fullsize') and CI runs as its own step (pytest -m slow).
SLOW_TIERS = ("app", "quality", "multiprocess", "bench", "browser")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.slow)


def load_script(name: str | Path, folder: str = "train") -> types.ModuleType:
    """Import ``<folder>/<name>.py`` (or a path) as a module: the scripts are files, not a package."""
    path = Path(name) if str(name).endswith(".py") else REPO_ROOT / folder / f"{name}.py"
    module_name = f"_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ shared data


def shared_data_root() -> Path:
    """The folder holding ``flickr8k/``: ``$MMDEMO_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MMDEMO_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def flickr8k_shared() -> Path:
    """Path to the shared Flickr8k folder (captions.txt + report splits); skip (fail in CI) without it."""
    folder = shared_data_root() / "flickr8k"
    if not (folder / "captions.txt").is_file():
        require_or_skip(
            f"shared Flickr8k data not found at {folder}; set MMDEMO_SHARED_DATA to the folder "
            "that contains flickr8k/captions.txt"
        )
    return folder


# ------------------------------------------------------------------------------------------------ app server


@contextlib.contextmanager
def serve_app(demo: Any, **launch_kwargs: Any) -> Iterator[str]:
    """Launch ``demo`` on 127.0.0.1 and yield its URL; close it afterwards.

    No port is guessed: Gradio binds one itself (from 7860 up, moving on when the bind fails), and the URL is
    read back from the running server, so two test runs on one machine never collide.
    """
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs)
    try:
        yield demo.local_url
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------------ browser

CHROMIUM = os.environ.get("MMDEMO_CHROMIUM", "/usr/bin/chromium")
# A closed network refuses Chromium's background connections: switch them off.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser_app_url(app_server) -> Iterator[str]:
    """The demo-profile app with its CSS, served for one browser test module (Chromium required)."""
    import shutil

    if not shutil.which(CHROMIUM):
        require_or_skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMDEMO_CHROMIUM)")
    import app

    with app_server(app.create_demo("demo"), css=app.APP_CSS) as url:
        yield url


@pytest.fixture(scope="session")
def app_server() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with app_server(demo, **launch_kwargs) as url:`` the app served for the block."""
    return serve_app


# ------------------------------------------------------------------------------------------------ Shapes data


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Callable[..., Path]:
    """``shapes_dataset(n, seed, **options)`` -> a Flickr8k-layout folder from
    ``mmdemo.data.shapes.generate_shapes_dataset`` (options: ``size``, ``max_objects``, ``style``).

    Deterministic for its settings, so each distinct dataset is written once per session and shared; a test that
    changes files in it must build its own with ``generate_shapes_dataset``.
    """
    from mmdemo.data.shapes import generate_shapes_dataset

    built: dict[tuple, Path] = {}

    def build(n: int, seed: int, **options: Any) -> Path:
        key = (n, seed, *sorted(options.items()))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"shapes_n{n}_seed{seed}") / "data"
            built[key] = Path(generate_shapes_dataset(folder, n=n, seed=seed, **options))
        return built[key]

    return build


# ------------------------------------------------------------------------------------------------ patching


@pytest.fixture
def fake_module(monkeypatch) -> Callable[..., types.ModuleType | None]:
    """``fake_module(name, **attributes)`` installs a stand-in module for one test;
    ``fake_module(name, missing=True)`` makes ``import name`` fail. Both are undone after the test."""

    def install(name: str, *, missing: bool = False, **attributes: Any) -> types.ModuleType | None:
        if missing:
            monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
            return None
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return install


# ------------------------------------------------------------------------------------------------ arena databases


@pytest.fixture(scope="session", autouse=True)
def arena_data_dir(tmp_path_factory) -> Iterator[Path]:
    """Every app a test builds keeps its arena votes in a temporary folder, never in ``~/.cache``."""
    folder = tmp_path_factory.mktemp("arena_data")
    previous = os.environ.get("MMDEMO_DATA_DIR")
    os.environ["MMDEMO_DATA_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MMDEMO_DATA_DIR", None)
    else:
        os.environ["MMDEMO_DATA_DIR"] = previous


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server: ``$MMDEMO_TEST_DB_URL``, else a throw-away cluster, else skip.

    In CI (``CI`` set) a missing PostgreSQL fails instead of skipping, so the database tests always run there.
    """
    import _postgres

    if url := os.environ.get("MMDEMO_TEST_DB_URL"):
        yield url
        return
    if reason := _postgres.missing_reason():
        require_or_skip(f"PostgreSQL: {reason}")
    with _postgres.throwaway_cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    import _postgres

    with _postgres.fresh_database(postgres_server) as url:
        yield url
