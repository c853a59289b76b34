"""Gradio UI: one builder per tab, assembled by :func:`build_app`.

Tab builders import no torch: they receive plain callables from :mod:`mmdemo.ui.handlers`, which talk
to :mod:`mmdemo.service`. ``app.py`` only parses flags and launches what :func:`build_app` returns.
"""

from __future__ import annotations

from mmdemo.ui.app import APP_CSS, build_app

__all__ = ["APP_CSS", "build_app"]
