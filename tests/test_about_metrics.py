"""The About tab's metric tables: intervals, provenance (command, seed, n), overlap sentences, latest gallery."""

from __future__ import annotations

import json
import os
import time

from mmdemo.registry import REGISTRY
from mmdemo.ui import about

RECORD = {"bleu1": 90.0, "bleu2": 80.0, "bleu3": 70.0, "bleu4": 60.0, "meteor": 45.0, "rouge_l": 70.0, "cider": 200.0,
          "n": 500, "seed": 0, "dataset": "shapes", "command": "python train/evaluate_captioner.py --model X",
          "intervals": {"bleu4": [58.0, 62.0], "meteor": [44.0, 46.0], "rouge_l": [69.0, 71.0], "cider": [190.0, 210.0]}}  # fmt: skip


def test_tables_show_intervals_provenance_and_overlap(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path / "ckpt"))
    for model_id, bleu4, interval in (
        ("resnet18-xattn", 60.0, [58.0, 62.0]),
        ("clipb32-xattn", 50.0, [48.0, 52.0]),
    ):
        folder = tmp_path / "ckpt" / "demo" / model_id
        folder.mkdir(parents=True)
        record = {**RECORD, "bleu4": bleu4, "intervals": {**RECORD["intervals"], "bleu4": interval}}
        (folder / "eval_shapes.json").write_text(json.dumps(record))
    rows = {row[0]: row for row in about.caption_table()}
    row = rows[REGISTRY["resnet18-xattn"].display_name]
    assert (
        row[2] == "90.0 / 80.0 / 70.0 / 60.0"
        and row[3] == "60.0 [58.0, 62.0]"
        and row[6] == "200.0 [190.0, 210.0]"
    )
    assert "n=500, seed 0" in row[7] and "`python train/evaluate_captioner.py --model X`" in row[7]
    assert rows[REGISTRY["qformer-bert"].display_name][-1] == "not measured yet"
    (line,) = about.comparisons()
    assert (
        line.startswith("bleu4: resnet18-xattn 60.00 [58.00, 62.00] vs clipb32-xattn")
        and "do not overlap" in line
    )

    runs = tmp_path / "runs"
    monkeypatch.setenv("MMDEMO_RUNS", str(runs))
    assert about.latest_gallery() is None
    for name in ("old", "new/all"):
        (runs / name).mkdir(parents=True)
        (runs / name / "gallery.html").write_text("<html></html>")
        os.utime(runs / name / "gallery.html", (time.time() + (100 if name == "new/all" else 0),) * 2)
    assert about.latest_gallery() == runs / "new" / "all" / "gallery.html"
