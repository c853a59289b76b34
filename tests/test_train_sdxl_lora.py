"""train/train_sdxl_lora.py end to end on a tiny SDXL pipeline and a few Shapes pictures.

A handful of steps, exact resume from a checkpoint, latent/text caching on a ``metadata.csv`` folder, the output
reloaded through diffusers' ``load_lora_weights`` and through ``mmdemo.load_generator``, argument checks, and a
two-process ``accelerate launch``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _accelerate_launch import assert_two_cpu_processes, two_cpu_processes
from conftest import load_script
from safetensors.torch import load_file

from mmdemo.models.sdxl import config as sdxl
from mmdemo.models.sdxl import tiny
from mmdemo.runtime import ModelManager

REPO = Path(__file__).resolve().parents[1]
train_sdxl_lora = load_script("train_sdxl_lora")

TINY = [
    "--resolution",
    "32",
    "--batch-size",
    "2",
    "--rank",
    "4",
    "--lr",
    "1e-2",
    "--no-random-flip",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipe") / "sdxl-base"
    return tiny.save_demo_pipeline(tiny.build_tiny_pipeline(seed=0), folder)


@pytest.fixture(scope="module")
def shapes_dir(shapes_dataset) -> Path:
    return shapes_dataset(n=10, seed=0, size=32, style="dark")


def _train(pipe: Path, data: Path, out: Path, *extra: str) -> Path:
    args = train_sdxl_lora.parse_args(
        ["--pretrained", str(pipe), "--data", str(data), "--out", str(out), *TINY, *extra]
    )
    return train_sdxl_lora.main(args)


def test_train_resume_and_reload(tiny_pipeline, shapes_dir, tmp_path, monkeypatch):
    straight = _train(
        tiny_pipeline, shapes_dir, tmp_path / "a", "--max-train-steps", "4", "--checkpointing-steps", "2"
    )
    partial = _train(tiny_pipeline, shapes_dir, tmp_path / "b", "--max-train-steps", "4", "--stop-after", "2")
    assert partial.name == "checkpoint-2" and not (tmp_path / "b" / sdxl.LORA_WEIGHT_NAME).exists()
    resumed = _train(
        tiny_pipeline, shapes_dir, tmp_path / "b", "--max-train-steps", "4", "--checkpointing-steps", "2"
    )
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(k.startswith("unet.") for k in a)
    found = {t for t in sdxl.LORA_TARGET_MODULES for k in a if f".{t}.lora." in k}
    assert found == set(sdxl.LORA_TARGET_MODULES)  # every attention projection, and nothing else:
    assert all(any(f".{t}.lora." in k for t in sdxl.LORA_TARGET_MODULES) for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"resume changed {key}")
    losses = json.loads((tmp_path / "b" / "loss.json").read_text())
    assert [r["step"] for r in losses] == [1, 2, 3, 4]  # no step repeated or lost
    assert (tmp_path / "b" / "loss_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # diffusers' own loader, on a fresh pipeline, accepts our file and it changes the output.
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline)
    call = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(straight.parent)
    adapted = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(plain - adapted).mean() > 1e-4

    # The public API: the script's output folder is a demo checkpoint as it stands.
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_pipeline, root / "demo" / "sdxl-base")
    shutil.copytree(
        straight.parent, root / "demo" / "sdxl-lora", ignore=shutil.ignore_patterns("checkpoint-*")
    )
    assert json.loads((root / "demo" / "sdxl-lora" / "config.json").read_text())["base_model"] == "sdxl-base"
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    manager = ModelManager("demo", device="cpu")  # base and LoRA on one pipeline, as the app runs them
    base, lora = manager.get("sdxl-base"), manager.get("sdxl-lora")
    assert lora.shared is base.shared
    first = np.asarray(base.generate("a red circle", seed=0, steps=2).image)
    assert not np.array_equal(first, np.asarray(lora.generate("a red circle", seed=0, steps=2).image))
    assert np.array_equal(first, np.asarray(base.generate("a red circle", seed=0, steps=2).image))


def test_metadata_csv_with_cached_latents_and_flips(tiny_pipeline, shapes_dir, tmp_path):
    data = tmp_path / "folder"
    (data / "pics").mkdir(parents=True)
    with (data / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for i, image in enumerate(sorted((shapes_dir / "Images").glob("*.png"))[:5]):
            shutil.copy(image, data / "pics" / image.name)
            writer.writerow([f"pics/{image.name}", f'a picture, "number" {i}'])
    examples = train_sdxl_lora.read_examples(data)
    assert len(examples) == 5 and examples[0].text == 'a picture, "number" 0'
    out = _train(
        tiny_pipeline, data, tmp_path / "out", "--max-train-steps", "2", "--cache-latents", "--random-flip"
    )
    assert out.is_file() and len(json.loads((tmp_path / "out" / "loss.json").read_text())) == 2


def test_flickr8k_folder_uses_the_lora_split(shapes_dir):
    examples = train_sdxl_lora.read_examples(shapes_dir)
    assert len(examples) == 8  # text_to_image_split: first 80 % of 10 images, first caption each
    first_caption = (shapes_dir / "captions.txt").read_text().splitlines()[1].split(",", 1)[1]
    assert examples[0].text == first_caption.strip('"')


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resolution", "30"], "multiple of 8"),
        (["--batch-size", "0"], "batch-size"),
        (["--cache-latents", "--no-center-crop"], "center-crop"),
        (["--resume", "/nonexistent"], "resume"),
        (["--cond-dropout", "1.5"], "cond-dropout"),
    ],
)
def test_parse_args_sanity_checks(shapes_dir, extra, message):
    with pytest.raises(ValueError, match=message):
        train_sdxl_lora.parse_args(["--data", str(shapes_dir), *extra])
    with pytest.raises(ValueError, match="metadata.csv"):
        train_sdxl_lora.read_examples(shapes_dir / "Images")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # two processes, each importing torch and training on a shared CPU
def test_accelerate_launch_two_processes(tiny_pipeline, shapes_dir, tmp_path):
    command, env = two_cpu_processes(REPO / "train" / "train_sdxl_lora.py",
        "--pretrained", str(tiny_pipeline), "--data", str(shapes_dir), "--out", str(tmp_path / "ddp"),
        *TINY, "--max-train-steps", "2", "--checkpointing-steps", "1")  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert_two_cpu_processes(config)
    assert config["training_examples"] == 8
    # 2 steps x 2 processes x batch 2: each rank its own slice, together one pass over the 8 examples.
    seed = config["args"]["seed"]
    picks = [
        i
        for step in (0, 1)
        for rank in (0, 1)
        for i in train_sdxl_lora.batch_indices(step, 8, 2, 2, rank, seed)
    ]
    assert sorted(picks) == list(range(8))
    losses = json.loads((tmp_path / "ddp" / "loss.json").read_text())
    assert [r["step"] for r in losses] == [1, 2]
    assert (tmp_path / "ddp" / sdxl.LORA_WEIGHT_NAME).is_file()
    assert sum(line.startswith("saved ") for line in done.stdout.splitlines()) == 1  # main process only
