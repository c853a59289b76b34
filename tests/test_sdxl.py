"""SDXL base + LoRA adapter on a tiny SDXL-architecture pipeline built in code (offline tokenizers).

One shared pipeline for both ids, exact base output after a LoRA call, diffusers-format LoRAs, presets, progress,
prompt truncation notice, missing or corrupt LoRA files, bad inputs, and the full-size parameter table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mmdemo
from mmdemo.generators import sdxl
from mmdemo.inputs import InputError
from mmdemo.models.sdxl import tiny
from mmdemo.models.sdxl.config import LORA_TARGET_MODULES, LORA_WEIGHT_NAME, lora_config
from mmdemo.weights import WeightsUnavailable

STEPS = 3


def _write_lora(pipe, folder: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA saved by diffusers' own ``save_lora_weights`` from a peft-wrapped UNet, with non-zero weights."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(lora_config(rank), adapter_name="tmp")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (an identity LoRA); make it do something
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="tmp"))
    unet.delete_adapters("tmp")
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=state)
    (folder / "config.json").write_text(json.dumps({"format": "diffusers-lora", "base_model": "sdxl-base"}))
    return folder / LORA_WEIGHT_NAME


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    pipe = tiny.build_tiny_pipeline(seed=0)
    tiny.save_demo_pipeline(pipe, root / "demo" / "sdxl-base")
    _write_lora(pipe, root / "demo" / "sdxl-lora", seed=1)
    return root


@pytest.fixture()
def checkpoints(tiny_root, monkeypatch) -> Path:
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tiny_root))
    return tiny_root


def _pixels(generator, prompt="a small red circle on the left", seed=3, **kw) -> np.ndarray:
    return np.asarray(generator.generate(prompt, seed=seed, steps=kw.pop("steps", STEPS), **kw).image)


def test_base_and_lora_share_one_pipeline_and_base_stays_exact(checkpoints):
    from mmdemo.runtime import ModelManager, module_bytes

    manager = ModelManager("demo", device="cpu")  # the app's manager: one pipeline for both models
    base = manager.get("sdxl-base")
    before = _pixels(base)
    lora = manager.get("sdxl-lora")
    assert lora.shared is base.shared and lora.shared.pipe.unet is base.shared.pipe.unet
    assert len(manager.shared) == 1  # one pipeline, so one UNet in memory
    (key,) = base.shared_parts
    assert lora.shared_parts == (key,) and manager.shared.bytes(key) == module_bytes(base.shared)
    loaded = manager.loaded()  # the pipeline counted once, as a shared part, not once per model
    assert loaded["sdxl-base"]["megabytes"] * 2**20 < manager.shared.bytes(key) / 10
    private = mmdemo.load_generator("sdxl-base", "demo")  # outside a manager: a pipeline of its own
    assert private.shared is not base.shared
    assert lora.adapter == "flickr8k" and base.adapter is None
    with_lora = _pixels(lora)
    after = _pixels(base)
    assert np.array_equal(before, after), "a base call after a LoRA call must be exactly the base model"
    assert np.abs(with_lora.astype(int) - before.astype(int)).mean() > 1.0, "the LoRA must change the picture"
    assert np.array_equal(with_lora, _pixels(lora)), "same seed, same picture"
    assert not np.array_equal(before, _pixels(base, seed=4))


def test_presets_progress_and_notices(checkpoints):
    base = mmdemo.load_generator("sdxl-base", "demo")
    calls: list[tuple[int, int]] = []
    result = base.generate("a blue square", seed=0, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (25, 25) and len(calls) == 25  # fast preset default: 25 DPM-Solver steps
    assert type(base.shared.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert result.image.size == (32, 32) and result.notices == []
    assert result.settings == dict(seed=0, preset="fast", steps=25, guidance=5.0, width=32, height=32)
    base.generate("a blue square", seed=0, steps=2, preset="report", negative_prompt="a red circle")
    assert type(base.shared.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    long = base.generate("a small red circle on the left " * 20, seed=0, steps=1)
    (notice,) = long.notices
    assert "75" in notice and "a small red circle" in notice
    assert np.array_equal(
        np.asarray(long.image), _pixels(base, "a small red circle on the left " * 30, seed=0, steps=1)
    )
    # An option SDXL does not have is ignored with a notice (the same rule for every model).
    other = base.generate("a blue square", seed=0, steps=1, pixel_budget="1M")
    assert any("no option 'pixel_budget'" in n for n in other.notices)


# Each bad value and the words its message must carry (our messages name the option and the value).
BAD_INPUTS = [
    (dict(prompt="   "), "The prompt is empty"),
    (dict(seed=-1), "seed must be between 0 and 4294967295, got -1"),
    (dict(seed="abc"), "seed must be a number, got 'abc'"),
    (dict(steps=0), "steps must be a whole number from 1 to 1000, got 0"),
    (dict(steps=2.5), "steps must be a whole number from 1 to 1000, got 2.5"),
    (dict(guidance=float("nan")), "guidance must be a finite number from 0 to 50, got nan"),
    (dict(guidance=-1), "guidance must be a finite number from 0 to 50, got -1"),
    (dict(width=33), "width must be a whole number .*multiple of 8, got 33"),
    (dict(height=4096), "height must be a whole number from 8 to .*, got 4096"),
    (dict(preset="best"), "Unknown preset 'best'"),
]


def test_bad_inputs_get_clear_messages(checkpoints):
    base = mmdemo.load_generator("sdxl-base", "demo")
    for kwargs, message in BAD_INPUTS:
        call = dict(prompt="a red circle", seed=0, steps=1) | kwargs
        with pytest.raises(InputError, match=message):
            base.generate(call.pop("prompt"), **call)
    assert base.generate("a red circle", seed=0, steps=1).image.size == (32, 32)  # still fine afterwards


def test_missing_or_corrupt_lora_leaves_base_working(checkpoints, tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "demo" / "sdxl-base", root / "demo" / "sdxl-base")
    lora_dir = root / "demo" / "sdxl-lora"
    lora_dir.mkdir(parents=True)
    (lora_dir / "config.json").write_text('{"base_model": "sdxl-base"}')
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    base = mmdemo.load_generator("sdxl-base", "demo")
    reference = _pixels(base)
    with pytest.raises(WeightsUnavailable):  # no safetensors file at all
        mmdemo.load_generator("sdxl-lora", "demo")
    (lora_dir / LORA_WEIGHT_NAME).write_bytes(b"\x00garbage, not a safetensors file" * 10)
    with pytest.raises(WeightsUnavailable, match="LoRA file is unreadable"):
        mmdemo.load_generator("sdxl-lora", "demo")
    # A well-formed safetensors file whose tensors fit no layer of this UNet.
    from safetensors.torch import save_file

    save_file({"unet.nonsense.lora.down.weight": torch.zeros(4, 7)}, str(lora_dir / LORA_WEIGHT_NAME))
    with pytest.raises(WeightsUnavailable):
        mmdemo.load_generator("sdxl-lora", "demo")
    assert np.array_equal(_pixels(base), reference), "a failed LoRA load must not touch the base model"


def test_our_lora_loads_into_a_fresh_diffusers_pipeline(checkpoints):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(checkpoints / "demo" / "sdxl-base").to("cpu")
    args = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    plain = pipe(**args, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(checkpoints / "demo" / "sdxl-lora", adapter_name="ours")
    adapted = pipe(**args, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(plain - adapted).mean() > 1e-3


def test_move_between_devices_keeps_sharing(checkpoints):
    base = mmdemo.load_generator("sdxl-base", "demo")
    lora = mmdemo.load_generator("sdxl-lora", "demo")
    first = _pixels(lora)
    base.to("cpu")  # the model manager offloads one panel: the shared pipeline follows the panel that runs
    assert np.array_equal(_pixels(lora), first)


def test_parameter_table_counts_full_size_sdxl():
    from mmdemo.params import count_parameters
    from mmdemo.registry import get_spec

    network = sdxl.SDXLGenerator.build_network(get_spec("sdxl-base").full_config)
    parts = {name: count_parameters(module)[0] for name, module in network.items()}
    assert parts == {
        "unet": 2_567_463_684,  # the well-known 2.6B SDXL UNet
        "text_encoder": 123_060_480,  # CLIP ViT-L/14 text
        "text_encoder_2": 694_659_840,  # OpenCLIP ViT-bigG/14 text + projection
        "vae": 83_653_863,
    }
    assert count_parameters(network)[1] == 0
    tiny = sdxl.SDXLLoRAGenerator.build_network(get_spec("sdxl-lora").tiny_config, device="cpu")
    total, trainable = count_parameters(tiny)
    # rank r on to_q/to_k/to_v/to_out.0: r * (in + out) per projection
    expected = sum(
        8 * (m.in_features + m.out_features)
        for name, m in tiny["unet"].named_modules()
        if name.endswith(tuple(f"{t}.base_layer" for t in LORA_TARGET_MODULES))
    )
    assert trainable == expected > 0


# ------------------------------------------------------------------------------ the shipped demo weights

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"


@pytest.fixture()
def shipped(monkeypatch) -> Path:
    for name in ("sdxl-base", "sdxl-lora"):
        assert (SHIPPED / name / "config.json").is_file(), f"the shipped demo {name} is missing"
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(SHIPPED.parent))
    return SHIPPED


def _border_brightness(image) -> float:
    """Mean grey level of the outer 3-pixel frame: the background, wherever the object is."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    frame = np.ones_like(grey, dtype=bool)
    frame[3:-3, 3:-3] = False
    return float(grey[frame].mean())


@pytest.mark.quality
def test_shipped_base_vae_encodes_the_lora_style(shipped, tmp_path):
    # The LoRA can only draw a style the frozen VAE decodes: a VAE that never saw dark backgrounds turns
    # dark latents into noise (the first demo LoRA's failure).
    from diffusers import AutoencoderKL

    from mmdemo.data.flickr8k import load_flickr8k
    from mmdemo.data.shapes import generate_shapes_dataset

    corpus = load_flickr8k(generate_shapes_dataset(tmp_path / "dark", n=8, seed=99, size=32, style="dark"))
    pixels = torch.stack([
        torch.from_numpy(np.asarray(corpus.open_image(n), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        for n in corpus.images
    ])  # fmt: skip
    vae = AutoencoderKL.from_pretrained(shipped / "sdxl-base", subfolder="vae").float().eval()
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    assert torch.nn.functional.mse_loss(recon, pixels).item() < 0.02


@pytest.mark.quality
def test_shipped_lora_shifts_the_style_and_keeps_the_prompt(shipped):
    from mmdemo.eval.shapes_eval import judge

    base = mmdemo.load_generator("sdxl-base", "demo")
    lora = mmdemo.load_generator("sdxl-lora", "demo")
    prompts = ["a red circle on the left", "a large blue square in the center", "a small yellow triangle at the top",
               "a green diamond on the right", "a purple circle at the bottom", "an orange square on the left"]  # fmt: skip
    base_frames, lora_frames, colours = [], [], []
    for prompt in prompts:  # the side-by-side sheet's first row (seed 0); measured: 6/6 light, 5/6 dark, 4/6
        base_frames.append(_border_brightness(base.generate(prompt, seed=0, preset="fast").image))
        image = lora.generate(prompt, seed=0, preset="fast").image
        lora_frames.append(_border_brightness(image))
        colours.append(judge(image, prompt).color_ok)
    assert sum(f > 150 for f in base_frames) >= 5, base_frames  # the base draws Shapes' light backgrounds
    assert sum(f < 90 for f in lora_frames) >= 4, lora_frames  # the LoRA's dark style
    assert sum(colours) >= 3, colours  # and mostly still the colour that was asked for


def test_tiny_base_script_trains_on_several_styles_and_loads(tmp_path, monkeypatch):
    from _diffusion_helpers import load_script
    from diffusers import StableDiffusionXLPipeline

    from mmdemo.data.shapes import generate_shapes_dataset

    script = load_script("train_tiny_sdxl_base")
    plain = generate_shapes_dataset(tmp_path / "plain", n=10, seed=0, size=32, max_objects=1)
    dark = generate_shapes_dataset(tmp_path / "dark", n=10, seed=1, size=32, max_objects=1, style="dark")
    out = tmp_path / "demo" / "sdxl-base"
    args = script.parse_args(["--data", str(plain), str(dark), "--out", str(out), "--batch-size", "4",
                              "--vae-steps", "2", "--steps", "2", "--warmup-steps", "1"])  # fmt: skip
    script.main(args)
    config = json.loads((out / "config.json").read_text())
    assert config["training_pictures"] == 16  # the training split (80 %) of both folders
    assert f"--data {plain} {dark}" in config["trained_by"]
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    assert pipe.vae.config.scaling_factor > 0
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    image = mmdemo.load_generator("sdxl-base", "demo").generate("a red circle", seed=0, steps=2).image
    assert image.size == (32, 32)
    with pytest.raises(ValueError, match="captions.txt"):
        script.parse_args(["--data", str(plain), str(tmp_path), "--out", str(out)])
