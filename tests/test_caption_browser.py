"""Candidate captions and "where it looked" in headless Chromium: caption an example with three candidates,
read the scored candidates, click a word and see its heatmap appear; clicking another word changes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from mmdemo.registry import CAPTIONER_IDS, REGISTRY
from mmdemo.service import load_examples

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_candidates_then_click_a_word_and_see_where_the_captioner_looked(browser_app_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(browser_app_url, wait_until="load")
            page.locator(".caption-input input[type=file]").set_input_files(str(load_examples()[0].path))
            expect(page.locator(".caption-input img").first).to_be_visible(timeout=30_000)
            # The default view is one caption per model: no candidates table until more are asked for.
            table = page.locator("#caption-candidates-table")
            expect(table).to_be_hidden()
            page.locator("#caption-candidates input").fill("3")
            page.get_by_role("button", name="Caption", exact=True).click()
            expect(table).to_be_visible(timeout=180_000)
            last = REGISTRY[CAPTIONER_IDS[-1]].display_name
            expect(table).to_contain_text(last, timeout=30_000)
            shown = table.inner_text()  # what a reader sees: three scored rows per captioner
            for model_id in CAPTIONER_IDS:
                assert shown.count(REGISTRY[model_id].display_name) == 3, shown

            # The words of the first captioner's caption, ready to click; no map before a click.
            words = page.locator("#attention-words label")
            expect(words.first).to_be_visible(timeout=60_000)
            heatmap = page.locator("#attention-map img")
            expect(heatmap).to_have_count(0)
            caption = page.locator("#attention-caption textarea").input_value()
            assert words.count() == len(caption.split()), (caption, words.count())
            words.nth(2).click()
            expect(heatmap).to_have_count(1, timeout=60_000)
            expect(page.locator("#attention-note")).to_contain_text("not an explanation")
            # The picture is laid out once it has loaded: wait for that, then measure it.
            page.wait_for_function(
                "() => { const i = document.querySelector('#attention-map img');"
                " return i && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0; }",
                timeout=30_000,
            )
            box = heatmap.bounding_box()
            assert box and box["width"] >= 200 and abs(box["width"] - box["height"]) <= 2, box
            first_src = heatmap.get_attribute("src")
            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):  # the README's pictures of these views
                table.screenshot(path=str(ASSETS / "screenshot_candidates.png"))
                page.locator("#attention").screenshot(path=str(ASSETS / "screenshot_attention.png"))
            words.nth(len(caption.split()) - 1).click()  # another word: another map
            expect(heatmap).not_to_have_attribute("src", first_src, timeout=60_000)

            # A candidate row explains that candidate: its caption and its words come to the panel.
            cell = table.get_by_role("row").nth(2).get_by_role("gridcell").nth(2)  # row 0: the headers
            candidate = " ".join(cell.inner_text().split())
            cell.click()
            expect(page.locator("#attention-caption textarea")).to_have_value(candidate, timeout=60_000)
            expect(words).to_have_count(len(candidate.split()), timeout=60_000)
        finally:
            browser.close()
