"""The comparison gallery (HTML + CSV), FID/KID with stand-in feature networks, and the page in a real browser."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHROMIUM, CHROMIUM_ARGS, require_or_skip
from PIL import Image

from mmdemo.data.shapes import render_scene, sample_single_object_prompts
from mmdemo.eval.gallery import GalleryCell, write_gallery
from mmdemo.registry import GENERATOR_IDS


def _cells(tmp_path) -> list[GalleryCell]:
    (tmp_path / "a").mkdir(parents=True)
    cells = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (8, 8), colour).save(tmp_path / "a" / f"{i}.png")
        cells.append(GalleryCell(i, f"prompt <{i}> & co", "model-a", 10 + i, Path("a") / f"{i}.png", 0.5,
                                 [0.2, 0.9][i], "judge"))  # fmt: skip
    cells.append(GalleryCell(0, "prompt <0> & co", "model-b", 10, None, None, None, error="out of memory"))
    cells.append(GalleryCell(1, "prompt <1> & co", "model-b", 11, None, None, None, error="out of memory"))
    return cells


def test_gallery_page_and_csv(tmp_path):
    page, table = write_gallery(tmp_path, _cells(tmp_path), ["model-a", "model-b"], command="python x.py")
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 2  # inlined: the page stands alone
    assert "prompt &lt;1&gt; &amp; co" in text and "<1>" not in text  # escaped
    assert "seed 11" in text and "score 0.9" in text and "0.50 s" in text and "out of memory" in text
    assert 'data-score0="0.9"' in text and 'data-score1=""' in text and "function sortBy" in text
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["prompt_index"], r["model"], r["seed"]) for r in rows] == [
        ("0", "model-a", "10"), ("0", "model-b", "10"), ("1", "model-a", "11"), ("1", "model-b", "11")
    ]  # fmt: skip
    assert rows[1]["error"] == "out of memory" and rows[1]["file"] == "" and rows[2]["score"] == "0.9"
    linked, _ = write_gallery(tmp_path / "linked", _cells(tmp_path / "linked"), ["model-a"], inline=False)
    assert 'src="a/0.png"' in linked.read_text()


class _StandIn(torch.nn.Module):
    """A fixed random projection of 8x8-pooled colours: a tiny, offline feature network for FID/KID."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1) @ self.weight


@pytest.mark.slow  # importing torchmetrics' image metrics alone takes 10-40 s
def test_fid_kid_tell_real_looking_from_noise():
    from mmdemo.eval.image_quality import fid_kid

    pairs = sample_single_object_prompts(48, seed=1)
    real = [render_scene(scene) for _, scene in pairs[:24]]
    alike = [render_scene(scene) for _, scene in pairs[24:]]  # other Shapes pictures: the same distribution
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(24)]
    good = fid_kid(alike, real, _StandIn(), resamples=50)
    bad = fid_kid(noise, real, _StandIn(), resamples=50)
    assert good["features"] == "_StandIn" and good["n_generated"] == 24 and good["n_real"] == 24
    assert bad["fid"] > 10 * good["fid"] and bad["kid"] > 10 * abs(good["kid"])
    assert good["fid_interval"][1] < bad["fid_interval"][0]  # the intervals tell the two models apart
    assert fid_kid(alike, real, _StandIn(), resamples=50) == good  # seeded: reproducible
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid(alike[:1], real, _StandIn())


@pytest.mark.slow
def test_gallery_of_the_five_demo_generators_in_a_browser(tmp_path, monkeypatch):
    if not shutil.which(CHROMIUM):
        require_or_skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMDEMO_CHROMIUM)")
    from _diffusion_helpers import load_script
    from playwright.sync_api import sync_playwright

    monkeypatch.delenv("MMDEMO_CHECKPOINTS", raising=False)  # the shipped demo weights
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large blue square at the top\na small red circle on the left\n")
    script = load_script("evaluate_generator")
    result = script.main(script.parse_args(["--models", "all", "--prompts", str(prompts), "--n", "2",
                                            "--out", str(tmp_path / "run"), "--resamples", "20"]))  # fmt: skip
    assert set(result["models"]) == set(GENERATOR_IDS)
    assert all(s["n"] == 2 and not s.get("error") for s in result["models"].values()), result
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "run" / "gallery.html").as_uri())
            widths = page.evaluate("Array.from(document.images).map((img) => img.naturalWidth)")
            assert len(widths) == 2 * len(GENERATOR_IDS) and min(widths) > 0, widths  # every picture decodes
            headers = page.locator("thead th").all_inner_texts()
            assert [h.split("\n")[0] for h in headers[1:]] == list(GENERATOR_IDS)
            order = (
                "Array.from(document.querySelectorAll('#grid tbody tr')).map((r) => Number(r.dataset.index))"
            )
            for column in range(len(GENERATOR_IDS)):
                page.locator(f'th button[data-model="{column}"]').click()
                rows = page.evaluate(order)
                scores = [float(s) for s in page.evaluate(
                    f"Array.from(document.querySelectorAll('#grid tbody tr')).map((r) => r.dataset.score{column})")]  # fmt: skip
                assert scores == sorted(scores, reverse=True), (column, scores)
                assert sorted(rows) == [0, 1]
            page.locator('button[data-model="null"]').click()
            assert page.evaluate(order) == [0, 1]
        finally:
            browser.close()
