"""The diffusion training scripts end to end on tiny configs: a few steps, resume, reload through the public API."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from _accelerate_launch import assert_two_cpu_processes, two_cpu_processes
from _diffusion_helpers import REPO, diffusion_assets, load_script  # noqa: F401 - fixture

import mmdemo


def _pixel_args(assets, out, *extra):
    return ["--config", "tiny", "--data", str(assets["data"]), "--text-encoder", str(assets["bert"]),
            "--output-dir", str(out), "--train-batch-size", "4", "--sample-every", "2", "--sample-steps", "2",
            "--checkpointing-steps", "2", "--lr-warmup-steps", "1", "--prediction-type", "v_prediction",
            "--beta-schedule", "squaredcos_cap_v2", "--use-ema", "--ema-decay", "0.9", "--mixed-precision", "no",
            *extra]  # fmt: skip


def test_pretrained_encoders_reload(diffusion_assets):  # noqa: F811
    from mmdemo.models.diffusion.text import load_text_encoder, load_tokenizer

    bert = load_text_encoder("bert", diffusion_assets["bert"])
    clip = load_text_encoder("clip", diffusion_assets["clip"])
    assert not any(p.requires_grad for p in [*bert.parameters(), *clip.parameters()])
    tokenizer = load_tokenizer(diffusion_assets["clip"], 32)
    ids = tokenizer("a red circle")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 5
    from mmdemo.data.shapes import SHAPES

    from mmdemo.models.diffusion.text import closest_word_pair

    for kind, max_length in (("bert", 24), ("clip", 32)):
        # The pretraining records how well the saved encoder keeps shape words apart: the same number comes
        # back from the saved files.
        summary = json.loads((diffusion_assets[kind] / "pretrain_summary.json").read_text())
        cosine, *words = summary["closest_shapes"]
        again, pair = closest_word_pair(
            load_tokenizer(diffusion_assets[kind], max_length),
            load_text_encoder(kind, diffusion_assets[kind]),
            SHAPES,
            max_length,
        )
        assert list(pair) == words and len(set(words)) == 2 and set(words) <= set(SHAPES)
        assert abs(again - cosine) < 2e-3, (kind, cosine, again)


def test_pixel_training_resumes_exactly_and_reloads(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    import shutil

    from safetensors.torch import load_file

    script = load_script("train_pixel_diffusion")
    straight = tmp_path / "straight"
    script.main(script.parse_args(_pixel_args(diffusion_assets, straight, "--max-train-steps", "4")))
    # Simulate a crash after step 2: keep only checkpoint-2, then resume to step 4.
    split = tmp_path / "demo" / "pixel-diffusion"
    split.mkdir(parents=True)
    shutil.copytree(straight / "checkpoint-2", split / "checkpoint-2")
    script.main(script.parse_args(_pixel_args(diffusion_assets, split, "--max-train-steps", "4",
                                              "--resume-from-checkpoint", "latest")))  # fmt: skip
    a = json.loads((straight / "history.json").read_text())
    b = json.loads((split / "history.json").read_text())
    assert [h["step"] for h in b] == [0, 1, 2, 3]  # no step repeated or lost
    np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-5)
    wa, wb = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6) for k in wa)
    for name in (
        "loss.png",
        "samples/step_000004.png",
        "config.json",
        "model.safetensors",
        "text_encoder/config.json",
    ):
        assert (split / name).is_file(), name
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    generator = mmdemo.load_generator("pixel-diffusion", profile="demo", device="cpu")
    image = generator.generate("a red circle on the left", seed=0, steps=2).image
    assert image.size == (32, 32)


def test_vqvae_then_latent_training_and_reload(diffusion_assets, tmp_path, monkeypatch):  # noqa: F811
    import urllib.error

    import torchvision

    def no_network(self, *args, **kwargs):  # offline, torchvision cannot fetch LPIPS' VGG16 weights
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", no_network)
    vq_script = load_script("train_vqvae")
    vq_out = tmp_path / "vqvae"
    with pytest.warns(RuntimeWarning, match="LPIPS"):
        summary = vq_script.main(vq_script.parse_args([
            "--config", "tiny", "--data", str(diffusion_assets["data"]), "--output-dir", str(vq_out),
            "--train-batch-size", "4", "--max-train-steps", "3", "--disc-start", "1", "--sample-every", "3",
            "--checkpointing-steps", "3", "--learning-rate", "1e-3", "--architecture", "report",
        ]))  # fmt: skip
    history = json.loads((vq_out / "history.json").read_text())
    assert history[0]["d_loss"] == 0.0 and history[1]["d_loss"] > 0.0  # PatchGAN starts at --disc-start
    assert 0 < summary["perplexity"] <= 256 and 0 <= summary["dead_codes"] < 256
    ld_script = load_script("train_latent_diffusion")
    out = tmp_path / "demo" / "latent-diffusion"
    args = ["--config", "tiny", "--data", str(diffusion_assets["data"]), "--vqvae", str(vq_out),
            "--text-encoder", str(diffusion_assets["clip"]), "--output-dir", str(out), "--train-batch-size", "4",
            "--sample-every", "2", "--sample-steps", "2", "--checkpointing-steps", "2", "--mixed-precision", "no",
            "--prediction-type", "v_prediction", "--beta-schedule", "squaredcos_cap_v2"]  # fmt: skip
    ld_script.main(ld_script.parse_args([*args, "--max-train-steps", "2"]))
    cache = out / "latents_cache.safetensors"
    stamp = cache.stat().st_mtime_ns
    ld_script.main(
        ld_script.parse_args([*args, "--max-train-steps", "3", "--resume-from-checkpoint", "latest"])
    )
    assert cache.stat().st_mtime_ns == stamp  # encoded once, reused
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == [0, 1, 2]
    config = json.loads((out / "config.json").read_text())
    # The report recipe: quantised latents, unscaled, on the report's structure (which the demo folder reloads).
    assert config["latent_scale"] == 1.0 and config["downsample"] == 2 and config["architecture"] == "report"
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    image = mmdemo.load_generator("latent-diffusion", profile="demo", device="cpu").generate(
        "a blue square", seed=1, steps=2
    ).image
    assert image.size == (32, 32)


@pytest.mark.parametrize(
    "script_name, argv, message",
    [
        ("train_pixel_diffusion", ["--max-train-steps", "0"], "max-train-steps"),
        ("train_pixel_diffusion", ["--cond-dropout", "1.5"], "cond-dropout"),
        ("train_pixel_diffusion", ["--ema-decay", "1.0"], "ema-decay"),
        ("train_vqvae", ["--disc-start", "-1"], "disc-start"),
        ("train_latent_diffusion", ["--vqvae", "/nonexistent"], "train_vqvae.py"),
    ],
)
def test_parse_args_sanity_checks(diffusion_assets, script_name, argv, message):  # noqa: F811
    script = load_script(script_name)
    base = {
        "train_pixel_diffusion": ["--data", str(diffusion_assets["data"]), "--text-encoder", str(diffusion_assets["bert"]),
                                  "--output-dir", "/tmp/unused"],
        "train_vqvae": ["--data", str(diffusion_assets["data"]), "--output-dir", "/tmp/unused"],
        "train_latent_diffusion": ["--data", str(diffusion_assets["data"]), "--text-encoder",
                                   str(diffusion_assets["clip"]), "--output-dir", "/tmp/unused"],
    }[script_name]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        script.parse_args([*base, *argv])


def test_missing_text_encoder_message(diffusion_assets, tmp_path):  # noqa: F811
    script = load_script("train_pixel_diffusion")
    with pytest.raises(ValueError, match="huggingface-cli download google-bert/bert-base-uncased"):
        script.parse_args(["--data", str(diffusion_assets["data"]), "--text-encoder", str(tmp_path),
                           "--output-dir", str(tmp_path / "o")])  # fmt: skip


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # two processes, each importing torch and training on a shared CPU
def test_accelerate_two_processes_on_cpu(diffusion_assets, tmp_path):  # noqa: F811
    out = tmp_path / "ddp"
    command, env = two_cpu_processes(REPO / "train" / "train_pixel_diffusion.py",
                                     *_pixel_args(diffusion_assets, out, "--max-train-steps", "2"))  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training_args.json").read_text())
    assert_two_cpu_processes(summary)
    assert summary["steps"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1]
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    # One rank's state per process in the checkpoint, but only the main process logs the summary.
    assert sorted(p.name for p in (out / "checkpoint-2").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    assert sum(line.startswith('{"steps"') for line in result.stderr.splitlines()) == 1
