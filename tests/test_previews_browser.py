"""Live previews in headless Chromium: press Generate and watch the panels' pictures form, each working panel
with its own step count, before the final pictures arrive."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from mmdemo.registry import GENERATOR_IDS, REGISTRY

SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "screenshot_previews.png"
# Every picture each panel shows, in order (a picture is a file URL named by its content's hash), recorded by
# the page itself as the panels change, so that no picture is missed between two looks from the test.
WATCH_PANELS = """() => {
    window.panelPictures = [];
    document.querySelectorAll(".generated").forEach((panel, index) => {
        const seen = [];
        window.panelPictures.push(seen);
        const record = () => {
            const img = panel.querySelector("img");
            if (img && img.src && seen[seen.length - 1] !== img.src) { seen.push(img.src); }
        };
        new MutationObserver(record).observe(
            panel, {subtree: true, childList: true, attributes: true, attributeFilter: ["src"]}
        );
    });
}"""
# While a model samples, its own caption counts steps; the others wait or show their result.
WATCH_CAPTIONS = """() => {
    window.workingCaptions = [];
    const captions = document.querySelectorAll(".prose.panel-caption");
    const record = () => {
        const texts = Array.from(captions, (c) => c.innerText);
        if (texts.some((t) => /step \\d+ of \\d+/.test(t))) { window.workingCaptions.push(texts); }
    };
    captions.forEach((c) => new MutationObserver(record).observe(
        c, {subtree: true, childList: true, characterData: true}
    ));
}"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(600)
def test_pressing_generate_shows_each_picture_forming_before_the_final_one(browser_app_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(browser_app_url, wait_until="load")
            page.get_by_role("tab", name="Text → Image").click()
            expect(page.locator("#live-previews input")).to_be_checked(timeout=60_000)  # ticked by the page
            page.get_by_label("Prompt", exact=True).fill("a large blue square at the top")
            for model_id in GENERATOR_IDS:
                page.get_by_label(REGISTRY[model_id].display_name, exact=True).check()
            page.evaluate(WATCH_PANELS)
            page.evaluate(WATCH_CAPTIONS)
            page.get_by_role("button", name="Generate", exact=True).click()
            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):  # the README's picture: a panel mid-way
                forming = page.locator(
                    ".prose.panel-caption", has_text=re.compile(r"step \d+ of \d+ · preview")
                )
                forming.first.wait_for(timeout=240_000)
                page.locator(".generated").first.locator("xpath=../..").screenshot(path=str(SCREENSHOT))
            last = page.locator(".prose.panel-caption").nth(len(GENERATOR_IDS) - 1)
            expect(last).to_contain_text(re.compile(r"seed \d+|⚠️"), timeout=240_000)
            for index in range(len(GENERATOR_IDS)):
                expect(page.locator(".prose.panel-caption").nth(index)).to_contain_text("demo weights")
            pictures = page.evaluate("() => window.panelPictures")
            finals = page.evaluate(
                "() => Array.from(document.querySelectorAll('.generated'), (p) => p.querySelector('img').src)"
            )
            for model_id in ("pixel-diffusion", "latent-diffusion", "sdxl-base"):  # a second or more each
                shown = pictures[GENERATOR_IDS.index(model_id)]
                assert shown[-1] == finals[GENERATOR_IDS.index(model_id)], (model_id, shown)
                intermediate = set(shown[:-1])
                assert len(intermediate) >= 2, (
                    f"{model_id}: {len(intermediate)} pictures before the final one"
                )
            # progress was on the working panel only: whenever a caption counted steps, only that one did
            working = page.evaluate("() => window.workingCaptions")
            assert working, "no panel ever showed its step count"
            for texts in working:
                assert sum(bool(re.search(r"step \d+ of \d+", t)) for t in texts) == 1, texts
        finally:
            browser.close()
