"""The About tab's live per-model numbers, in headless Chromium: a run made after the page loaded shows up."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

from mmdemo.registry import REGISTRY
from mmdemo.ui.ops import STATS_REFRESH_SECONDS


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_about_tab_shows_runs_made_after_the_page_loaded(browser_app_url):
    from gradio_client import Client
    from playwright.sync_api import expect, sync_playwright

    name = REGISTRY["infinity-2b"].display_name
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(browser_app_url, wait_until="load")
            page.get_by_role("tab", name="About").click()
            expect(page.get_by_text("Live: model runs since the app started")).to_be_visible(timeout=60_000)
            # accessible rows of the live table only (Gradio also keeps hidden ones; other tables name models too)
            rows = page.locator("#live-stats").get_by_role("row").filter(has_text=name)
            expect(rows).to_have_count(0)  # nothing has run yet
            Client(browser_app_url, verbose=False, download_files=False).predict(
                "a red circle", ["infinity-2b"], 3, "fast", "", "{}", api_name="/generate"
            )
            row = rows.first
            refreshed = (3 * STATS_REFRESH_SECONDS + 30) * 1000  # the timer refreshes it
            expect(row).to_be_visible(timeout=refreshed)
            cells = [c.strip() for c in row.get_by_role("gridcell").all_inner_texts()]
            assert cells[1:6] == ["1", "1", "0", "0", "0"], cells  # runs, ok, recovered, errors, unavailable
        finally:
            browser.close()
