"""The comparison views in headless Chromium: a shared link restores its settings and runs them, the slider
then shows two finished panels at one size, and "copy link" gives a link carrying the settings back."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from mmdemo.registry import GENERATOR_IDS, REGISTRY

SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "screenshot_compare.png"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(600)
def test_a_deep_link_restores_and_runs_a_comparison_shown_in_the_slider(browser_app_url):
    from playwright.sync_api import expect, sync_playwright

    models = list(GENERATOR_IDS[3:5])  # two of the quicker demo models
    query = {
        "tab": "generate",
        "prompt": "a large blue square at the top",
        "seed": "4242",
        "models": ",".join(models),
        "options": json.dumps({models[0]: {"steps": 6}}, separators=(",", ":")),
        "run": "1",
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(browser_app_url.rstrip("/") + "/?" + urlencode(query), wait_until="load")
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(query["prompt"], timeout=60_000)
            expect(page.get_by_label("Seed", exact=True)).to_have_value("4242")
            for model_id in GENERATOR_IDS:
                box = page.get_by_label(REGISTRY[model_id].display_name, exact=True)
                if model_id in models:
                    expect(box).to_be_checked()
                else:
                    expect(box).not_to_be_checked()
            # run=1 pressed Generate: both linked panels finish with the linked seed; the others were not asked.
            for model_id in models:
                panel = page.locator(".prose.panel-caption").nth(GENERATOR_IDS.index(model_id))
                expect(panel).to_contain_text(re.compile(r"seed 4242"), timeout=240_000)
            expect(page.locator(".prose.panel-caption").nth(0)).to_contain_text("not selected")

            # The slider picked the two finished panels and shows both pictures at one size.
            expect(page.locator("#compare-left input")).to_have_value(REGISTRY[models[0]].display_name)
            expect(page.locator("#compare-right input")).to_have_value(REGISTRY[models[1]].display_name)
            slider_images = page.locator("#compare-slider img")
            expect(slider_images).to_have_count(2, timeout=30_000)
            first, second = (slider_images.nth(i).bounding_box() for i in range(2))
            assert first and second and first["width"] >= 200, (first, second)
            assert (round(first["width"]), round(first["height"])) == (
                round(second["width"]),
                round(second["height"]),
            )

            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):  # the README's picture of the slider
                page.locator("#compare").first.screenshot(path=str(SCREENSHOT))
            # "Use this seed" on a panel, then "copy link": the link carries the settings back.
            page.get_by_label("Seed", exact=True).fill("1")
            page.locator(".use-seed").nth(GENERATOR_IDS.index(models[1])).click()
            expect(page.get_by_label("Seed", exact=True)).to_have_value("4242")
            page.locator("#copy-link").click()
            link = page.locator("#share-link textarea, #share-link input").first
            expect(link).to_have_value(re.compile(r"^http.*\?"), timeout=30_000)
            shared = {k: v[0] for k, v in parse_qs(urlparse(link.input_value()).query).items()}
            assert shared["prompt"] == query["prompt"] and shared["seed"] == "4242"
            assert shared["models"] == query["models"] and '"steps":6' in shared["options"]
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_captions_table_keeps_every_column_in_view_and_small_pictures_are_enlarged(browser_app_url):
    from playwright.sync_api import expect, sync_playwright

    from mmdemo.registry import CAPTIONER_IDS
    from mmdemo.service import load_examples

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(browser_app_url, wait_until="load")
            page.locator(".caption-input input[type=file]").set_input_files(str(load_examples()[0].path))
            picture = page.locator(".caption-input img").first
            expect(picture).to_be_visible(timeout=30_000)
            box = picture.bounding_box()
            assert box and box["width"] >= 200, box  # a 64 px example fills the box
            assert picture.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
            page.get_by_role("button", name="Caption", exact=True).click()
            expect(page.get_by_text("Reference captions")).to_be_visible(timeout=180_000)
            # Captions wrap: the table is no wider than its box, so seconds, weights and BLEU-4 stay in view.
            wrap = page.locator(".table-wrap").first
            for model_id in CAPTIONER_IDS:  # one row per captioner
                expect(wrap).to_contain_text(REGISTRY[model_id].display_name, timeout=30_000)
            scroll_width, client_width = wrap.evaluate("e => [e.scrollWidth, e.clientWidth]")
            assert scroll_width <= client_width + 1, (scroll_width, client_width)
            for header in ("seconds", "weights", "BLEU-4"):
                cell = wrap.get_by_text(header, exact=True).first
                cell_box, wrap_box = cell.bounding_box(), wrap.bounding_box()
                assert (
                    cell_box
                    and wrap_box
                    and cell_box["x"] + cell_box["width"] <= wrap_box["x"] + wrap_box["width"] + 1
                )
            # The records are for API users: collapsed until opened.
            records = page.locator("#caption-records")
            expect(records).to_be_hidden()
            page.get_by_text("Records (API)").first.click()
            expect(records).to_be_visible()
        finally:
            browser.close()
