"""The arena's SQLite store: WAL, one-time tokens, and no acknowledged vote lost when the server is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from illustrious.arena.store import AlreadyVoted, ArenaStore, UnknownMatch
from illustrious.errors import ConfigError
from tests.unit.test_arena_catalog import make_images_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_votes_are_stored_once_per_token_in_order(tmp_path):
    clock = iter([10.0, 11.0, 12.0, 13.0, 14.0])
    store = ArenaStore(tmp_path / "arena.sqlite", clock=lambda: next(clock))
    assert store.journal_mode() == "wal"
    t1 = store.open_match("fixed", 0, 7, ["a", "b"], ["a/0_7.png", "b/0_7.png"])
    t2 = store.open_match("ffa", 1, 0, ["a", "b", "c", "d"], ["a/1_0.png", "b/1_0.png", "c/1_0.png", "d/1_0.png"])
    assert t1 != t2 and len(t1) >= 20
    assert store.match(t1).entrants == ("a", "b") and not store.match(t1).voted
    v2 = store.record_vote(t2, [1, 0, 1, 1], "best")
    v1 = store.record_vote(t1, [0, 0])
    with pytest.raises(AlreadyVoted):
        store.record_vote(t1, [0, 1])
    with pytest.raises(UnknownMatch):
        store.record_vote("no-such-token", [0, 1])
    with pytest.raises(ValueError, match="ranks"):
        store.record_vote(store.open_match("free", 0, 0, ["a", "b"], ["x", "y"]), [0, 1, 2])
    store.close()
    reopened = ArenaStore(tmp_path / "arena.sqlite")
    assert [(v.id, v.token, v.ranks, v.outcome, v.voted_at) for v in reopened.votes()] == [
        (v2.id, t2, (1, 0, 1, 1), "best", 12.0), (v1.id, t1, (0, 0), "ranking", 13.0)]
    assert reopened.match(t1).voted
    assert reopened.served_count() == 3


def test_a_file_that_is_not_an_arena_database_is_a_config_error(tmp_path):
    (tmp_path / "x.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="x.sqlite"):
        ArenaStore(tmp_path / "x.sqlite")
    with pytest.raises(ConfigError, match="does not exist"):
        ArenaStore(tmp_path / "missing" / "arena.sqlite")


def test_a_process_killed_inside_a_vote_transaction_leaves_only_the_committed_votes(tmp_path):
    """SIGKILL between a vote's INSERT and its COMMIT: the committed votes are all there, the half vote is not,
    and the file is intact."""
    db = tmp_path / "arena.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        from illustrious.arena.store import ArenaStore
        store = ArenaStore({str(db)!r})
        for i in range(5):
            store.record_vote(store.open_match("fixed", 0, i, ["a", "b"], ["a", "b"]), [0, 1])
        token = store.open_match("fixed", 0, 99, ["a", "b"], ["a", "b"])
        store._db.execute("BEGIN IMMEDIATE")
        store._db.execute("UPDATE matches SET voted = 1 WHERE token = ?", (token,))
        store._db.execute("INSERT INTO votes (token, kind, prompt_index, entrants, ranks, outcome, voted_at) "
                          "VALUES (?, 'fixed', 0, '[]', '[0, 1]', 'ranking', 0)", (token,))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = ArenaStore(db)
    assert len(store.votes()) == 5
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM matches WHERE voted = 1").fetchone()[0] == 5


def test_the_served_arena_killed_with_sigkill_keeps_every_acknowledged_vote(tmp_path):
    """The real command serves matches; votes are cast over HTTP; the server is SIGKILLed; every vote it answered
    200 to is in the file, and `action=export` recomputes the ratings from it."""
    images = make_images_folder(tmp_path / "images")
    db = tmp_path / "arena.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "illustrious.arena", f"images={images}", f"db={db}", "port=0",
                               "seed=0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if line.startswith("ARENA_URL "):
                url = line.split()[1]
                break
        else:
            pytest.fail(f"the arena did not start (exit {server.wait()})")
        acknowledged = []
        for kind, answer in [("fixed", {"winner": "a"}), ("free", {"winner": "b"}), ("fixed", {"winner": "draw"}),
                             ("ffa", {"order": [3, 1, 0, 2]}), ("ffa", {"best": 2})]:
            page = urllib.request.urlopen(f"{url}match/{kind}", timeout=30).read().decode()
            token = re.search(r'data-token="([^"]+)"', page)[1]
            request = urllib.request.Request(f"{url}api/vote", data=json.dumps({"token": token, **answer}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            assert json.loads(urllib.request.urlopen(request, timeout=30).read())["recorded"]
            acknowledged.append(token)
        server.send_signal(signal.SIGKILL)
        assert server.wait(timeout=30) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
    votes = ArenaStore(db).votes()
    assert [v.token for v in votes] == acknowledged
    assert [v.ranks for v in votes][3] == (2, 1, 3, 0)  # order [3, 1, 0, 2]: slot 3 first, slot 2 last

    done = subprocess.run([sys.executable, "-m", "illustrious.arena", f"images={images}", f"db={db}",
                           "action=export", f"out_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    from illustrious.arena.export import ratings_csv
    from illustrious.arena.ratings import compute_ratings

    assert (tmp_path / "out" / "arena_ratings.csv").read_text() == ratings_csv(
        compute_ratings(votes, ["ckpt_a", "ckpt_b", "ckpt_c", "ckpt_d"]))
    assert (tmp_path / "out" / "arena_ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "arena_ratings_ffa.csv").read_text() == ratings_csv(
        compute_ratings([v for v in votes if v.kind == "ffa"], ["ckpt_a", "ckpt_b", "ckpt_c", "ckpt_d"]))
    assert {p.name for p in (tmp_path / "out").glob("*.csv")} == {
        "arena_ratings.csv", "arena_ratings_fixed.csv", "arena_ratings_free.csv", "arena_ratings_ffa.csv"}
