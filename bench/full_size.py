"""Every model at its real size, with deterministic random weights: time, memory and finiteness of the user path.

    python bench/full_size.py --models IDS|all --device cpu|cuda [--dtype fp32|bf16|fp16] [--steps N] [--json OUT]

Real weights cannot be downloaded everywhere, but weights change neither shapes, dtypes, memory nor time. Each
model is built from the registry's ``full_config`` with the same classes the ``full`` profile loads (meta device,
no weight initialisation, then one cheap deterministic fill), wrapped in its real adapter, and driven through
the adapter's own ``caption`` / ``generate`` at the report's settings: a 224-px-class picture captioned to 20+
tokens; SDXL at 1024x1024 (report preset, 100 Euler steps); Infinity-2B at 1M pixels (13 scales); pixel
diffusion at 64x64 (100 DDPM steps) and latent diffusion at 256x256 (1000 DDPM steps). Where a real tokenizer
is absent a stand-in of the real vocabulary size takes its place (the embedding tables are real size either way).

``--steps N`` runs N real denoising steps (Infinity: N scales, then its VAE decoder once) and extrapolates the
rest; such rows say ``extrapolated``. Every model runs in its own process, one after the other, so the peak
memory is that model's alone: process RSS on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

With random weights a decoder would stop wherever its end-of-text token happens to win; the end tokens' output
rows are zeroed so that every caption runs its full 20+ tokens (the time per token is what matters here).
The TinyLlama row also measures the memory bandwidth in the same process and prints decode tokens/s against
the bandwidth bound (bytes of weights read per token / bandwidth).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "a small red circle on the left of a large blue square"
CAPTION_TOKENS = 20  # the report's captions are 10-20 words; decoding at least 20 new tokens
# Report settings per generator: preset, steps (what the extrapolation is to) and extra options.
REPORT_SETTINGS: dict[str, dict[str, Any]] = {
    "sdxl-base": dict(preset="report", steps=100),
    "sdxl-lora": dict(preset="report", steps=100),
    "pixel-diffusion": dict(preset="report", steps=100),
    "latent-diffusion": dict(preset="report", steps=1000),
    "infinity-2b": dict(preset="report", pixel_budget="1M"),
}
SHAPES_CAPTIONS = [
    f"a {size} {colour} {shape} on the {where} of the picture"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow", "purple", "orange")
    for shape in ("circle", "square", "triangle", "star")
    for where in ("left", "right", "top", "bottom", "middle")
]


@dataclass
class Row:
    """One model's measurements (``seconds_per_step``: per denoising step, per scale or per decoded token)."""

    model: str
    device: str
    dtype: str
    params: int = 0
    param_bytes: int = 0
    build_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    seconds_per_step: float | None = None
    step_unit: str = ""
    steps_run: int = 0
    steps_total: int = 0
    seconds_per_output: float | None = None
    cpu_seconds_per_step: float | None = None  # process CPU time: on a shared machine, what a free core takes
    threads: int = 0
    extrapolated: bool = False
    finite: bool = False
    output_size: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ------------------------------------------------------------------------------------------ building


@contextlib.contextmanager
def fast_init(dtype: torch.dtype) -> Iterator[None]:
    """Build modules without running any weight initialiser, parameters created directly in ``dtype``.

    Buffers (position ids, rotary frequencies, BatchNorm statistics) are still computed by the constructors,
    which is why this is used instead of building on the meta device: ``to_empty`` would leave them garbage.
    """
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype != torch.float16 else torch.float32)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


_BANK_SIZE = 1_048_573  # a prime, so that rows of common widths do not line up with the bank's period


@functools.lru_cache(maxsize=4)
def _bank(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(2 * _BANK_SIZE, generator=torch.Generator().manual_seed(0)).to(dtype)


@torch.no_grad()
def fill_(module: torch.nn.Module, seed: int = 0, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Deterministic random weights that keep activations in range: N(0, 1/fan_in) matrices, zero biases,
    unit norm scales, cheaply: every matrix copies a window of one fixed bank of 2M normal numbers, starting
    at an offset drawn from its name (memory speed, not random-number speed; billions of weights in seconds)."""
    if dtype is not None:
        module.to(dtype)
    norms = {id(p) for m in module.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    for name, param in module.named_parameters():
        if id(param) in norms:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif param.dim() >= 2 or name.endswith(("embedding", "pos_embed", "class_embedding", "query_tokens")):
            bank = _bank(param.dtype)
            start = (seed * 7919 + zlib.crc32(name.encode())) % _BANK_SIZE
            scale = 1.0 / math.sqrt(param[0].numel()) if param.dim() >= 2 else 0.02
            flat = param.view(-1)
            for begin in range(0, flat.numel(), _BANK_SIZE):
                piece = flat[begin : begin + _BANK_SIZE]
                piece.copy_(bank[start : start + piece.numel()]).mul_(scale)
        else:
            param.zero_()
    return module


def count(module: torch.nn.Module) -> tuple[int, int]:
    params = list({id(p): p for p in module.parameters()}.values())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def stand_in_weights(model_id: str) -> Any:
    from mmdemo.weights import ResolvedWeights

    return ResolvedWeights(model_id, "full", {}, reason="random weights at full size (bench)")


def pad_tokenizer(tokenizer: Any, size: int) -> Any:
    """Grow a tokenizer to ``size`` entries with unused tokens, so its vocabulary is the real one's size."""
    missing = size - len(tokenizer)
    if missing > 0:
        tokenizer.add_tokens([f"<unused{i}>" for i in range(missing)])
    return tokenizer


def _zero_rows(weight: torch.Tensor, ids: list[int], bias: torch.Tensor | None = None) -> None:
    """Let random weights never pick these output ids (end-of-text), so decoding runs its full length."""
    with torch.no_grad():
        for i in ids:
            if 0 <= i < weight.shape[0]:
                weight[i].zero_()
                if bias is not None:
                    bias[i] = -1e4


# ------------------------------------------------------------------------------------------ captioners


def build_captioner(model_id: str, device: str, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """(adapter with a full-size random network, facts) for a captioner id."""
    import mmdemo
    from mmdemo.registry import get_spec

    spec = get_spec(model_id)
    cls = mmdemo.adapter_class(spec) if hasattr(mmdemo, "adapter_class") else _adapter_class(spec)
    network_cls = cls.network_class
    config = dict(spec.full_config)
    kwargs: dict[str, Any] = {}
    if model_id.endswith("xattn"):
        from mmdemo.captioners.vocab import SPECIALS, Vocabulary
        from mmdemo.models.xattn.network import XAttnConfig

        size = XAttnConfig(**config).vocab_size
        kwargs["vocab"] = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(size - len(SPECIALS)))])
    elif model_id == "qformer-bert":
        from mmdemo.models.diffusion.text import build_tiny_bert_tokenizer
        from mmdemo.models.qformer.network import QFormerBertConfig

        size = QFormerBertConfig(**config).vocab_size
        kwargs["tokenizer"] = pad_tokenizer(build_tiny_bert_tokenizer(SHAPES_CAPTIONS), size - 1)  # + [DEC]
    else:
        from mmdemo.models.qformer.network import LLM_PRESETS, QFormerLlamaConfig, build_shapes_bpe

        size = LLM_PRESETS[QFormerLlamaConfig(**config).llm]["vocab_size"]
        kwargs["tokenizer"] = pad_tokenizer(build_shapes_bpe(SHAPES_CAPTIONS, vocab_size=size), size)
    with fast_init(dtype), torch.device("cpu"):
        network = network_cls.build(config, device="cpu", **kwargs)
    fill_(network, dtype=dtype)
    network.post_load()
    _never_stop(model_id, network)
    network = network.frozen().eval().to(device)
    return cls(spec, stand_in_weights(model_id), network, device), {"vocab": size}


def _adapter_class(spec: Any) -> Any:
    import importlib

    module, _, name = spec.adapter.partition(":")
    return getattr(importlib.import_module(module), name)


def _never_stop(model_id: str, network: Any) -> None:
    if model_id.endswith("xattn"):
        from mmdemo.captioners.vocab import EOS_ID

        _zero_rows(network.lm_head.weight, [EOS_ID], network.lm_head.bias)
    elif model_id == "qformer-bert":
        # The output matrix is the word embedding table (tied); only the end token's output bias is lowered.
        with torch.no_grad():
            network.lm_head.bias[network.tokenizer.sep_token_id] = -1e4
    else:
        tokenizer = network.tokenizer
        _zero_rows(network.llm.lm_head.weight, [network.newline_id, tokenizer.eos_token_id])


def measure_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second this process reads from memory: the best of ``repeats`` fp32 sums over a 1 GiB tensor
    (a vectorised fp32 reduction runs at the memory's speed, with the threads the model used)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    threads = torch.get_num_threads()
    for _ in range(repeats):
        start = time.process_time()  # CPU time per thread: a shared machine's waiting is not counted
        x.sum()
        best = min(best, (time.process_time() - start) / threads)
    return nbytes / best


def run_captioner(model_id: str, device: str, dtype: torch.dtype, row: Row) -> None:
    from PIL import Image

    start = time.perf_counter()
    adapter, facts = build_captioner(model_id, device, dtype)
    row.build_seconds = round(time.perf_counter() - start, 2)
    row.params, row.param_bytes = count(adapter.network)
    network = adapter.network
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
            timings[name + "_cpu"] = timings.get(name + "_cpu", 0.0) + time.process_time() - c0
            if name == "encode":
                values = out.values() if isinstance(out, dict) else [out]
                timings["finite"] = float(all(bool(torch.isfinite(v.float()).all()) for v in values))
            return out

        return wrapper

    network.encode_images = timed("encode", network.encode_images)
    network.generate = timed("generate", network.generate)
    image = Image.new("RGB", (224, 224), (200, 30, 30))
    tokens = CAPTION_TOKENS + 2 if model_id == "qformer-tinyllama" else CAPTION_TOKENS
    with _autocast(device, dtype):
        adapter.caption(
            [image], max_new_tokens=tokens
        )  # warm-up: first-call allocations are not the steady state
        timings.clear()
        start = time.perf_counter()
        results = adapter.caption([image], max_new_tokens=tokens)
        total = time.perf_counter() - start
    text = results[0].caption if hasattr(results[0], "caption") else results[0]
    row.seconds_per_output = round(total, 3)
    row.seconds_per_step = round(timings["generate"] / tokens, 4)
    row.cpu_seconds_per_step = round(timings["generate_cpu"] / tokens, 4)
    row.step_unit = "token"
    row.steps_run = row.steps_total = tokens
    row.finite = bool(timings.get("finite")) and isinstance(text, str)
    row.output_size = f"{tokens} tokens"
    row.extra.update(
        vocab=facts["vocab"], encode_seconds=round(timings["encode"], 3), words=len(text.split())
    )
    if model_id == "qformer-tinyllama":
        llm = network.llm
        _, llm_bytes = count(llm)
        bandwidth = measure_bandwidth()
        bound = bandwidth / llm_bytes
        # On a shared machine wall time includes waiting for a core; the CPU time per thread does not.
        measured = (
            torch.get_num_threads() / row.cpu_seconds_per_step
            if device == "cpu"
            else 1.0 / row.seconds_per_step
        )
        row.extra.update(
            llm_bytes=llm_bytes,
            bandwidth_gb_s=round(bandwidth / 1e9, 2),
            bound_tokens_per_s=round(bound, 2),
            tokens_per_s=round(measured, 2),
            bound_ratio=round(bound / measured, 2),
        )


# ------------------------------------------------------------------------------------------ generators


def build_generator(model_id: str, device: str, dtype: torch.dtype) -> Any:
    from mmdemo.registry import get_spec

    spec = get_spec(model_id)
    weights = stand_in_weights(model_id)
    if model_id in ("pixel-diffusion", "latent-diffusion"):
        from mmdemo.models.diffusion.text import build_tiny_bert_tokenizer, build_tiny_clip_tokenizer

        if model_id == "pixel-diffusion":
            from mmdemo.generators.pixel_diffusion import (
                PixelDiffusionGenerator as Generator,
            )
            from mmdemo.models.diffusion.pixel import (
                PixelDiffusionConfig as Config,
            )
            from mmdemo.models.diffusion.pixel import (
                PixelDiffusionModel as Model,
            )

            tokenizer = pad_tokenizer(build_tiny_bert_tokenizer(SHAPES_CAPTIONS), 30522)
        else:
            from mmdemo.generators.latent_diffusion import (
                LatentDiffusionGenerator as Generator,
            )
            from mmdemo.models.diffusion.latent import (
                LatentDiffusionConfig as Config,
            )
            from mmdemo.models.diffusion.latent import (
                LatentDiffusionModel as Model,
            )

            tokenizer = pad_tokenizer(build_tiny_clip_tokenizer(SHAPES_CAPTIONS, max_length=77), 49408)
        config = Config.from_dict(dict(spec.full_config))
        tokenizer.model_max_length = config.text_max_length
        with fast_init(dtype), torch.device("cpu"):
            model = Model(config)
        fill_(model, dtype=dtype)
        return Generator(spec, weights, model.to(device).eval(), tokenizer, device)
    if model_id in ("sdxl-base", "sdxl-lora"):
        return _build_sdxl(spec, weights, device, dtype)
    if model_id == "infinity-2b":
        return _build_infinity(spec, weights, device, dtype)
    raise ValueError(model_id)


def _build_sdxl(spec: Any, weights: Any, device: str, dtype: torch.dtype) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from mmdemo.generators.sdxl import SDXLGenerator
    from mmdemo.models.diffusion.text import build_tiny_clip_tokenizer
    from mmdemo.models.sdxl.config import SDXL_SCHEDULER_CONFIG, SDXLConfig, lora_config
    from mmdemo.models.sdxl.pipeline import SharedPipeline, build_sdxl_modules

    config = SDXLConfig.from_dict(dict(spec.full_config))
    with fast_init(dtype), torch.device("cpu"):
        modules = build_sdxl_modules(config.pipeline)
    for module in modules.values():
        fill_(module, dtype=dtype)
    tokenizer = pad_tokenizer(build_tiny_clip_tokenizer(SHAPES_CAPTIONS, max_length=77), 49408)
    pipe = StableDiffusionXLPipeline(
        vae=modules["vae"], text_encoder=modules["text_encoder"], text_encoder_2=modules["text_encoder_2"],
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=modules["unet"],
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    shared = SharedPipeline(pipe, device, dtype)
    adapter = None
    if config.lora_rank is not None:
        adapter = "bench-lora"
        pipe.unet.add_adapter(lora_config(config.lora_rank), adapter_name=adapter)
        lora = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
        for name, param in lora.items():
            with torch.no_grad():
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
        pipe.unet.to(device=device, dtype=dtype)
        shared.adapters["random LoRA"] = adapter
    return SDXLGenerator(spec, weights, shared, adapter)


def _build_infinity(spec: Any, weights: Any, device: str, dtype: torch.dtype) -> Any:
    from transformers import T5Config, T5EncoderModel

    from mmdemo.generators.infinity import InfinityGenerator, _family_config
    from mmdemo.models.infinity.loading import FLAN_T5_XL_CONFIG, build_word_tokenizer, place_transformer

    config = dict(spec.full_config)
    with fast_init(dtype), torch.device("cpu"):
        transformer = InfinityGenerator.build_network(config, device="cpu")
        vae = InfinityGenerator.build_vae(config, device="cpu", with_encoder=False)
        t5 = T5EncoderModel(T5Config(**FLAN_T5_XL_CONFIG))
    # Precision as the full profile's loader places them, whatever --dtype says: the transformer fp32 with its
    # blocks bf16 on a GPU (fp32 on a CPU), T5 fp16 on a GPU (fp32 on a CPU), the VAE decoding in fp32.
    fill_(transformer, dtype=torch.float32)
    fill_(vae, dtype=torch.float32)
    fill_(t5, dtype=torch.float16 if device.startswith("cuda") else torch.float32)
    _reset_constant_buffers(transformer, vae)
    generator = InfinityGenerator(
        spec, weights, _family_config(config), place_transformer(transformer, device), vae.to(device), device
    )
    tokenizer = pad_tokenizer(build_word_tokenizer(SHAPES_CAPTIONS), FLAN_T5_XL_CONFIG["vocab_size"])
    generator._tokenizer, generator._text_encoder = tokenizer, t5.to(device).eval().requires_grad_(False)
    return generator


def _reset_constant_buffers(*modules: torch.nn.Module) -> None:
    """Buffers the official files hold as constants (zero key biases, the bit-order mask) keep their values."""
    from mmdemo.models.infinity.loading import _constant_value, _is_constant

    for module in modules:
        for name, buffer in module.named_buffers():
            if _is_constant(name):
                buffer.copy_(_constant_value(module, name).to(buffer.dtype))


def run_generator(model_id: str, device: str, dtype: torch.dtype, steps: int | None, row: Row) -> None:
    start = time.perf_counter()
    generator = build_generator(model_id, device, dtype)
    row.build_seconds = round(time.perf_counter() - start, 2)
    modules = _generator_modules(model_id, generator)
    row.params = sum(count(m)[0] for m in modules)
    row.param_bytes = sum(count(m)[1] for m in modules)
    settings = dict(REPORT_SETTINGS[model_id])
    total_steps = settings.pop("steps", None)
    if model_id == "infinity-2b":
        total_steps = 13
        row.step_unit = "scale"
    else:
        row.step_unit = "step"
        if steps is not None:
            settings["steps"] = min(steps, total_steps)
        else:
            settings["steps"] = total_steps
    limit = steps if (steps is not None and model_id == "infinity-2b") else None
    marks: list[float] = []
    cpu_marks: list[float] = []

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())
        if limit is not None and done >= limit and done < total:
            raise Stop

    outputs: dict[str, Any] = {}
    start = time.perf_counter()
    with _autocast(device, dtype):
        try:
            result = generator.generate(PROMPT, seed=0, progress=progress, **settings)
            outputs["image"] = result.image if hasattr(result, "image") else result
        except Stop:
            pass
    total = time.perf_counter() - start
    row.steps_run = len(marks)
    row.steps_total = int(total_steps)
    intervals = [b - a for a, b in zip(marks, marks[1:])]
    cpu_intervals = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])]
    if cpu_intervals:
        row.cpu_seconds_per_step = round(sorted(cpu_intervals)[len(cpu_intervals) // 2], 4)
    if model_id == "infinity-2b":
        _infinity_times(generator, marks, start, total, outputs, row, device)
        return
    per_step = sorted(intervals)[len(intervals) // 2] if intervals else total / max(1, len(marks))
    fixed = max(0.0, total - per_step * len(marks))
    row.seconds_per_step = round(per_step, 4)
    row.seconds_per_output = round(fixed + per_step * row.steps_total, 2)
    row.extrapolated = row.steps_run < row.steps_total
    row.extra.update(fixed_seconds=round(fixed, 2), measured_seconds=round(total, 2))
    image = outputs.get("image")
    if image is not None:
        import numpy as np

        array = np.asarray(image)
        row.output_size = f"{image.size[0]}x{image.size[1]}"
        row.finite = bool(
            array.std() > 0
        )  # the sampler's own guard raised on any NaN; a flat picture is suspect
        row.extra["pixel_std"] = round(float(array.std()), 2)


def _infinity_times(generator, marks, start, total, outputs, row, device) -> None:
    """Per-scale times; scales not run are extrapolated by their token count, the VAE decoder timed once."""
    from mmdemo.models.infinity.schedules import OFFICIAL_BUDGET_SCALES, get_schedule

    schedule = get_schedule(1.0, "1M", OFFICIAL_BUDGET_SCALES)
    tokens = [h * w for h, w in schedule.scales]
    run = len(marks)
    per_scale = [b - a for a, b in zip([start, *marks], marks)]
    row.extra["scale_seconds"] = [round(s, 3) for s in per_scale]
    if "image" in outputs:
        image = outputs["image"]
        import numpy as np

        row.output_size = f"{image.size[0]}x{image.size[1]}"
        row.finite = bool(np.asarray(image).std() > 0)
        row.seconds_per_output = round(total, 2)
        row.seconds_per_step = round((marks[-1] - start) / run, 3)
        return
    # Per token, a scale costs a + b * (tokens so far): the matrices, plus attention over the prefix. a and b
    # come from the last two scales run (the first one also encodes the prompt); then the decoder, timed once.
    prefix = [sum(tokens[: k + 1]) for k in range(len(tokens))]
    t2, n2, l2 = per_scale[-1], tokens[run - 1], prefix[run - 1]
    a, b = t2 / n2, 0.0
    if run >= 3:
        t1, n1, l1 = per_scale[-2], tokens[run - 2], prefix[run - 2]
        b = max(0.0, (t2 / n2 - t1 / n1) / (l2 - l1))
        a = t2 / n2 - b * l2
    rest = sum(n * (a + b * length) for n, length in zip(tokens[run:], prefix[run:]))
    final = schedule.scales[-1]
    codes = torch.zeros(1, generator.family.transformer.get("codebook_dim", 32), *final, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        pixels = generator.vae.decode(codes)
    decode = time.perf_counter() - t0
    row.output_size = f"{pixels.shape[-1]}x{pixels.shape[-2]}"
    row.finite = bool(torch.isfinite(pixels).all())
    row.seconds_per_output = round(marks[-1] - start + rest + decode, 2)
    row.seconds_per_step = round(row.seconds_per_output / 13, 3)
    row.extrapolated = True
    row.extra.update(decode_seconds=round(decode, 2), extrapolated_seconds=round(rest, 2))
    row.notes.append(f"scales {run + 1}-13 extrapolated by token count ({sum(tokens[run:])} of 10521 tokens)")


def _generator_modules(model_id: str, generator: Any) -> list[torch.nn.Module]:
    if model_id.startswith("sdxl"):
        pipe = generator.shared.pipe
        return [pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2]
    if model_id == "infinity-2b":
        return [generator.transformer, generator.vae, generator._text_encoder]
    return [generator.model]


@contextlib.contextmanager
def _autocast(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for weights converted to ``dtype`` while the samplers start from fp32 noise."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype):
        yield


# ------------------------------------------------------------------------------------------ one model, all models


def run_one(model_id: str, device: str, dtype_name: str, steps: int | None) -> Row:
    from mmdemo.registry import CAPTIONER_IDS

    dtype = DTYPES[dtype_name]
    row = Row(model_id, device, dtype_name, threads=torch.get_num_threads())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        if model_id in CAPTIONER_IDS:
            run_captioner(model_id, device, dtype, row)
        else:
            run_generator(model_id, device, dtype, steps, row)
    except Exception as err:  # noqa: BLE001 - one model's failure is its row, the others still run
        import traceback

        traceback.print_exc()
        row.error = f"{type(err).__name__}: {err}"
    if device == "cuda":
        row.peak_memory_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row.peak_memory_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def format_table(rows: list[Row]) -> str:
    head = [
        "model",
        "device",
        "dtype",
        "params",
        "GB (params)",
        "peak MB",
        "s/step",
        "steps",
        "s/output",
        "finite",
        "output",
    ]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        per = "-" if r.seconds_per_step is None else f"{r.seconds_per_step:g} /{r.step_unit}"
        out = (
            "-"
            if r.seconds_per_output is None
            else f"{r.seconds_per_output:g}" + (" (extrapolated)" if r.extrapolated else "")
        )
        lines.append(" | ".join([
            r.model, r.device, r.dtype, f"{r.params / 1e6:,.1f}M", f"{r.param_bytes / 1e9:.2f}", f"{r.peak_memory_mb:,.0f}",
            per, f"{r.steps_run}/{r.steps_total}", out, "yes" if r.finite else "NO", r.output_size or (r.error or "-"),
        ]))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated ids, or all")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    parser.add_argument(
        "--steps", type=int, default=None, help="real denoising steps (scales) before extrapolating"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run in this process
    args = parser.parse_args(argv)
    ids = list(CAPTIONER_IDS) + list(GENERATOR_IDS) if args.models == "all" else args.models.split(",")
    unknown = [m for m in ids if m not in (*CAPTIONER_IDS, *GENERATOR_IDS)]
    if unknown:
        parser.error(f"unknown model id(s) {unknown}")
    if args.one:
        row = run_one(ids[0], args.device, args.dtype, args.steps)
        print("ROW " + json.dumps(asdict(row)), flush=True)
        return 0
    rows = []
    for model_id in ids:
        command = [
            sys.executable,
            __file__,
            "--one",
            "--models",
            model_id,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        if args.steps is not None:
            command += ["--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if found:
            row = Row(**json.loads(found[-1]))
        else:
            row = Row(
                model_id,
                args.device,
                args.dtype,
                error=(done.stderr.strip().splitlines() or ["no output"])[-1],
            )
        if row.error:
            sys.stderr.write(done.stderr[-3000:])
        rows.append(row)
        print(
            f"{model_id}: " + json.dumps({k: v for k, v in asdict(row).items() if k != "notes"}), flush=True
        )
    print()
    print(format_table(rows))
    for row in rows:
        if "bound_ratio" in row.extra:
            e = row.extra
            print(
                f"\n{row.model} decoding: {e['tokens_per_s']} tokens/s; memory bandwidth {e['bandwidth_gb_s']} GB/s "
                f"over {e['llm_bytes'] / 1e9:.2f} GB of LLM weights per token = bound {e['bound_tokens_per_s']} tokens/s; "
                f"ratio bound/measured = {e['bound_ratio']}x (target <= 1.5x)"
            )
        for note in row.notes:
            print(f"{row.model}: {note}")
        if row.device == "cuda" and row.seconds_per_output is not None and row.step_unit != "token":
            # ZeroGPU aborts a call that outlives its slot: ask for 1.5x what was measured.
            per_step = row.seconds_per_step or 0.0
            fixed = row.seconds_per_output - per_step * row.steps_total
            print(
                f"{row.model}: ZeroGPU ask GpuCost(fixed={1.5 * fixed + 5:.1f}, per_step={1.5 * per_step:.3f})"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0 if all(r.error is None and r.finite for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
