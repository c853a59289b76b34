"""Fast stand-ins for models, so arena tests exercise the database and the rules, not the networks.

A fake's picture carries its model's name in the PNG metadata on purpose: the arena must strip it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mmdemo.runtime import ModelManager


@dataclass
class FakeWeights:
    profile: str = "demo"


class FakeGenerator:
    def __init__(self, model_id: str, fail: bool = False):
        self.model_id, self.fail, self.weights = model_id, fail, FakeWeights()

    def generate(self, prompt, seed=0, **options):
        if self.fail:
            raise RuntimeError(f"{self.model_id} exploded")
        shade = (sum(map(ord, self.model_id)) + int(seed)) % 256
        image = Image.new("RGB", (32, 32), (shade, 255 - shade, 128))
        image.info["model"] = self.model_id  # metadata a careless server would leak
        return image


class FakeCaptioner:
    def __init__(self, model_id: str, fail: bool = False):
        self.model_id, self.fail, self.weights = model_id, fail, FakeWeights()

    def caption(self, images, **options):
        if self.fail:
            raise RuntimeError(f"{self.model_id} exploded")
        return [f"a picture described by fake number {len(self.model_id)}" for _ in images]


def fake_manager(failing: tuple[str, ...] = ()) -> ModelManager:
    from mmdemo.registry import REGISTRY

    def loader(model_id, profile, device):
        cls = FakeCaptioner if REGISTRY[model_id].kind == "captioner" else FakeGenerator
        return cls(model_id, fail=model_id in failing)

    return ModelManager("demo", device="cpu", loader=loader)
