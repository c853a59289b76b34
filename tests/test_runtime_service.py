"""Model manager (lazy, once, LRU offload) and the service layer's per-model error isolation."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from mmdemo import service
from mmdemo.inputs import InputError
from mmdemo.interfaces import Captioner, CaptionResult, GenerationResult, Generator
from mmdemo.registry import get_spec
from mmdemo.runtime import BUILD_LOCK, ModelManager, module_bytes


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


def test_model_builds_and_the_about_table_take_turns(monkeypatch):
    """transformers' lazy imports race across threads, so a load holds BUILD_LOCK and so does the About table."""
    from mmdemo.ui import about

    def free_to_others() -> bool:
        taken: list[bool] = []

        def try_from_another_thread() -> None:
            taken.append(BUILD_LOCK.acquire(blocking=False))
            if taken[0]:
                BUILD_LOCK.release()

        other = threading.Thread(target=try_from_another_thread)
        other.start()
        other.join()
        return taken[0]

    held_while: dict[str, bool] = {}

    def loader(model_id, profile, device):
        held_while["load"] = not free_to_others()
        return FakeModel(model_id)

    ModelManager("demo", device="cpu", loader=loader).get("pixel-diffusion")

    def param_row(spec):
        held_while.setdefault("about", not free_to_others())
        raise RuntimeError("stop after one row")

    monkeypatch.setattr("mmdemo.params.param_row", param_row)
    about.param_table.cache_clear()
    try:
        about.param_table()
    finally:
        about.param_table.cache_clear()
    assert held_while == {"load": True, "about": True}, "a model build ran while another thread could build too"
    assert free_to_others(), "BUILD_LOCK was left held"


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


_DEMO_WEIGHTS = type("W", (), {"profile": "demo"})()


class FakeCaptioner(Captioner):
    """The real Captioner contract (options checked against the registry) around a canned caption."""

    def __init__(self, text: str | None, model_id: str = "resnet18-xattn"):
        self.text, self.spec, self.weights, self.device = text, get_spec(model_id), _DEMO_WEIGHTS, "cpu"

    @classmethod
    def load(cls, spec, weights, *, device=None):
        raise NotImplementedError

    def describe(self, images, request):
        if self.text is None:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [CaptionResult(self.text, dict(request.options)) for _ in images]


class FakeGenerator(Generator):
    """The real Generator contract around a picture coloured by the seed."""

    def __init__(self, fail: bool, model_id: str = "pixel-diffusion"):
        self.fail, self.spec, self.weights, self.device = fail, get_spec(model_id), _DEMO_WEIGHTS, "cpu"
        self.requests: list = []

    @classmethod
    def load(cls, spec, weights, *, device=None):
        raise NotImplementedError

    def sample(self, request, progress):
        self.requests.append(request)
        if self.fail:
            raise RuntimeError("sampler exploded (simulated)")
        if progress:
            progress(1, 1)
        image = Image.new("RGB", (8, 8), (request.seed % 256, 0, 0))
        return GenerationResult(image, dict(request.options), ["prompt truncated (simulated)"])


def test_one_failing_captioner_leaves_the_others_working():
    models = {
        "resnet18-xattn": FakeCaptioner("a red circle", "resnet18-xattn"),
        "clipb32-xattn": FakeCaptioner(None, "clipb32-xattn"),
        "qformer-bert": FakeCaptioner("a blue square", "qformer-bert"),
        "qformer-tinyllama": FakeCaptioner("a dot", "qformer-tinyllama"),
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
    with pytest.raises(InputError, match="This file is not a readable image"):
        service.caption_image(manager, b"not an image", "all")


def test_one_failing_generator_leaves_the_others_working():
    models = {
        "pixel-diffusion": FakeGenerator(False, "pixel-diffusion"),
        "latent-diffusion": FakeGenerator(True, "latent-diffusion"),
        "sdxl-base": FakeGenerator(False, "sdxl-base"),
    }
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    settings = service.check_generate_settings("a red circle", 42, "fast", profiles="demo")
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
    # The settings actually used come back in the record; the shared notices are in the failed one too.
    assert ok.settings == {
        "seed": 42,
        "preset": "fast",
        "steps": 20,
        "guidance": 3.0,
    }  # the registry's defaults
    assert ok2.settings["steps"] == 25 and ok2.settings["width"] == 32  # SDXL's, demo profile
    assert failed.settings == {} and failed.notices == []


def test_generate_settings_are_checked_once():
    with pytest.raises(InputError, match="empty"):
        service.check_generate_settings("  ", 1)
    with pytest.raises(InputError, match="preset"):
        service.check_generate_settings("a", 1, "slow")
    with pytest.raises(InputError, match=r"steps must be a whole number from 1 to 1000, got 0"):
        service.check_generate_settings("a", 1, options={"pixel-diffusion": {"steps": 0}}, profiles="demo")
    with pytest.raises(InputError, match="unknown generator"):
        service.check_generate_settings("a", 1, options={"dalle-3": {"steps": 2}}, profiles="demo")
    settings = service.check_generate_settings(
        "a", 1, options={"pixel-diffusion": {"steps": "20"}, "sdxl-base": {"steps": None}}, profiles="demo"
    )
    assert settings.requests["pixel-diffusion"]["steps"] == 20  # given, as a number
    assert settings.requests["sdxl-base"]["steps"] == 25  # blank: the fast preset's default
    with pytest.raises(InputError, match="Unknown generator"):
        list(service.generate_images(ModelManager("demo", device="cpu"), settings, ["dalle-3"]))


def test_an_option_a_model_lacks_is_a_notice_in_its_record_only():
    models = {
        "pixel-diffusion": FakeGenerator(False, "pixel-diffusion"),
        "sdxl-base": FakeGenerator(False, "sdxl-base"),
    }
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    settings = service.check_generate_settings(
        "a red circle",
        7,
        options={"pixel-diffusion": {"width": 64}, "sdxl-base": {"width": 64}},
        profiles="demo",
    )
    records = {m: r for m, _, r in service.generate_images(manager, settings, list(models))}
    assert records["pixel-diffusion"].error is None
    assert any("no option 'width'" in n and "64" in n for n in records["pixel-diffusion"].notices)
    assert records["sdxl-base"].settings["width"] == 64  # SDXL takes it
    assert not any("width" in n for n in records["sdxl-base"].notices)


def test_a_caption_option_outside_one_model_range_fails_that_model_only():
    models = {"resnet18-xattn": FakeCaptioner("a red circle", "resnet18-xattn"),
              "qformer-bert": FakeCaptioner("a blue square", "qformer-bert")}  # fmt: skip
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: models[m])
    manager_ids = list(models)
    records = []
    for model_id in manager_ids:
        found, _ = service.caption_image(
            manager, Image.new("RGB", (8, 8)), model_id, options={"num_beams": 3, "repetition_penalty": 1.2}
        )
        records += found
    xattn, bert = records
    assert xattn.error is None and xattn.settings["num_beams"] == 3
    assert any("repetition_penalty" in n for n in xattn.notices)  # not an option of this model: a notice
    assert bert.caption is None and "num_beams must be a whole number from 1 to 1, got 3" in bert.error
