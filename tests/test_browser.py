"""The real page in headless Chromium: type a prompt, press Generate, see the panels fill in.

Uses Debian's chromium (installed by .ci/run) through Playwright. Outside CI, a machine without
/usr/bin/chromium skips with that reason; in CI (``CI`` set) a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from mmdemo.registry import GENERATOR_IDS, REGISTRY

CHROMIUM = os.environ.get("MMDEMO_CHROMIUM", "/usr/bin/chromium")
# This machine's closed network refuses Chromium's background connections: switch them off.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "screenshot_generate.png"


@pytest.fixture(scope="module")
def app_url():
    if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMDEMO_CHROMIUM)")
    import app

    demo = app.create_demo("demo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=app.APP_CSS
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.mark.slow
def test_generate_in_a_real_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    implemented = [m for m in GENERATOR_IDS if REGISTRY[m].implemented]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(app_url, wait_until="networkidle")
            page.get_by_role("tab", name="Text → Image").click()
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("a large blue square at the top")
            for model_id in GENERATOR_IDS:  # all five: unfinished models must say so in their panel
                page.get_by_label(REGISTRY[model_id].display_name, exact=True).check()
            page.get_by_role("button", name="Generate", exact=True).click()
            # Every ticked panel either shows an image or says why not; wait for the last one.
            last = implemented[-1] if implemented else GENERATOR_IDS[-1]
            panel_text = page.locator(".panel-caption").nth(GENERATOR_IDS.index(last))
            # A finished panel names its seed (an image) or says what went wrong; empty, "waiting" and
            # "running" are the states before that.
            expect(panel_text).to_contain_text(re.compile(r"seed \d+|not implemented|⚠️"), timeout=240_000)
            images = page.locator(".generated img")
            expect(images).to_have_count(len(implemented), timeout=60_000)
            for model_id in GENERATOR_IDS:
                text = page.locator(".panel-caption").nth(GENERATOR_IDS.index(model_id)).inner_text()
                if model_id in implemented:
                    assert "seed" in text and "demo weights" in text, text
                else:
                    assert "not implemented yet" in text, text
            for index in range(len(implemented)):  # 32 px demo pictures fill their 256 px panel
                box = images.nth(index).bounding_box()
                assert box is not None and box["height"] >= 200, box
            shot = tmp_path / "generate.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):
                shutil.copy(shot, SCREENSHOT)
        finally:
            browser.close()
