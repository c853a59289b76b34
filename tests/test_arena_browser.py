"""One arena battle played in headless Chromium: start it, see two anonymous pictures, vote, see the names.

Same browser set-up as tests/test_browser.py (Debian's chromium through Playwright; skipped with the reason
outside CI when absent, a failure in CI).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, require_or_skip

from mmdemo.registry import REGISTRY

GENERATORS = ("pixel-diffusion", "latent-diffusion")
SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "screenshot_leaderboard.png"


@pytest.fixture(scope="module")
def arena_url(tmp_path_factory, app_server):
    if not shutil.which(CHROMIUM):
        require_or_skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMDEMO_CHROMIUM)")
    import app
    from mmdemo.arena.battles import ArenaConfig

    config = ArenaConfig(data_dir=tmp_path_factory.mktemp("arena_browser"), models=GENERATORS)
    with app_server(app.create_demo("demo", arena=config), css=app.APP_CSS) as url:
        yield url


@pytest.mark.slow
@pytest.mark.browser
def test_play_one_arena_battle_in_a_real_browser(arena_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    names = [REGISTRY[m].display_name for m in GENERATORS]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(arena_url, wait_until="load", timeout=180_000)  # a busy machine serves slowly
            page.get_by_role("tab", name="Arena", exact=True).click(timeout=120_000)
            arena = page.locator("#arena")  # the Arena tab's panel
            vote_a = arena.get_by_role("button", name="👈 A is better")
            expect(vote_a).to_be_disabled()  # nothing to vote on yet
            arena.get_by_role("button", name="⚔️ New battle").first.click()
            expect(vote_a).to_be_enabled(timeout=240_000)
            expect(arena.locator(".generated img")).to_have_count(2)
            before = arena.inner_html()
            assert not any(n in before for n in [*names, *GENERATORS]), (
                "a model name on the page before the vote"
            )
            vote_a.click()
            expect(arena).to_contain_text("Your vote: A is better", timeout=60_000)
            revealed = arena.inner_text()
            assert re.search(r"Model A: .+ · [\d.]+ s", revealed), revealed
            assert all(n in revealed for n in names)  # both names, one per side
            expect(vote_a).to_be_disabled()  # one vote per battle, in the page too

            page.get_by_role("tab", name="Leaderboard", exact=True).click()
            board = page.locator("#leaderboard")
            expect(board).to_contain_text("1 votes", timeout=60_000)
            for model_id in GENERATORS:  # both rated, by id
                expect(board).to_contain_text(model_id)
            shot = tmp_path / "leaderboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MMDEMO_UPDATE_SCREENSHOT"):
                shutil.copy(shot, SCREENSHOT)
        finally:
            browser.close()
