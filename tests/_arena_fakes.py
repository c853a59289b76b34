"""Fast stand-ins for the two model calls the arena makes, so arena tests exercise the database and the
rules, not the networks (the real app with real demo models: tests/test_arena_app.py).

A fake picture carries its model's name in the PNG metadata on purpose: the arena must strip it.
"""

from __future__ import annotations

import types

from PIL import Image

from mmdemo.arena import battles


def install_fake_models(monkeypatch, failing: tuple[str, ...] = ()) -> None:
    """Replace :func:`battles.run_generator` / :func:`battles.run_captioner` for one test."""

    def run_generator(manager, settings, model_id, scorer):
        if model_id in failing:
            return None, types.SimpleNamespace(
                seconds=0.01, weights="demo", score=None, score_name=None, error=f"{model_id} exploded"
            )
        shade = (sum(map(ord, model_id)) + int(settings.seed)) % 256
        image = Image.new("RGB", (32, 32), (shade, 255 - shade, 128))
        image.info["model"] = model_id  # metadata a careless server would leak
        record = types.SimpleNamespace(
            seconds=0.02, weights="demo", score=0.5, score_name="fake score", error=None
        )
        return image, record

    def run_captioner(manager, image, model_id):
        if model_id in failing:
            return types.SimpleNamespace(
                caption=None, seconds=0.01, weights="demo", error=f"{model_id} exploded"
            )
        return types.SimpleNamespace(
            caption=f"a picture told by fake {len(model_id)}", seconds=0.02, weights="demo", error=None
        )

    monkeypatch.setattr(battles, "run_generator", run_generator)
    monkeypatch.setattr(battles, "run_captioner", run_captioner)
