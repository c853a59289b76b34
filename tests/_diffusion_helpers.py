"""Shared by the diffusion tests: tiny Shapes data, tiny text encoders and untrained demo checkpoints."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def write_shapes(folder: Path, n: int = 40, seed: int = 0) -> Path:
    from mmdemo.data.shapes import generate_shapes_dataset

    return generate_shapes_dataset(folder, n=n, seed=seed, size=32, max_objects=1)


def pretrain_encoder(kind: str, data: Path, out: Path, steps: int = 2) -> Path:
    """Two steps of the real pretraining (BERT: MLM + the image-text grounding term the demo uses)."""
    script = load_script("pretrain_tiny_text_encoder")
    extra = ["--contrastive-weight", "1"] if kind == "bert" else []
    script.main(script.parse_args(["--kind", kind, "--data", str(data), "--out", str(out), "--steps", str(steps),
                                   "--batch-size", "8", *extra]))  # fmt: skip
    return out


def untrained_pixel_checkpoint(folder: Path, text_dir: Path, *, fp16: bool = False) -> Path:
    """A demo-layout pixel-diffusion folder with random UNet weights (enough for API/determinism tests)."""
    import torch

    from mmdemo.models.diffusion.pixel import PixelDiffusionModel
    from mmdemo.models.diffusion.text import load_text_encoder, load_tokenizer

    script = load_script("train_pixel_diffusion")
    args = script.parse_args(["--config", "tiny", "--data", str(text_dir.parent / "data"), "--text-encoder", str(text_dir),
                              "--output-dir", str(folder)])  # fmt: skip
    encoder = load_text_encoder("bert", text_dir)
    config = script.build_config(args, encoder)
    torch.manual_seed(0)
    model = PixelDiffusionModel(config, encoder)
    script.export_model(model, load_tokenizer(text_dir, config.text_max_length), folder, fp16=fp16)
    return folder


def untrained_latent_checkpoint(folder: Path, text_dir: Path, vq_dir: Path) -> Path:
    import torch

    from mmdemo.models.diffusion.latent import LatentDiffusionModel
    from mmdemo.models.diffusion.text import load_text_encoder, load_tokenizer

    script = load_script("train_latent_diffusion")
    args = script.parse_args(["--config", "tiny", "--data", str(text_dir.parent / "data"), "--vqvae", str(vq_dir),
                              "--text-encoder", str(text_dir), "--output-dir", str(folder)])  # fmt: skip
    encoder = load_text_encoder("clip", text_dir)
    config = script.build_config(args, encoder)
    torch.manual_seed(0)
    model = LatentDiffusionModel(config, encoder)
    script.export_model(model, load_tokenizer(text_dir, config.text_max_length), folder, fp16=False)
    return folder


def untrained_vqvae(folder: Path) -> Path:
    """A stage-1 output folder (config.json + vqvae.safetensors) with random weights."""
    import json

    import torch

    from mmdemo.models.diffusion.latent import LatentDiffusionConfig, build_vqvae
    from mmdemo.models.diffusion.training import json_ready, save_weights
    from mmdemo.registry import get_spec

    folder.mkdir(parents=True, exist_ok=True)
    config = LatentDiffusionConfig.from_dict(dict(get_spec("latent-diffusion").tiny_config))
    torch.manual_seed(0)
    save_weights(build_vqvae(config).state_dict(), folder / "vqvae.safetensors", fp16=False)
    (folder / "config.json").write_text(json.dumps(json_ready(config.to_dict())))
    return folder


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def diffusion_assets(tmp_path_factory) -> dict[str, Path]:
    """Shapes data + tiny BERT + tiny CLIP text tower (2 pretraining steps each) + an untrained VQ-VAE."""
    # Built once per test session even though several modules import this fixture (each import is its own
    # fixture definition to pytest): the folder under the session's base temp dir is the cache.
    base = tmp_path_factory.getbasetemp() / "diffusion_assets"
    assets = {
        "base": base,
        "data": base / "data",
        "bert": base / "bert",
        "clip": base / "clip",
        "vqvae": base / "vqvae",
    }
    if (base / "complete").is_file():
        return assets
    write_shapes(assets["data"])
    pretrain_encoder("bert", assets["data"], assets["bert"])
    pretrain_encoder("clip", assets["data"], assets["clip"])
    untrained_vqvae(assets["vqvae"])
    (base / "complete").write_text("ok")
    return assets


def check_shipped_generator(model_id: str, *, color: float, shape: float, n: int = 8) -> dict[str, float]:
    """The shipped demo checkpoint's recorded ShapesEval (64 prompts) meets ``color``/``shape`` with the fast
    preset and with the report preset (the report's sampler, without guidance), and a fresh re-measurement on
    ``n`` prompts it never saw stays near them (a broken or stale file fails here)."""
    import json

    import mmdemo
    from mmdemo.data.shapes import SHAPES, sample_single_object_prompts
    from mmdemo.eval.shapes_eval import accuracies, judge
    from mmdemo.models.diffusion.text import closest_word_pair

    folder = REPO / "checkpoints" / "demo" / model_id
    assert (folder / "config.json").is_file(), f"the shipped demo checkpoint is missing from {folder}"
    recorded = json.loads((folder / "eval_shapes_fast.json").read_text())
    assert recorded["n"] >= 64 and recorded["color_acc"] >= color and recorded["shape_acc"] >= shape, recorded
    # The report preset samples as the report did (its sampler, no guidance), on the same prompts and seeds.
    report = json.loads((folder / "eval_shapes_report.json").read_text())
    assert report["n"] == recorded["n"] and report["seed"] == recorded["seed"], (report["n"], recorded["n"])
    assert report["guidance"] == 1.0, f"eval_shapes_report.json is stale: measured with guidance {report['guidance']}"
    assert report["color_acc"] >= color and report["shape_acc"] >= shape, report
    generator = mmdemo.load_generator(model_id, profile="demo", device="cpu")
    # The frozen text encoder must keep shape words apart, or the model cannot learn them (the latent demo
    # once drew squares as circles: its encoder's circle/square cosine was 0.97).
    max_length = generator.model.config.text_max_length
    cosine, pair = closest_word_pair(generator.tokenizer, generator.model.text_encoder, SHAPES, max_length)
    assert cosine < 0.6, f"the shipped text encoder hardly tells {pair} apart (cosine {cosine:.2f})"
    prompts = [prompt for prompt, _ in sample_single_object_prompts(n, seed=4242, image_size=32)]
    judged = [judge(generator.generate(p, seed=4242 + i, preset="fast").image, p) for i, p in enumerate(prompts)]
    fresh = accuracies(judged)
    # n = 8 is coarse (one picture = 0.125), so the fresh check allows two misses below the target.
    assert fresh["color_acc"] >= color - 0.25 and fresh["shape_acc"] >= shape - 0.25, fresh
    return fresh
