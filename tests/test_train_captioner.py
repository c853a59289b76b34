"""End-to-end tests of the captioner scripts on tiny configurations and a tiny Shapes set: training, exact
resume, the feature cache, reload through the public API, evaluation JSON, pretraining, accelerate launch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _accelerate_launch import assert_two_cpu_processes, two_cpu_processes
from conftest import load_script
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
evaluate_captioner = load_script("evaluate_captioner")
pretrain_shapes_vision = load_script("pretrain_shapes_vision")
train_captioner = load_script("train_captioner")

# 24 images -> 19 train / 5 val; batch 8 -> 3 steps per epoch (8, 8 and the last 3 pairs).
SMALL = [
    "--size",
    "tiny",
    "--batch-size",
    "8",
    "--epochs",
    "3",
    "--checkpointing-steps",
    "100",
    "--lr",
    "1e-3",
    "--config-override",
    '{"num_layers": 1, "ff_dim": 64, "d_model": 32}',
]


@pytest.fixture(scope="module")
def shapes_dir(shapes_dataset) -> Path:
    return shapes_dataset(n=24, seed=11, size=64)


def train(data: Path, out: Path, *extra: str, model: str = "resnet18-xattn") -> dict:
    args = train_captioner.parse_args(
        ["--model", model, "--data", str(data), "--out", str(out), *SMALL, *extra]
    )
    return train_captioner.main(args)


def test_train_reload_and_evaluate(shapes_dir, tmp_path, monkeypatch, capsys):
    import mmdemo

    summary = train(shapes_dir, tmp_path / "run")
    assert summary["steps"] == 9 and summary["epochs_done"] == 3 and summary["best_val_loss"] is not None
    out = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "vocab.json", "loss_curve.png", "train_log.json"):
        assert (out / name).is_file(), name
    log = json.loads((out / "train_log.json").read_text())
    assert [s for s, _ in log["history"]] == list(range(9)) and len(log["val_history"]) == 3
    assert log["val_history"][-1][2] < log["val_history"][0][2]  # it learns something even in 9 steps

    demo = tmp_path / "ckpts" / "demo" / "resnet18-xattn"
    shutil.copytree(out, demo, ignore=shutil.ignore_patterns("state", "feature_cache"))
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path / "ckpts"))
    captioner = mmdemo.load_captioner("resnet18-xattn", profile="demo", device="cpu")
    assert captioner.network.config.d_model == 32
    assert len(captioner.caption([shapes_dir / "Images" / "shapes_000000.png"])) == 1

    capsys.readouterr()
    args = evaluate_captioner.parse_args(
        [
            "--model",
            "resnet18-xattn",
            "--data",
            str(shapes_dir),
            "--profile",
            "demo",
            "--split",
            "all",
            "--limit",
            "6",
            "--out-dir",
            str(tmp_path / "eval"),
            "--metrics",
            "bleu,rouge_l,cider",  # METEOR's Java start-up alone takes 10-30 s: tests/test_caption_metrics.py
            "--resamples",
            "50",
        ]
    )
    result = evaluate_captioner.main(args)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The record goes to the run's folder; the shipped one next to the weights is left alone ...
    assert printed == json.loads((tmp_path / "eval" / "eval_shapes.json").read_text())
    assert not (demo / "eval_shapes.json").exists()
    assert set(printed) >= {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "n", "seconds_per_image"}
    assert printed["command"].startswith("python train/evaluate_captioner.py") and printed["seed"] == 0
    for key in ("bleu4", "rouge_l", "cider"):
        low, high = printed["intervals"][key]
        assert low <= printed[key] <= high, key
    assert result["n"] == 6 and 0 <= result["bleu4"] <= result["bleu1"] <= 100
    captions = (tmp_path / "eval" / "captions.csv").read_text().splitlines()
    assert captions[0] == "image,caption" and len(captions) == 7
    # ... unless asked to replace it.
    args.update_shipped, args.json_out = True, tmp_path / "elsewhere.json"
    again = evaluate_captioner.main(args)
    assert json.loads((demo / "eval_shapes.json").read_text()) == again
    assert json.loads((tmp_path / "elsewhere.json").read_text()) == again


def test_resume_repeats_and_loses_no_step(shapes_dir, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    train(shapes_dir, tmp_path / "straight", *cache, "--max-steps", "5")
    train(shapes_dir, tmp_path / "broken", *cache, "--max-steps", "4")  # "interrupted" inside epoch 1
    summary = train(
        shapes_dir, tmp_path / "broken", *cache, "--max-steps", "5", "--resume-from-checkpoint", "latest"
    )
    assert summary["steps"] == 5
    straight = json.loads((tmp_path / "straight" / "state" / "train_state.json").read_text())
    broken = json.loads((tmp_path / "broken" / "state" / "train_state.json").read_text())
    assert [s for s, _ in broken["history"]] == [0, 1, 2, 3, 4]
    assert broken["history"] == straight["history"]  # same losses: same batches, same dropout, same weights
    a = load_file(str(tmp_path / "straight" / "state" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "state" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_max_minutes_stops_with_a_resumable_state(shapes_dir, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    stopped = train(shapes_dir, tmp_path / "run", *cache, "--max-steps", "5", "--max-minutes", "0")
    assert stopped["stopped_early"] and stopped["steps"] == 1  # the clock is checked after every step
    assert (tmp_path / "run" / "model.safetensors").is_file()  # still a loadable checkpoint
    finished = train(
        shapes_dir, tmp_path / "run", *cache, "--max-steps", "5", "--resume-from-checkpoint", "latest"
    )
    assert not finished["stopped_early"] and finished["steps"] == 5


def test_feature_cache_reused_and_invalidated(shapes_dir, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache"), "--max-steps", "1"]
    first = train(shapes_dir, tmp_path / "a", *cache)
    second = train(shapes_dir, tmp_path / "b", *cache)
    assert first["feature_cache"]["hit"] is False and second["feature_cache"]["hit"] is True
    assert first["feature_cache"]["key"] == second["feature_cache"]["key"]
    # A different encoder input size (preprocessing) and a different encoder must not reuse those features.
    resized = train(
        shapes_dir, tmp_path / "c", *cache, "--config-override", '{"image_size": 64, "d_model": 32}'
    )
    assert resized["feature_cache"]["hit"] is False
    assert resized["feature_cache"]["key"] != first["feature_cache"]["key"]
    pretrained = tmp_path / "vision"
    pretrain_shapes_vision.main(
        pretrain_shapes_vision.parse_args(
            [
                "--vision",
                "resnet18-tiny",
                "--data",
                str(shapes_dir),
                "--out",
                str(pretrained),
                "--epochs",
                "1",
                "--batch-size",
                "16",
            ]
        )
    )
    other = train(shapes_dir, tmp_path / "d", *cache, "--init-dir", str(pretrained))
    assert other["feature_cache"]["hit"] is False
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 3
    off = train(shapes_dir, tmp_path / "e", "--no-cache-features", "--max-steps", "1")
    assert off["feature_cache"] == {"cache": "off"} and not (tmp_path / "e" / "feature_cache").exists()
    # The pretrained encoder really is the frozen part of the trained model.
    vision = load_file(str(pretrained / "model.safetensors"))
    trained = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert all(torch.equal(vision[k], trained[k]) for k in vision)


def test_clip_variant_trains_and_reloads(shapes_dir, tmp_path):
    from mmdemo.models.xattn.network import XAttnCaptionNetwork

    summary = train(shapes_dir, tmp_path / "clip", "--max-steps", "2", model="clipb32-xattn")
    assert summary["steps"] == 2
    network = XAttnCaptionNetwork.from_pretrained(tmp_path / "clip")
    assert network.config.vision == "clip-vit-tiny"
    features = network.encode_images(network.preprocess([__import__("PIL.Image").Image.new("RGB", (64, 64))]))
    assert features.shape == (1, network.num_image_tokens, 128)


def test_argument_checks(shapes_dir, tmp_path):
    base = ["--model", "resnet18-xattn", "--data", str(shapes_dir), "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="captions.txt"):
        train_captioner.parse_args(
            ["--model", "resnet18-xattn", "--data", str(tmp_path), "--out", str(tmp_path)]
        )
    with pytest.raises(ValueError, match="batch-size"):
        train_captioner.parse_args([*base, "--batch-size", "0"])
    with pytest.raises(ValueError, match="JSON"):
        train_captioner.parse_args([*base, "--config-override", "{oops"])
    with pytest.raises(ValueError, match="tiny"):
        train_captioner.parse_args([*base, "--init-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        train_captioner.parse_args([*base[:1], "no-such-model", *base[2:]])


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # two processes, each importing torch and training on a shared CPU
def test_accelerate_launch_two_processes(shapes_dir, tmp_path):
    command, env = two_cpu_processes(
        REPO / "train" / "train_captioner.py",
        "--model",
        "resnet18-xattn",
        "--data",
        str(shapes_dir),
        "--out",
        str(tmp_path / "ddp"),
        *SMALL,
        "--max-steps",
        "4",
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only the main process reports
    assert_two_cpu_processes(summaries[0])
    assert summaries[0]["steps"] == 4
    state = json.loads((tmp_path / "ddp" / "state" / "train_state.json").read_text())
    assert [s for s, _ in state["history"]] == [0, 1, 2, 3]
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
