"""Model manager (lazy, once, LRU offload) and the service layer's per-model error isolation."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from mmdemo import service
from mmdemo.inputs import InputError
from mmdemo.runtime import ModelManager, module_bytes


class FakeModel:
    """Stands in for a loaded model: a real torch module (so bytes are measured) and a device log."""

    def __init__(self, model_id: str, params: int = 1000):
        self.model_id = model_id
        self.net = torch.nn.Linear(params, 1, bias=False)  # params * 4 bytes
        self.device = "cpu"
        self.moves: list[str] = []

    def to(self, device: str):
        self.device = device
        self.moves.append(device)
        return self


def test_module_bytes_counts_held_modules_once():
    model = FakeModel("x", params=250)
    model.alias = model.net  # the same tensors reachable twice
    assert module_bytes(model) == 250 * 4


def test_concurrent_requests_load_a_model_once():
    calls: list[str] = []

    def slow_loader(model_id, profile, device):
        calls.append(model_id)
        time.sleep(0.2)
        return FakeModel(model_id)

    manager = ModelManager("demo", device="cpu", loader=slow_loader)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(manager.get("pixel-diffusion"))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["pixel-diffusion"]
    assert len({id(r) for r in results}) == 1


def test_gpu_budget_offloads_least_recently_used_but_never_a_model_in_use():
    # "cuda:fake" exercises the budget logic without a GPU: FakeModel.to only records the move.
    manager = ModelManager(
        "demo", device="cuda:fake", gpu_budget_bytes=2500 * 4, loader=lambda m, p, d: FakeModel(m).to(d)
    )
    a = manager.get("pixel-diffusion")
    b = manager.get("latent-diffusion")
    assert a.device == b.device == "cuda:fake"
    manager.get("pixel-diffusion")  # a is now the most recently used
    c = manager.get("sdxl-base")  # 3000 params > budget: evict the LRU one, b
    assert (a.device, b.device, c.device) == ("cuda:fake", "cpu", "cuda:fake")
    with manager.use("latent-diffusion") as b_again:  # b comes back and evicts a, now the LRU
        assert b_again.device == "cuda:fake"
        with manager.use("pixel-diffusion") as a_again:
            # b is in use and c is resident: only c may be offloaded to make room for a
            assert b_again.device == "cuda:fake" and a_again.device == "cuda:fake"
            assert c.device == "cpu"
    assert set(manager.loaded()) == {"pixel-diffusion", "latent-diffusion", "sdxl-base"}


def test_unknown_model_id_fails_before_loading():
    manager = ModelManager("demo", device="cpu", loader=lambda *a: pytest.fail("must not load"))
    with pytest.raises(KeyError, match="valid ids"):
        manager.get("not-a-model")


class FakeCaptioner:
    def __init__(self, text: str | None):
        self.text = text
        self.weights = type("W", (), {"profile": "demo"})()

    def caption(self, images, **options):
        if self.text is None:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [self.text for _ in images]


class FakeGenerator:
    def __init__(self, fail: bool):
        self.fail = fail
        self.weights = type("W", (), {"profile": "demo"})()

    def generate(self, prompt, *, seed, progress=None, **kwargs):
        if self.fail:
            raise RuntimeError("sampler exploded (simulated)")
        if progress:
            progress(1, 1)
        image = Image.new("RGB", (8, 8), (seed % 256, 0, 0))
        image.info["mmdemo_notices"] = ["prompt truncated (simulated)"]
        return image


def test_one_failing_captioner_leaves_the_others_working():
    models = {
        "resnet18-xattn": FakeCaptioner("a red circle"),
        "clipb32-xattn": FakeCaptioner(None),
        "qformer-bert": FakeCaptioner("a blue square"),
        "qformer-tinyllama": FakeCaptioner("a dot"),
    }
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    records, notices = service.caption_image(
        manager, Image.new("RGBA", (16, 16)), "all", references=["a red circle", "a red ball on the left"]
    )
    by_id = {r.model: r for r in records}
    assert list(by_id) == list(models)
    assert by_id["resnet18-xattn"].caption == "a red circle" and by_id["resnet18-xattn"].error is None
    assert by_id["resnet18-xattn"].bleu["bleu1"] == pytest.approx(100.0)
    assert by_id["clipb32-xattn"].caption is None and "out of memory" in by_id["clipb32-xattn"].error
    assert by_id["qformer-bert"].caption == "a blue square"
    with pytest.raises(InputError):
        service.caption_image(manager, b"not an image", "all")


def test_one_failing_generator_leaves_the_others_working():
    models = {
        "pixel-diffusion": FakeGenerator(False),
        "latent-diffusion": FakeGenerator(True),
        "sdxl-base": FakeGenerator(False),
    }
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    settings = service.check_generate_settings("a red circle", 42, "fast")
    steps_seen = []
    results = list(
        service.generate_images(
            manager,
            settings,
            list(models),
            scorer=lambda image, prompt, w: (0.5, "test score"),
            progress=lambda m, done, total: steps_seen.append(m),
        )
    )
    assert [r[0] for r in results] == list(models)
    ok, failed, ok2 = (r[2] for r in results)
    assert ok.error is None and ok.seed == 42 and ok.weights == "demo" and ok.score == 0.5
    assert "prompt truncated (simulated)" in ok.notices
    assert results[1][1] is None and "exploded" in failed.error
    assert ok2.error is None and results[2][1].getpixel((0, 0)) == (42, 0, 0)
    assert steps_seen == ["pixel-diffusion", "sdxl-base"]


def test_generate_settings_are_checked_once():
    with pytest.raises(InputError, match="empty"):
        service.check_generate_settings("  ", 1)
    with pytest.raises(InputError, match="preset"):
        service.check_generate_settings("a", 1, "slow")
    with pytest.raises(InputError, match="steps"):
        service.check_generate_settings("a", 1, steps={"pixel-diffusion": 0})
    settings = service.check_generate_settings("a", 1, steps={"pixel-diffusion": "20", "sdxl-base": None})
    assert settings.steps == {"pixel-diffusion": 20}
    with pytest.raises(InputError, match="Unknown generator"):
        list(service.generate_images(ModelManager("demo", device="cpu"), settings, ["dalle-3"]))
