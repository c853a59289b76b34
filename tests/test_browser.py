"""The real page in headless Chromium: type a prompt, press Generate, see the panels fill in.

Uses Debian's chromium (installed by .ci/run) through Playwright. Outside CI, a machine without
/usr/bin/chromium skips with that reason; in CI (``CI`` set) a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from mmdemo.registry import GENERATOR_IDS, REGISTRY

SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "screenshot_generate.png"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(600)  # the page waits up to 240 s for five demo models on two busy cores
def test_generate_in_a_real_browser(browser_app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            # "networkidle" never comes: the About tab's live numbers poll the server. Locators wait by themselves.
            page.goto(browser_app_url, wait_until="load")
            page.get_by_role("tab", name="Text → Image").click()
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("a large blue square at the top")
            for model_id in GENERATOR_IDS:
                page.get_by_label(REGISTRY[model_id].display_name, exact=True).check()
            page.get_by_role("button", name="Generate", exact=True).click()
            # Panels fill in model by model; wait for the last one. A finished panel names its seed (an image)
            # or says what went wrong; empty, "waiting" and "running" are the states before that.
            panel_text = page.locator(".panel-caption").nth(len(GENERATOR_IDS) - 1)
            expect(panel_text).to_contain_text(re.compile(r"seed \d+|⚠️"), timeout=240_000)
            images = page.locator(".generated img")
            expect(images).to_have_count(len(GENERATOR_IDS), timeout=60_000)
            for model_id in GENERATOR_IDS:
                text = page.locator(".panel-caption").nth(GENERATOR_IDS.index(model_id)).inner_text()
                assert "seed" in text and "demo weights" in text, text
            for index in range(len(GENERATOR_IDS)):  # 32 px demo pictures fill their 256 px panel
                box = images.nth(index).bounding_box()
                assert box is not None and box["height"] >= 200, box
            shot = tmp_path / "generate.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):
                shutil.copy(shot, SCREENSHOT)
        finally:
            browser.close()
