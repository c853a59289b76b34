"""Live previews: when they are drawn, what they show, that they are always finite, that they never change the
final picture, and that the API path draws none unless asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo.previews import apply_rgb_map, emit_preview, fit_rgb_map, preview_steps
from mmdemo.registry import GENERATOR_IDS

PROMPT = "a small red circle on the left"


# ------------------------------------------------------------------------------------------------ when


@pytest.mark.parametrize(
    ("total", "expected"),
    [(20, {4, 8, 12, 16}), (25, {5, 10, 15, 20}), (5, {1, 2, 3, 4}), (3, {1, 2}), (1, set()), (0, set())],
)
def test_previews_are_a_few_evenly_spread_steps_before_the_last(total, expected):
    assert preview_steps(total) == expected


@pytest.mark.parametrize("total", [2, 7, 9, 61, 100, 1000])
def test_never_more_than_asked_and_never_the_last_step(total):
    steps = preview_steps(total)
    assert 1 <= len(steps) <= 4 and max(steps) < total
    assert preview_steps(total, count=total - 1) == set(range(1, total))  # "every step but the last"


# ------------------------------------------------------------------------------------------------ what


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("preset", ["fast", "report"])
def test_the_predicted_clean_sample_is_the_one_the_scheduler_itself_computes(kind, preset):
    """diffusers' DDPM (report preset) returns its clean-sample prediction; DPM-Solver++ (fast) keeps it as its
    model output. Ours, computed before the step and without touching the scheduler, must equal both."""
    from types import SimpleNamespace

    from mmdemo.models.diffusion.sampling import make_scheduler, predicted_clean

    config = SimpleNamespace(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type=kind
    )
    scheduler = make_scheduler(preset, config, clip_sample=False)
    scheduler.set_timesteps(20)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=generator)
    for t in scheduler.timesteps[:4]:
        pred = torch.randn(2, 3, 8, 8, generator=generator)
        ours = predicted_clean(scheduler, sample, pred, t)
        out = scheduler.step(pred, t, sample, generator=generator)
        theirs = out.pred_original_sample if preset == "report" else scheduler.model_outputs[-1]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        sample = out.prev_sample


def test_a_non_finite_preview_is_skipped_and_a_finite_one_is_sent_at_the_final_size():
    seen: list[tuple[int, int, Image.Image]] = []
    pixels = torch.zeros(3, 4, 4)
    for bad in (float("nan"), float("inf")):
        broken = pixels.clone()
        broken[1, 2, 3] = bad
        assert emit_preview(lambda *a: seen.append(a), 2, 5, broken, (32, 32)) is False
    assert seen == []
    pixels[0] = 1.0  # red channel full, the rest at mid grey
    assert emit_preview(lambda *a: seen.append(a), 2, 5, pixels, (32, 24)) is True
    ((done, total, picture),) = seen
    assert (done, total, picture.size, picture.mode) == (2, 5, (32, 24), "RGB")
    assert picture.getpixel((31, 23)) == (255, 128, 128)


def test_the_least_squares_map_recovers_a_linear_latent_space():
    generator = torch.Generator().manual_seed(1)
    truth = torch.randn(5, 3, generator=generator)  # 4 channels + bias
    latents = torch.randn(6, 4, 4, 4, generator=generator)
    colours = (latents.permute(0, 2, 3, 1) @ truth[:-1] + truth[-1]).permute(0, 3, 1, 2)
    pixels = colours.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # each latent covers 8x8 pixels
    fitted = fit_rgb_map(latents, pixels)
    torch.testing.assert_close(fitted, truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(apply_rgb_map(latents[0], fitted), colours[0], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ every family


@pytest.fixture(scope="module")
def generators():
    """``generators(model_id)``: that demo generator, loaded once for this module."""
    import functools

    import mmdemo

    return functools.cache(lambda model_id: mmdemo.load_generator(model_id, profile="demo"))


@pytest.mark.parametrize("model_id", GENERATOR_IDS)
def test_each_family_shows_the_picture_forming_and_previews_never_change_it(generators, model_id):
    generator = generators(model_id)
    plain = generator.generate(PROMPT, seed=11, preset="fast")
    seen: list[tuple[int, int, Image.Image]] = []
    steps: list[int] = []
    shown = generator.generate(
        PROMPT,
        seed=11,
        preset="fast",
        preview=lambda *a: seen.append(a),
        progress=lambda d, n: steps.append(d),
    )
    assert shown.image.tobytes() == plain.image.tobytes()  # same seed, same final bytes, previews or not
    assert len(seen) >= 2, f"{model_id} drew {len(seen)} previews"
    total = steps[-1]
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen) and all(d < total for d, _, _ in seen)
    assert all(n == total for _, n, _ in seen)
    pictures = [np.asarray(p) for _, _, p in seen]
    assert all(p.shape == np.asarray(shown.image).shape for p in pictures)  # drawn at the final size
    # the picture forms: previews differ from one another, and the last is closer to the result than the first
    assert len({p.tobytes() for p in pictures}) >= 2
    final = np.asarray(shown.image).astype(float)
    first, last = (np.abs(p.astype(float) - final).mean() for p in (pictures[0], pictures[-1]))
    assert last < first, (model_id, first, last)


def test_a_non_finite_prediction_shows_no_preview_and_the_final_picture_is_unchanged(generators, monkeypatch):
    generator = generators("pixel-diffusion")
    plain = generator.generate(PROMPT, seed=4, preset="fast")
    monkeypatch.setattr(generator.model, "preview_pixels", lambda clean: clean * float("nan"))
    seen: list = []
    shown = generator.generate(PROMPT, seed=4, preset="fast", preview=lambda *a: seen.append(a))
    assert seen == [] and shown.image.tobytes() == plain.image.tobytes()


def test_large_sdxl_pictures_preview_through_the_fitted_map_without_a_decode(generators, monkeypatch):
    from mmdemo.generators.sdxl import PREVIEW_DECODE_MAX_PIXELS

    generator = generators("sdxl-base")
    vae = generator.shared.pipe.vae
    monkeypatch.setattr(vae, "decode", lambda *a, **k: pytest.fail("a large preview must not decode"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with generator.shared.lock:
        pixels = generator.preview_pixels(latents, PREVIEW_DECODE_MAX_PIXELS + 1)
    assert pixels.shape == (3, 16, 16) and bool(pixels.isfinite().all())


def test_the_fitted_sdxl_map_reproduces_the_colours_of_pictures_it_has_not_seen(generators):
    from mmdemo.previews import colour_fields

    pipe = generators("sdxl-base").shared.pipe
    with generators("sdxl-base").shared.lock:
        rgb_map = generators("sdxl-base").shared.latent_rgb_map()
    held_out = colour_fields(4, 32, seed=99)
    with torch.no_grad():
        latents = pipe.vae.encode(held_out).latent_dist.mean * pipe.vae.config.scaling_factor
    approx = torch.stack([apply_rgb_map(x, rgb_map) for x in latents])
    truth = torch.nn.functional.avg_pool2d(held_out, held_out.shape[-1] // latents.shape[-1])
    error = (approx - truth).abs().mean().item()
    spread = (truth - truth.mean()).abs().mean().item()
    # A flat guess of the mean colour would be off by ``spread``; the demo VAE, trained on flat shapes only, is
    # far from linear, so the map explains about half of the colour (the real SDXL VAE is closer to linear).
    assert error < 0.6 * spread, (error, spread)


# ------------------------------------------------------------------------------------------------ API path


def test_the_service_draws_no_previews_unless_asked():
    from mmdemo import service
    from mmdemo.interfaces import GenerationResult, Generator
    from mmdemo.registry import get_spec
    from mmdemo.runtime import ModelManager

    class Recorder(Generator):
        def __init__(self):
            self.spec, self.device, self.requests = get_spec("pixel-diffusion"), "cpu", []
            self.weights = type("W", (), {"profile": "demo"})()

        @classmethod
        def load(cls, spec, weights, *, device=None):
            raise NotImplementedError

        def sample(self, request, progress):
            self.requests.append(request)
            if request.preview is not None:
                request.preview(1, 2, Image.new("RGB", (8, 8)))
            return GenerationResult(Image.new("RGB", (8, 8), (200, 0, 0)), {}, [])

    fake = Recorder()
    manager = ModelManager("demo", device="cpu", loader=lambda m, p, d: fake)
    settings = service.check_generate_settings(PROMPT, 3, "fast")
    list(service.generate_images(manager, settings, ["pixel-diffusion"]))
    assert fake.requests[-1].preview is None
    seen: list = []
    list(service.generate_images(manager, settings, ["pixel-diffusion"], previews=lambda *a: seen.append(a)))
    assert [(m, d, n) for m, d, n, _ in seen] == [("pixel-diffusion", 1, 2)]
    assert fake.requests[-1] == fake.requests[0]  # the same checked request otherwise


def _streamed(generate, *args) -> list[tuple]:
    """Every output the handler yields, as sent at that moment (the records list grows in place)."""
    return [
        (*o[:-2], list(o[-2]), o[-1])
        for o in generate(PROMPT, ["infinity-2b"], 5, "fast", "", "{}", None, *args)
    ]


@pytest.fixture(scope="module")
def app_context(generators):
    """The app's handler context over the generators this module already loaded."""
    from mmdemo.runtime import ModelManager
    from mmdemo.ui.handlers import AppContext

    return AppContext.create("demo", ModelManager("demo", device="cpu", loader=lambda m, p, d: generators(m)))


def test_the_generate_handler_streams_previews_only_when_asked(app_context):
    from mmdemo.ui.handlers import generate_handler

    generate = generate_handler(app_context)
    panel = GENERATOR_IDS.index("infinity-2b")
    records = 2 * len(GENERATOR_IDS)
    for asked in (False, True):
        outputs = _streamed(generate, asked) if asked else _streamed(generate)
        early = [
            o[panel] for o in outputs if o[panel] is not None and not o[records]
        ]  # a picture, no record yet
        if asked:
            assert len(early) >= 2 and all(p.size == outputs[-1][panel].size for p in early)
            assert any(
                "step" in o[len(GENERATOR_IDS) + panel] for o in outputs[:-1]
            )  # the panel's own progress
        else:
            assert early == []
        assert outputs[-1][records][0]["error"] is None and outputs[-1][panel] is not None


@pytest.mark.bench
def test_the_previews_bench_prints_a_ratio_per_model(capsys):
    from conftest import load_script

    bench = load_script("previews", folder="bench")
    rows = bench.main(bench.parse_args(["--models", "infinity-2b", "--repeats", "1"]))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("infinity-2b"))
    assert row.split()[3] == f"{rows[0]['ratio']:.3f}" and rows[0]["ratio"] > 0, out
    assert rows[0]["previews"] >= 2 and rows[0]["same_final_picture"] is True, rows


def test_a_closed_stream_stops_sampling_at_the_next_step(app_context):
    """Gradio closes the handler when its client leaves; the model sampling behind it stops at its next step."""
    import time

    from mmdemo.ui.handlers import generate_handler

    def counts() -> tuple[int, int]:
        stats = app_context.manager.monitor.snapshot().get("pixel-diffusion", {})
        return stats.get("cancelled", 0), stats.get("ok", 0)

    cancelled, ok = counts()
    panel = GENERATOR_IDS.index("pixel-diffusion")
    long_run = '{"pixel-diffusion": {"steps": 100}}'  # the first preview comes at step 20 of 100
    stream = generate_handler(app_context)(PROMPT, ["pixel-diffusion"], 5, "fast", "", long_run, None, True)
    assert any(output[panel] is not None for output in stream)  # stops at the first preview
    closed = time.perf_counter()
    stream.close()
    while counts()[0] < cancelled + 1:
        assert time.perf_counter() - closed < 5, "sampling went on after the stream was closed"
        time.sleep(0.05)
    assert counts() == (cancelled + 1, ok)  # cancelled, not finished
