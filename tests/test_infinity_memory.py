"""Infinity's memory like upstream: blocks in bf16 on a GPU, checkpoints memory-mapped, T5 in fp16."""

from __future__ import annotations

import torch

import mmdemo
from mmdemo.models.infinity import loading


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_on_a_gpu_the_blocks_are_bf16_and_the_rest_stays_fp32():
    transformer = mmdemo.load_generator("infinity-2b", "demo", device="cpu").transformer
    fp32 = _bytes(transformer)
    blocks = sum(_bytes(block) for block in transformer.blocks)
    loading.cast_like_upstream(transformer, "cuda")
    assert {p.dtype for block in transformer.blocks for p in block.parameters()} == {torch.bfloat16}
    outside = [p for name, p in transformer.named_parameters() if not name.startswith("block_chunks.")]
    assert outside and {p.dtype for p in outside} == {torch.float32}  # embeddings, head, text norm
    assert _bytes(transformer) == fp32 - blocks // 2
    loading.cast_like_upstream(transformer, "cpu")  # a CPU has no fast bf16 kernels: all fp32 again
    assert {p.dtype for p in transformer.parameters()} == {torch.float32}


def test_checkpoints_are_memory_mapped_and_read_safely(tmp_path, monkeypatch):
    path = tmp_path / "infinity_2b_reg.pth"
    torch.save({"w": torch.arange(4.0)}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = loading.read_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(4.0))
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]
