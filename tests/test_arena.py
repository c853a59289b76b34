"""The arena's rules on real databases (SQLite always, PostgreSQL when a server can be had).

Models are fast fakes (tests/_arena_fakes.py) so these tests are about storage and rules: the schema and
its migrations, one vote per battle enforced by the database, clear refusals, rate limits, anonymity,
demo/full separation, retention, export. The real app and real demo models: tests/test_arena_app.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import types
from pathlib import Path

import pytest
from _arena_fakes import install_fake_models
from PIL import Image
from sqlalchemy import insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from mmdemo.arena import db
from mmdemo.arena.battles import Arena, ArenaConfig, ArenaError, RateLimited, random_prompt
from mmdemo.arena.export import HubVoteExporter, vote_rows, write_votes
from mmdemo.runtime import ModelManager

DEMO = {
    m: "demo" for m in ("pixel-diffusion", "latent-diffusion", "sdxl-base", "resnet18-xattn", "clipb32-xattn")
}
NAMES = list(DEMO) + ["Our pixel-space diffusion", "Our VQ-VAE latent diffusion"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'arena.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    install_fake_models(monkeypatch)


def make_arena(tmp_path: Path, url: str | None, availability=None, **config) -> Arena:
    manager = ModelManager("demo", device="cpu")  # never asked: the two model calls are faked
    return Arena(ArenaConfig(data_dir=tmp_path, db_url=url, **config), manager, availability or DEMO)


# ------------------------------------------------------------------------------------------------ schema


def test_fresh_database_is_at_head_and_matches_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = db.make_engine(db.database_url(db_url, Path(".")))
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision() == "0002"
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.Base.metadata)
    assert diff == [], diff  # the migrations build exactly what the ORM models describe
    db.upgrade(engine)  # a second start changes nothing
    assert db.current_revision(engine) == "0002"


def _insert_voted_battle(connection, battle_id: str, choice: str) -> None:
    """A battle and its vote written with plain SQL, as any schema version since 0001 stores them."""
    now = db.utcnow()
    battle = dict(task="generate", profile="demo", model_a="pixel-diffusion", model_b="latent-diffusion")
    connection.execute(
        insert(db.Battle.__table__).values(
            id=battle_id,
            input_hash="h",
            settings="{}",
            session_hash="s",
            app_version="t",
            created_at=now,
            **battle,
        )
    )
    connection.execute(
        insert(db.Vote.__table__).values(battle_id=battle_id, choice=choice, session_hash="s", created_at=now)
    )


def test_an_older_database_is_upgraded_in_place_and_keeps_its_votes(db_url):
    engine = db.make_engine(db.database_url(db_url, Path(".")))
    db.upgrade(engine, "0001")
    assert "ix_arena_votes_session_created" not in {
        i["name"] for i in inspect(engine).get_indexes("arena_votes")
    }
    with engine.begin() as connection:  # a vote written by the 0001 schema
        _insert_voted_battle(connection, "old-battle", "B")
    db.upgrade(engine)
    assert db.current_revision(engine) == "0002"
    assert "ix_arena_votes_session_created" in {i["name"] for i in inspect(engine).get_indexes("arena_votes")}
    with engine.connect() as connection:
        assert connection.execute(select(db.Vote.choice)).scalars().all() == ["B"]
    db.downgrade(engine, "0001")  # and back, for a rollback of the app
    assert db.current_revision(engine) == "0001"


def test_the_database_itself_refuses_a_second_vote_a_bad_choice_and_a_forged_battle(db_url):
    engine = db.make_engine(db.database_url(db_url, Path(".")))
    db.upgrade(engine)
    now = db.utcnow()
    with engine.begin() as connection:
        _insert_voted_battle(connection, "b1", "A")
    for values in (
        dict(battle_id="b1", choice="B"),  # second vote on one battle: primary key
        dict(battle_id="nope", choice="A"),  # no such battle: foreign key
    ):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert(db.Vote.__table__).values(session_hash="s", created_at=now, **values))
    with pytest.raises(IntegrityError), engine.begin() as connection:  # check constraint
        connection.execute(update(db.Vote.__table__).values(choice="C"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM arena_votes")).scalar() == 1


def test_default_data_dir_survives_restarts_and_prefers_a_space_persistent_volume(monkeypatch, tmp_path):
    monkeypatch.delenv("MMDEMO_DATA_DIR", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert db.default_data_dir() == Path.home() / ".cache" / "mmdemo"
    monkeypatch.setenv("SPACE_ID", "someone/mmdemo")
    monkeypatch.setattr(db, "SPACE_PERSISTENT_DIR", tmp_path)
    assert db.default_data_dir() == tmp_path / "mmdemo"
    monkeypatch.setenv("MMDEMO_DATA_DIR", str(tmp_path / "mine"))
    assert db.default_data_dir() == tmp_path / "mine"
    assert db.database_url("postgres://u:p@h/d", tmp_path) == "postgresql+psycopg://u:p@h/d"
    assert (
        db.database_url(None, tmp_path).endswith("mine/arena.sqlite3") is False
    )  # an explicit data dir wins
    assert (
        db.database_url(None, tmp_path / "x") == f"sqlite:///{(tmp_path / 'x' / 'arena.sqlite3').resolve()}"
    )


# ------------------------------------------------------------------------------------------------ battles


def test_a_battle_hides_names_until_the_vote_then_reveals_them(db_url, tmp_path):
    arena = make_arena(tmp_path, db_url)
    view = arena.start_generate("a red circle on the left", 7, "session-1")
    assert view.votable and view.reveal is None
    blob = json.dumps([view.battle_id, view.status, view.outputs])
    assert not any(name in blob for name in NAMES), blob
    for path in view.outputs:
        picture = Image.open(path)
        assert picture.info == {} and picture.text == {}  # the fake put its name in the metadata: gone
        assert Path(path).stem not in NAMES and len(Path(path).stem) == 32
    assert arena.battle_reveal(view.battle_id) is None
    reveal = arena.vote(view.battle_id, "A", "session-1")
    assert reveal["choice"] == "A" and {reveal["model_a"], reveal["model_b"]} <= set(DEMO)
    assert reveal["model_a"] != reveal["model_b"]
    assert (
        reveal["a"]["seconds"] is not None
        and reveal["prompt"] == "a red circle on the left"
        and reveal["seed"] == 7
    )
    assert arena.battle_reveal(view.battle_id)["choice"] == "A"
    with arena.sessions() as session:
        battle = session.get(db.Battle, view.battle_id)
        assert battle.output_a_hash and battle.output_b_hash and battle.app_version
        assert "session-1" not in battle.session_hash and len(battle.session_hash) == 32


@pytest.mark.parametrize(
    "battle_id, choice, message",
    [
        ("does-not-exist", "A", "Unknown battle id"),
        ("", "A", "start a battle first"),
        (None, "A", "start a battle first"),
        ("ok", "C", "Unknown choice"),
    ],
)
def test_bad_votes_get_clear_messages(tmp_path, battle_id, choice, message):
    arena = make_arena(tmp_path, None)
    view = arena.start_caption(Image.new("RGB", (40, 40), "blue"), "s")
    with pytest.raises(ArenaError, match=message):
        arena.vote(view.battle_id if battle_id == "ok" else battle_id, choice, "s")
    arena.vote(view.battle_id, "tie", "s")  # the real vote still goes through afterwards


def test_already_voted_and_expired_battles_are_refused(db_url, tmp_path):
    arena = make_arena(tmp_path, db_url, battle_ttl_minutes=5)
    first = arena.start_generate("a blue square", 1, "s")
    arena.vote(first.battle_id, "B", "s")
    with pytest.raises(ArenaError, match="already has a vote"):
        arena.vote(first.battle_id, "A", "another session")
    late = arena.start_generate("a blue square", 2, "s")
    with arena.sessions() as session:
        session.execute(
            update(db.Battle)
            .where(db.Battle.id == late.battle_id)
            .values(created_at=db.utcnow() - dt.timedelta(minutes=6))
        )
        session.commit()
    with pytest.raises(ArenaError, match="expired"):
        arena.vote(late.battle_id, "A", "s")


def test_a_failed_side_is_shown_as_such_and_cannot_be_voted_on(tmp_path, monkeypatch):
    install_fake_models(monkeypatch, failing=("latent-diffusion",))
    arena = make_arena(tmp_path, None, {"pixel-diffusion": "demo", "latent-diffusion": "demo"})
    view = arena.start_generate("a red circle", 3, "s")
    assert not view.votable and "cannot be voted on" in view.status
    failed_side = "a" if view.reveal["model_a"] == "latent-diffusion" else "b"
    assert (
        "exploded" in view.reveal[failed_side]["error"] and view.outputs[" ab".index(failed_side) - 1] is None
    )
    with pytest.raises(ArenaError, match="cannot be voted on"):
        arena.vote(view.battle_id, "A", "s")


def test_simultaneous_votes_on_one_battle_count_once(db_url, tmp_path):
    arena = make_arena(tmp_path, db_url)
    view = arena.start_caption(Image.new("RGB", (40, 40), "red"), "s")
    barrier = threading.Barrier(8)
    results: list[str] = []

    def vote(choice: str) -> None:
        barrier.wait()
        try:
            results.append(arena.vote(view.battle_id, choice, f"voter-{choice}")["choice"])
        except ArenaError as err:
            results.append(str(err))

    threads = [threading.Thread(target=vote, args=(c,)) for c in ["A", "B", "tie", "both bad"] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    accepted = [r for r in results if r in db.CHOICES]
    assert len(results) == 8 and len(accepted) == 1, results
    assert all("already has a vote" in r for r in results if r not in db.CHOICES)
    with arena.sessions() as session:
        assert session.scalars(select(db.Vote.choice)).all() == accepted


def test_rate_limit_is_per_session_with_a_clear_message(tmp_path):
    arena = make_arena(tmp_path, None, battles_per_minute=3, votes_per_minute=2)
    views = [arena.start_caption(Image.new("RGB", (20, 20), "red"), "busy") for _ in range(3)]
    with pytest.raises(RateLimited, match="at most 3 battles a minute"):
        arena.start_generate("a red circle", 1, "busy")
    arena.start_generate("a red circle", 1, "someone else")  # other sessions are not slowed down
    arena.vote(views[0].battle_id, "A", "busy")
    arena.vote(views[1].battle_id, "A", "busy")
    with pytest.raises(RateLimited, match="at most 2 votes a minute"):
        arena.vote(views[2].battle_id, "A", "busy")


def test_default_rate_limit_lets_one_person_play_twenty_battles_a_minute(tmp_path):
    arena = make_arena(tmp_path, None)
    for i in range(20):
        view = arena.start_caption(Image.new("RGB", (20, 20), (i, 0, 0)), "keen")
        arena.vote(view.battle_id, "A", "keen")


def test_demo_and_full_votes_never_share_a_leaderboard(tmp_path):
    mixed = {
        "pixel-diffusion": "full",
        "latent-diffusion": "full",
        "sdxl-base": "demo",
        "infinity-2b": "demo",
    }
    full_arena = make_arena(tmp_path, None, mixed)
    profile, pool = full_arena.pool("generate")
    assert profile == "full" and sorted(pool) == ["latent-diffusion", "pixel-diffusion"]
    demo_arena = make_arena(
        tmp_path, None, {"sdxl-base": "demo", "infinity-2b": "demo", "pixel-diffusion": "full"}
    )
    assert demo_arena.pool("generate") == ("demo", ["sdxl-base", "infinity-2b"])
    for arena in (full_arena, full_arena, demo_arena):  # the same database, both profiles
        view = arena.start_generate("a red circle", 1, "s")
        arena.vote(view.battle_id, "A", "s")
    full_board = full_arena.leaderboard("generate")
    demo_board = demo_arena.leaderboard("generate")
    assert full_board.votes == 2 and {r["model"] for r in full_board.rows} == {
        "pixel-diffusion",
        "latent-diffusion",
    }
    assert demo_board.votes == 1 and {r["model"] for r in demo_board.rows} == {"sdxl-base", "infinity-2b"}


def test_leaderboard_and_salt_survive_a_restart_on_the_same_database(db_url, tmp_path):
    arena = make_arena(tmp_path, db_url)
    for i in range(6):
        view = arena.start_caption(Image.new("RGB", (20, 20), (0, i, 0)), f"s{i}")
        arena.vote(view.battle_id, ["A", "B", "tie"][i % 3], f"s{i}")
    before = arena.leaderboard("caption")
    again = make_arena(tmp_path, db_url)  # a new process on the same database
    assert again.anonymous("s1") == arena.anonymous("s1")  # same salt: sessions stay countable
    after = again.leaderboard("caption")
    assert after.votes == before.votes == 6 and after.rows == before.rows
    assert arena.leaderboard("caption") is before  # cached while no vote is added


def test_the_leaderboard_is_refitted_when_votes_arrive(tmp_path):
    arena = make_arena(tmp_path, None)
    view = arena.start_caption(Image.new("RGB", (20, 20), "red"), "s")
    arena.vote(view.battle_id, "A", "s")
    first = arena.leaderboard("caption")
    view = arena.start_caption(Image.new("RGB", (20, 20), "red"), "s")
    arena.vote(view.battle_id, "A", "s")
    assert arena.leaderboard("caption").votes == first.votes + 1


def test_salted_hash_never_stores_the_session_id_and_differs_between_databases(tmp_path):
    one = make_arena(tmp_path / "one", None)
    two = make_arena(tmp_path / "two", None)
    assert one.anonymous("abc") != two.anonymous("abc") and "abc" not in one.anonymous("abc")


def test_random_prompt_comes_from_the_profile_prompt_set():
    import random

    from mmdemo.data.shapes import parse_prompt

    prompt = random_prompt("demo", random.Random(3))
    assert parse_prompt(prompt)["shape"] is not None and parse_prompt(prompt)["color"] is not None


# ------------------------------------------------------------------------------------------------ pictures, export


def test_retention_deletes_old_pictures_first_and_caps_the_folder(tmp_path):
    arena = make_arena(tmp_path, None, keep_images_days=1, max_image_bytes=10**9)
    paths = [Path(p) for _ in range(3) for p in arena.start_generate("a red circle", 1, "s").outputs]
    old = paths[0]
    os.utime(old, (0, 0))  # 1970: far past the retention time
    assert arena.prune_images() == 1 and not old.exists() and all(p.exists() for p in paths[1:])
    arena.config.max_image_bytes = sum(p.stat().st_size for p in paths[3:])  # room for the newest 3 only
    for i, path in enumerate(paths[1:]):
        os.utime(path, (1e9 + i, 2e9 + i))  # oldest first, all within the retention time
    assert arena.prune_images() == 2
    assert [p.exists() for p in paths[1:]] == [False, False, True, True, True]


def test_votes_download_as_csv_and_jsonl_without_session_hashes(tmp_path):
    import csv

    arena = make_arena(tmp_path, None)
    view = arena.start_generate("a green square", 5, "s")
    arena.vote(view.battle_id, "both bad", "s")
    arena.start_generate("never voted", 5, "s")
    rows = vote_rows(arena.sessions)
    assert len(rows) == 1 and rows[0]["choice"] == "both bad" and "session_hash" not in rows[0]
    with write_votes(arena.sessions, "csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["battle_id"] == view.battle_id and table[0]["prompt"] == "a green square"
    lines = write_votes(arena.sessions, "jsonl").read_text().splitlines()
    assert json.loads(lines[0])["seed"] == 5
    with pytest.raises(ValueError, match="csv"):
        write_votes(arena.sessions, "xlsx")


def test_hub_export_commits_new_votes_with_the_hub_stubbed(tmp_path):
    from huggingface_hub import HfApi

    commits = []

    class StubHub(HfApi):  # the two Hub calls CommitScheduler makes; nothing leaves the machine
        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, **kwargs):
            commits.append(
                (
                    repo_id,
                    kwargs.get("repo_type"),
                    [(op.path_in_repo, op.path_or_fileobj.read()) for op in operations],
                )
            )

    exporter = HubVoteExporter("someone/arena-votes", tmp_path / "export", every_minutes=60, hf_api=StubHub())
    arena = make_arena(tmp_path, None)
    arena.exporter = exporter
    try:
        ids = []
        for _ in range(2):
            view = arena.start_caption(Image.new("RGB", (20, 20), "red"), "s")
            arena.vote(view.battle_id, "B", "s")
            ids.append(view.battle_id)
        exporter.push_now()
    finally:
        exporter.stop()
    assert len(commits) == 1
    repo_id, repo_type, files = commits[0]
    assert repo_id == "someone/arena-votes" and repo_type == "dataset"
    ((path, data),) = files
    assert path.startswith("votes/votes-") and path.endswith(".jsonl")
    assert [json.loads(line)["battle_id"] for line in data.decode().splitlines()] == ids


def test_full_weights_draw_from_the_report_flickr8k_test_prompts(flickr8k_shared, monkeypatch):
    import random

    from mmdemo.arena.battles import FLICKR8K_ENV, flickr8k_test_prompts
    from mmdemo.data.flickr8k import load_flickr8k, text_to_image_split

    _, prompts = text_to_image_split(load_flickr8k(flickr8k_shared))
    prompts = [p.strip() for p in prompts]
    monkeypatch.setenv(FLICKR8K_ENV, str(flickr8k_shared))
    assert flickr8k_test_prompts() == prompts and len(prompts) == 1091
    assert random_prompt("full", random.Random(1)) in prompts
    assert random_prompt("demo", random.Random(1)) not in prompts  # demo weights draw Shapes prompts
    monkeypatch.delenv(FLICKR8K_ENV)
    assert random_prompt("full", random.Random(1)) not in prompts  # nothing named: Shapes, not a stale copy
