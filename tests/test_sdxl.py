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
from mmdemo.weights import WeightsUnavailable

STEPS = 3


def _write_lora(pipe, folder: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA saved by diffusers' own ``save_lora_weights`` from a peft-wrapped UNet, with non-zero weights."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(sdxl.lora_config(rank), adapter_name="tmp")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (an identity LoRA); make it do something
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="tmp"))
    unet.delete_adapters("tmp")
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=state)
    (folder / "config.json").write_text(json.dumps({"format": "diffusers-lora", "base_model": "sdxl-base"}))
    return folder / sdxl.LORA_WEIGHT_NAME


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    pipe = sdxl.build_tiny_pipeline(seed=0)
    sdxl.save_demo_pipeline(pipe, root / "demo" / "sdxl-base")
    _write_lora(pipe, root / "demo" / "sdxl-lora", seed=1)
    return root


@pytest.fixture()
def checkpoints(tiny_root, monkeypatch) -> Path:
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tiny_root))
    sdxl.clear_shared_pipelines()
    yield tiny_root
    sdxl.clear_shared_pipelines()


def _pixels(generator, prompt="a small red circle on the left", seed=3, **kw) -> np.ndarray:
    return np.asarray(generator.generate(prompt, seed=seed, steps=kw.pop("steps", STEPS), **kw))


def test_base_and_lora_share_one_pipeline_and_base_stays_exact(checkpoints):
    base = mmdemo.load_generator("sdxl-base", "demo")
    before = _pixels(base)
    lora = mmdemo.load_generator("sdxl-lora", "demo")
    assert lora.shared is base.shared and lora.shared.pipe.unet is base.shared.pipe.unet
    assert len(sdxl._SHARED) == 1  # noqa: SLF001 - one pipeline, so one UNet in memory
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
    image = base.generate("a blue square", seed=0, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (25, 25) and len(calls) == 25  # fast preset default: 25 DPM-Solver steps
    assert type(base.shared.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert image.size == (32, 32) and image.info["mmdemo_notices"] == []
    base.generate("a blue square", seed=0, steps=2, preset="report", negative_prompt="a red circle")
    assert type(base.shared.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    long = base.generate("a small red circle on the left " * 20, seed=0, steps=1)
    (notice,) = long.info["mmdemo_notices"]
    assert "75" in notice and "a small red circle" in notice
    assert np.array_equal(
        np.asarray(long), _pixels(base, "a small red circle on the left " * 30, seed=0, steps=1)
    )


BAD_INPUTS = [
    dict(prompt="   "),
    dict(seed=-1),
    dict(seed="abc"),
    dict(steps=0),
    dict(steps=2.5),
    dict(guidance=float("nan")),
    dict(guidance=-1),
    dict(width=33),
    dict(height=4096),
    dict(preset="best"),
    dict(pixel_budget="1M"),
]


def test_bad_inputs_get_clear_messages(checkpoints):
    base = mmdemo.load_generator("sdxl-base", "demo")
    for kwargs in BAD_INPUTS:
        call = dict(prompt="a red circle", seed=0, steps=1) | kwargs
        with pytest.raises(InputError):
            base.generate(call.pop("prompt"), **call)
    assert base.generate("a red circle", seed=0, steps=1).size == (32, 32)  # still fine afterwards


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
    (lora_dir / sdxl.LORA_WEIGHT_NAME).write_bytes(b"\x00garbage, not a safetensors file" * 10)
    with pytest.raises(WeightsUnavailable, match="LoRA file is unreadable"):
        mmdemo.load_generator("sdxl-lora", "demo")
    # A well-formed safetensors file whose tensors fit no layer of this UNet.
    from safetensors.torch import save_file

    save_file({"unet.nonsense.lora.down.weight": torch.zeros(4, 7)}, str(lora_dir / sdxl.LORA_WEIGHT_NAME))
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
        if name.endswith(tuple(f"{t}.base_layer" for t in sdxl.LORA_TARGET_MODULES))
    )
    assert trainable == expected > 0
