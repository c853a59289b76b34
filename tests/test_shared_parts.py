"""A part two models share (SDXL's pipeline under base and LoRA) is loaded once, counted once and never
offloaded from under a running model. Fake models with real tensors; the GPU is a device name here."""

from __future__ import annotations

import torch

from mmdemo.runtime import ModelManager

FLOAT = 4  # bytes


class Part:
    def __init__(self, n: int, device: str):
        self.net = torch.nn.Linear(n, 1, bias=False)
        self.device = device  # loaders put what they load on the run device

    def to(self, device):
        self.device = device
        return self


class FakeModel:
    """Its own small module, plus (maybe) a shared part it names in ``shared_parts``."""

    def __init__(self, own: int, device: str, part: Part | None = None, key: str | None = None):
        self.own = torch.nn.Linear(own, 1, bias=False)
        self.part = part  # not a Module itself: the manager counts it through ``shared_parts``
        self.shared_parts = (key,) if key else ()
        self.device = device

    def to(self, device):
        self.device = device
        if self.part is not None:
            self.part.to(device)
        return self


def _manager(budget: int) -> tuple[ModelManager, list[str]]:
    builds: list[str] = []
    manager: ModelManager

    def loader(model_id, profile, device):
        if model_id in ("sdxl-base", "sdxl-lora"):

            def build():
                builds.append("pipeline")
                return Part(1000, device)

            return FakeModel(100, device, manager.shared.get("pipeline", build), "pipeline")
        return FakeModel(200, device)

    manager = ModelManager("demo", device="cuda", gpu_budget_bytes=budget, loader=loader)
    return manager, builds


def test_a_shared_part_is_built_once_and_counted_once():
    manager, builds = _manager(budget=(100 + 100 + 1000) * FLOAT)  # fits only if the part counts once
    base, lora = manager.get("sdxl-base"), manager.get("sdxl-lora")
    assert builds == ["pipeline"] and base.part is lora.part
    assert {m["device"] for m in manager.loaded().values()} == {"cuda"}, "nothing offloaded"
    assert manager.shared.bytes("pipeline") == 1000 * FLOAT


def test_offloading_one_user_moves_the_part_and_marks_its_other_users():
    manager, _ = _manager(budget=(100 + 100 + 1000) * FLOAT)
    base, lora = manager.get("sdxl-base"), manager.get("sdxl-lora")
    manager.get("pixel-diffusion")  # 200 more floats: the shared part's users go, least recent first
    loaded = manager.loaded()
    assert loaded["pixel-diffusion"]["device"] == "cuda"
    assert loaded["sdxl-base"]["device"] == loaded["sdxl-lora"]["device"] == "cpu"
    assert base.part.device == "cpu"
    with manager.use("sdxl-lora") as model:  # asked for again: it comes back with its part
        assert model.part.device == "cuda"


def test_a_part_a_running_model_holds_is_never_offloaded():
    manager, _ = _manager(budget=(100 + 100 + 1000) * FLOAT)
    base = manager.get("sdxl-base")
    manager.get("sdxl-lora")
    with manager.use("sdxl-lora"):
        manager.get("pixel-diffusion")  # over budget, but base's part is the running LoRA's pipeline
        assert base.part.device == "cuda" and manager.loaded()["sdxl-base"]["device"] == "cuda"
