"""The arena through gradio_client on the real app with real demo models (loopback only).

In-process app: a battle and its vote, nothing that names a model before the vote, double / forged /
malformed votes refused, 50 simultaneous voters on 50 battles each counted once. A separate process
(``python app.py``): the leaderboard is unchanged after a restart on the same database, and a SIGKILL
in the middle of a vote flood loses no acknowledged vote and leaves none half-written.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from mmdemo.registry import REGISTRY

REPO = Path(__file__).resolve().parents[1]
GENERATORS = ("pixel-diffusion", "latent-diffusion")  # the two fastest demo generators
CAPTIONERS = ("resnet18-xattn", "clipb32-xattn")  # the two fastest demo captioners
EXAMPLE = REPO / "assets" / "examples" / "Images" / "shapes_000000.png"
pytestmark = pytest.mark.app
ALL_NAMES = [m for m in REGISTRY] + [spec.display_name for spec in REGISTRY.values()]


@pytest.fixture(scope="module")
def arena_app(tmp_path_factory, app_server):
    import app
    from mmdemo.arena.battles import ArenaConfig

    data_dir = tmp_path_factory.mktemp("arena_app")
    demo = app.create_demo("demo", arena=ArenaConfig(data_dir=data_dir, models=GENERATORS + CAPTIONERS))
    with app_server(demo) as url:
        yield url, data_dir


def _client(url: str) -> Client:
    # Each client is its own session. httpx's 5 s default would time out a join behind 50 others on a busy CI box.
    return Client(url, verbose=False, httpx_kwargs={"timeout": 120})


def _vote_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "arena.sqlite3") as connection:
        return connection.execute("SELECT count(*) FROM arena_votes").fetchone()[0]


def test_arena_api_names_are_stable(arena_app):
    url, _ = arena_app
    endpoints = _client(url).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/arena_generate", "/arena_caption", "/vote", "/leaderboard", "/caption", "/generate"} <= set(
        endpoints
    )
    assert [p["parameter_name"] for p in endpoints["/vote"]["parameters"]] == ["battle_id", "choice"]


def test_a_generate_battle_names_nobody_until_the_vote(arena_app):
    url, _ = arena_app
    client = _client(url)
    job = client.submit("a small red circle on the left", 11, api_name="/arena_generate")
    image_a, image_b, battle_id = job.result(timeout=300)
    raw = repr(job.outputs()) + repr(job.status())
    for path in (image_a, image_b):
        data = Path(path).read_bytes()
        picture = Image.open(path)
        assert picture.format == "PNG" and picture.info == {} and picture.size[0] >= 8
        assert not any(name.encode() in data for name in ALL_NAMES), "a model name inside the PNG"
        raw += path
    assert not any(name in raw for name in ALL_NAMES), raw  # not in file names, ids or anything returned
    reveal = client.predict(battle_id, "B", api_name="/vote")
    assert reveal["choice"] == "B" and reveal["battle_id"] == battle_id
    assert {reveal["model_a"], reveal["model_b"]} == set(GENERATORS)  # two different models
    assert reveal["a"]["seconds"] > 0 and reveal["seed"] == 11 and reveal["profile"] == "demo"


def test_double_forged_and_malformed_votes_are_refused(arena_app):
    url, data_dir = arena_app
    client = _client(url)
    caption_a, caption_b, battle_id = client.predict(handle_file(str(EXAMPLE)), api_name="/arena_caption")
    assert caption_a.strip() and caption_b.strip()
    before = _vote_count(data_dir)
    assert client.predict(battle_id, "tie", api_name="/vote")["choice"] == "tie"
    with pytest.raises(Exception, match="already has a vote"):
        client.predict(battle_id, "A", api_name="/vote")
    with pytest.raises(Exception, match="already has a vote"):
        _client(url).predict(battle_id, "B", api_name="/vote")  # another session cannot vote again either
    with pytest.raises(Exception, match="Unknown battle id"):
        client.predict(battle_id[:-2] + "xx", "A", api_name="/vote")
    with pytest.raises(Exception, match="Unknown choice"):
        client.predict(battle_id, "C", api_name="/vote")
    with pytest.raises(Exception, match="choose 'generate' or 'caption'"):
        client.predict("chess", api_name="/leaderboard")
    assert _vote_count(data_dir) == before + 1


@pytest.mark.slow
def test_fifty_simultaneous_voters_on_fifty_battles_each_count_once(arena_app):
    url, data_dir = arena_app
    voters = 50
    with ThreadPoolExecutor(8) as pool:  # ten sessions, five battles each (a Client costs a config fetch)
        clients = list(pool.map(lambda _: _client(url), range(10)))
    battles = [
        clients[i % 10].predict(handle_file(str(EXAMPLE)), api_name="/arena_caption")[2]
        for i in range(voters)
    ]
    assert len(set(battles)) == voters
    before_votes = _vote_count(data_dir)
    before_board = {r["model"]: r["battles"] for r in clients[0].predict("caption", api_name="/leaderboard")}
    barrier = threading.Barrier(voters)
    choices = ["A", "B", "tie", "both bad"]

    def vote(i: int) -> dict:
        barrier.wait(timeout=60)
        return clients[i % 10].predict(battles[i], choices[i % 4], api_name="/vote")

    with ThreadPoolExecutor(voters) as pool:
        reveals = list(pool.map(vote, range(voters)))
    assert [r["battle_id"] for r in reveals] == battles
    assert [r["choice"] for r in reveals] == [choices[i % 4] for i in range(voters)]
    assert _vote_count(data_dir) == before_votes + voters
    after_board = {r["model"]: r["battles"] for r in clients[0].predict("caption", api_name="/leaderboard")}
    assert sum(after_board.values()) - sum(before_board.values()) == 2 * voters  # each vote counted once


# ------------------------------------------------------------------------------------------------ restarts


class AppProcess:
    """``python app.py --profile demo`` on loopback with a given data folder; killed on exit.

    No port is chosen for it: the app binds the first free one itself and prints its URL, read back here from
    the process's own lines of the log."""

    def __init__(self, data_dir: Path, log: Path):
        env = dict(os.environ, MMDEMO_ARENA_MODELS=",".join(CAPTIONERS), MMDEMO_ARENA_BATTLES_PER_MINUTE="1000",
                   MMDEMO_ARENA_VOTES_PER_MINUTE="1000", PYTHONUNBUFFERED="1")  # fmt: skip
        env.pop("GRADIO_SERVER_PORT", None)
        start = log.stat().st_size if log.exists() else 0
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--profile", "demo", "--host", "127.0.0.1", "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}; see {log}")
            with log.open("rb") as lines:
                lines.seek(start)
                served = re.search(rb"Running on local URL:\s+(http://\S+)", lines.read())
            if served:
                self.url = served.group(1).decode().rstrip("/") + "/"
                try:
                    self.client = _client(self.url)
                    break
                except Exception:  # noqa: BLE001 - printed its URL, not answering yet
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"app did not answer within 240 s; see {log}")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.log.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # three app starts (~15 s each on an idle machine) and 20 battles
def test_votes_survive_a_restart_and_a_sigkill_during_a_vote_flood(tmp_path):
    data_dir = tmp_path / "data"
    log = tmp_path / "app.log"
    first = AppProcess(data_dir, log)
    try:
        for i in range(4):
            battle = first.client.predict(handle_file(str(EXAMPLE)), api_name="/arena_caption")[2]
            first.client.predict(battle, ["A", "B", "tie"][i % 3], api_name="/vote")
        board = first.client.predict("caption", api_name="/leaderboard")
        # Battles for the flood (this app's rate limits are raised for the test).
        flood = [
            first.client.predict(handle_file(str(EXAMPLE)), api_name="/arena_caption")[2] for _ in range(16)
        ]
    finally:
        first.stop()

    second = AppProcess(data_dir, log)  # a plain restart: same leaderboard
    acknowledged: dict[str, str] = {}
    try:
        assert second.client.predict("caption", api_name="/leaderboard") == board
        lock = threading.Lock()

        def vote(index: int) -> None:
            battle = flood[index // 2]  # two voters per battle: at most one may win
            choice = ["A", "B"][index % 2]
            try:
                reveal = _client(second.url).predict(battle, choice, api_name="/vote")
            except Exception:  # noqa: BLE001 - refused (already voted) or cut off by the kill
                return
            with lock:
                assert battle not in acknowledged, "two acknowledged votes for one battle"
                acknowledged[battle] = reveal["choice"]

        threads = [threading.Thread(target=vote, args=(i,)) for i in range(2 * len(flood))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        second.stop(signal.SIGKILL)  # mid-flood: no shutdown code runs
        for thread in threads:
            thread.join(timeout=60)
    finally:
        second.stop(signal.SIGKILL)
    assert len(acknowledged) >= 5

    third = AppProcess(data_dir, log)
    try:
        with sqlite3.connect(data_dir / "arena.sqlite3") as connection:
            stored = dict(connection.execute("SELECT battle_id, choice FROM arena_votes").fetchall())
            broken = connection.execute(
                "SELECT count(*) FROM arena_votes v LEFT JOIN arena_battles b ON b.id = v.battle_id "
                "WHERE b.id IS NULL OR v.created_at IS NULL OR v.choice NOT IN ('A', 'B', 'tie', 'both bad')"
            ).fetchone()[0]
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert broken == 0
        for battle, choice in acknowledged.items():  # no acknowledged vote lost, none changed
            assert stored.get(battle) == choice, (battle, choice, stored.get(battle))
        rows = third.client.predict("caption", api_name="/leaderboard")
        assert sum(r["battles"] for r in rows) == 2 * len(stored)  # 4 quiet votes + the flood's survivors
        # A battle whose vote never landed can still be voted on, exactly once.
        open_battles = [b for b in flood if b not in stored]
        if open_battles:
            assert third.client.predict(open_battles[0], "tie", api_name="/vote")["choice"] == "tie"
    finally:
        third.stop()


@pytest.mark.slow
def test_the_app_on_postgresql_stores_one_vote_per_battle(postgres_url, tmp_path, app_server):
    import app
    from mmdemo.arena import db
    from mmdemo.arena.battles import ArenaConfig

    config = ArenaConfig(data_dir=tmp_path, db_url=postgres_url, models=CAPTIONERS)
    with app_server(app.create_demo("demo", arena=config)) as url:
        client = _client(url)
        battle = client.predict(handle_file(str(EXAMPLE)), api_name="/arena_caption")[2]
        with ThreadPoolExecutor(4) as pool:  # four sessions race for one battle
            outcomes = list(
                pool.map(lambda c: _try_vote(_client(client.src), battle, c), ["A", "B", "tie", "A"])
            )
        assert sum(o in db.CHOICES for o in outcomes) == 1, outcomes
        rows = client.predict("caption", api_name="/leaderboard")
        assert sum(r["battles"] for r in rows) == 2
    assert not (tmp_path / "arena.sqlite3").exists()  # the votes went to PostgreSQL


def _try_vote(client: Client, battle: str, choice: str) -> str:
    try:
        return client.predict(battle, choice, api_name="/vote")["choice"]
    except Exception as err:  # noqa: BLE001 - the refusal's message is the outcome
        return str(err)
