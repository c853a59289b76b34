"""Shared test fixtures.

The real Flickr8k captions and the report's split live outside the repository
(``../shared/data/flickr8k`` next to the checkout, or wherever
``MMDEMO_SHARED_DATA`` points). Tests that need them use the ``flickr8k_shared``
fixture, which skips with the reason printed when the folder is absent, so a
fresh clone elsewhere still passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """The folder holding ``flickr8k/``: ``$MMDEMO_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MMDEMO_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def flickr8k_shared() -> Path:
    """Path to the shared Flickr8k folder (captions.txt + report splits), or skip."""
    folder = shared_data_root() / "flickr8k"
    if not (folder / "captions.txt").is_file():
        pytest.skip(
            f"shared Flickr8k data not found at {folder}; set MMDEMO_SHARED_DATA to the folder "
            "that contains flickr8k/captions.txt"
        )
    return folder
