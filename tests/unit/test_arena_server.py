"""The arena's web server: malformed votes get 400, replayed votes 409, the page escapes what it shows, images
come only from the configured folder, and it binds to loopback unless told otherwise."""

from __future__ import annotations

import http.client
import json
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from illustrious.arena.catalog import scan
from illustrious.arena.export import write_exports
from illustrious.arena.pairing import Pairing
from illustrious.arena.ratings import compute_ratings
from illustrious.arena.server import Arena, make_server
from illustrious.arena.store import ArenaStore
from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError
from tests.unit.test_arena_catalog import make_images_folder

HOSTILE = 'a girl <script>alert("x")</script> & "quotes" \'single\' <img src=x onerror=alert(1)>'


@pytest.fixture
def arena(tmp_path):
    images = make_images_folder(tmp_path / "images", prompts=(HOSTILE, HOSTILE + " again"))
    (tmp_path / "secret.png").write_bytes(b"secret outside the images folder")
    store = ArenaStore(tmp_path / "arena.sqlite")
    app = Arena(scan(images), store, Pairing(scan(images), seed=0))
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_address[1]
    server.shutdown()
    server.server_close()
    store.close()


def request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def open_match(port, kind="fixed") -> tuple[str, str]:
    status, headers, page = request(port, "GET", f"/match/{kind}")
    assert status == 200
    return re.search(r'data-token="([^"]+)"', page.decode())[1], page.decode()


def vote(port, body, content_type="application/json"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, data = request(port, "POST", "/api/vote", raw, {"Content-Type": content_type})
    return status, json.loads(data)


def test_a_vote_is_recorded_once_and_a_replay_is_409(arena):
    app, port = arena
    token, _ = open_match(port)
    assert vote(port, {"token": token, "winner": "draw"}) == (200, {"recorded": 1})
    assert vote(port, {"token": token, "winner": "draw"})[0] == 409
    assert vote(port, {"token": token, "winner": "a"})[0] == 409
    assert [v.ranks for v in app.store.votes()] == [(0, 0)]
    ffa, _ = open_match(port, "ffa")
    assert vote(port, {"token": ffa, "order": [1, 3, 0, 2]})[0] == 200
    assert app.store.votes()[-1].ranks == (2, 0, 3, 1)


@pytest.mark.parametrize("kind, body, message", [
    ("fixed", b"{not json", "valid UTF-8 JSON"),
    ("fixed", b"\xff\xfe", "valid UTF-8 JSON"),
    ("fixed", [1, 2], "JSON object"),
    ("fixed", {"winner": "a"}, "token"),
    ("fixed", {"token": 5, "winner": "a"}, "token"),
    ("fixed", {"token": "unknown-token", "winner": "a"}, "unknown match"),
    ("fixed", {"token": "TOKEN", "winner": "c"}, "'a' or 'b'"),
    ("fixed", {"token": "TOKEN", "winner": None}, "'a' or 'b'"),
    ("fixed", {"token": "TOKEN", "winner": "a", "extra": 1}, "duel's vote"),
    ("free", {"token": "TOKEN", "winner": "draw"}, "'a' or 'b'"),  # free-prompt duels have no draw
    ("ffa", {"token": "TOKEN", "best": 4}, "slot numbers 0..3"),
    ("ffa", {"token": "TOKEN", "best": True}, "slot numbers"),
    ("ffa", {"token": "TOKEN", "order": [0, 1, 2]}, "all 4 slots"),
    ("ffa", {"token": "TOKEN", "order": [0, 1, 1, 2]}, "twice"),
    ("ffa", {"token": "TOKEN", "winner": "a"}, "free-for-all's vote"),
])
def test_malformed_votes_are_rejected_with_400_and_leave_the_match_open(arena, kind, body, message):
    app, port = arena
    token, _ = open_match(port, kind)
    if isinstance(body, dict) and body.get("token") == "TOKEN":
        body = {**body, "token": token}
    status, answer = vote(port, body)
    assert status == 400 and message in answer["error"]
    assert app.store.votes() == [] and not app.store.match(token).voted


def test_oversize_wrong_type_and_unsized_bodies_are_400(arena):
    app, port = arena
    token, _ = open_match(port)
    big = json.dumps({"token": token, "winner": "a", "pad": "x" * 5000}).encode()
    assert vote(port, big)[0] == 400
    assert vote(port, {"token": token, "winner": "a"}, content_type="text/plain")[0] == 400
    status, _, _ = request(port, "POST", "/api/vote", None, {"Content-Type": "application/json"})
    assert status == 400  # no Content-Length
    status, _, _ = request(port, "POST", "/api/vote", iter([b'{"token": 1}']),
                           {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 400
    assert app.store.votes() == []


def test_the_page_escapes_the_prompt_and_forbids_inline_script(arena):
    _, port = arena
    status, headers, page = request(port, "GET", "/match/ffa")
    assert HOSTILE not in page.decode() and "<script>alert" not in page.decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in page.decode()
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert "ckpt_" not in page.decode()  # the checkpoints stay anonymous to the voter
    assert request(port, "GET", "/static/arena.js")[0] == 200


def test_images_are_served_only_from_the_folder(arena, tmp_path):
    app, port = arena
    token, _ = open_match(port)
    status, headers, data = request(port, "GET", f"/image/{token}/0")
    assert status == 200 and headers["Content-Type"] == "image/png" and data[:4] == b"\x89PNG"
    for path in ["/image/../../secret.png", "/image/%2e%2e/%2e%2e/secret.png", f"/image/{token}/2",
                 f"/image/{token}/0/../../../secret.png", f"/image/{token}/..%2f..%2fsecret.png",
                 "/static/../store.py", "/static/%2e%2e/store.py", "/images/ckpt_a/0_0.png", "/../secret.png",
                 "/image/unknown-token/0"]:
        assert request(port, "GET", path)[0] == 404, path
    # even a match row pointing outside (a tampered database) is refused: every path is resolved and checked
    tampered = app.store.open_match("fixed", 0, 0, ["ckpt_a", "ckpt_b"], ["../secret.png", "ckpt_b/../../secret.png"])
    assert request(port, "GET", f"/image/{tampered}/0")[0] == 404
    assert request(port, "GET", f"/image/{tampered}/1")[0] == 404
    # a symlink in the folder that points outside was never catalogued
    link = app.catalog.root / "ckpt_a" / "1_5.png"
    link.symlink_to(tmp_path / "secret.png")
    assert all(image.path != link for image in scan(app.catalog.root).images)


def test_foreign_host_headers_are_refused_on_a_loopback_bind(arena):
    _, port = arena
    assert request(port, "GET", "/", headers={"Host": "evil.example:80"})[0] == 400
    assert request(port, "GET", "/", headers={"Host": f"localhost:{port}"})[0] == 200


def test_ratings_are_served_from_the_vote_log(arena):
    app, port = arena
    token, _ = open_match(port)
    winner = app.store.match(token).entrants[1]
    assert vote(port, {"token": token, "winner": "b"})[0] == 200
    status, _, data = request(port, "GET", "/api/ratings")
    ratings = {row["checkpoint"]: row for row in json.loads(data)}
    assert ratings[winner]["elo"] == 1016.0 and ratings[winner]["wins"] == 1
    status, _, page = request(port, "GET", "/ratings")
    assert f'data-checkpoint="{winner}"' in page.decode()
    status, headers, csv_text = request(port, "GET", "/ratings.csv")
    assert status == 200 and csv_text.decode().splitlines()[0].startswith("checkpoint,votes,wins")
    # one kind of match at a time: the duel counts for fixed duels and not for free-for-alls
    by_kind = {kind: {r["checkpoint"]: r for r in json.loads(request(port, "GET", f"/api/ratings?kind={kind}")[2])}
               for kind in ("fixed", "ffa")}
    assert by_kind["fixed"][winner]["elo"] == 1016.0 and by_kind["ffa"][winner]["elo"] == 1000.0
    assert "Free-for-alls" in request(port, "GET", "/ratings?kind=ffa")[2].decode()
    assert json.loads(request(port, "GET", "/api/ratings?kind=<bad>")[2]) == json.loads(data)  # unknown: all votes
    # the server adds new votes to its kept ratings: the same numbers as folding the whole log afresh
    for kind, answer in (("ffa", {"order": [2, 3, 0, 1]}), ("free", {"winner": "a"}), ("ffa", {"best": 1})):
        token, _ = open_match(port, kind)
        assert vote(port, {"token": token, **answer})[0] == 200
        for k in (None, "ffa"):
            kept, count = app.ratings(k)
            log = [v for v in app.store.votes() if k is None or v.kind == k]
            assert kept == compute_ratings(log, app.catalog.checkpoints) and count == len(log)


def test_binds_to_loopback_by_default_and_elsewhere_only_when_allowed(tmp_path, caplog):
    cfg = OmegaConf.load(Path(CONF_DIR) / "arena.yaml")
    assert cfg.host == "127.0.0.1" and cfg.allow_remote is False
    images = make_images_folder(tmp_path / "images", checkpoints=("a", "b"))
    app = Arena(scan(images), ArenaStore(tmp_path / "db.sqlite"), Pairing(scan(images)))
    with pytest.raises(ConfigError, match="allow_remote=true"):
        make_server(app, "0.0.0.0", 0)
    with caplog.at_level(logging.WARNING, logger="illustrious.arena.server"):
        server = make_server(app, "0.0.0.0", 0, allow_remote=True)
    server.server_close()
    assert "binding to 0.0.0.0" in caplog.text
    assert server.allowed_hosts is None  # a deliberate remote bind answers any Host


def test_export_writes_csv_and_a_png_plot(arena, tmp_path):
    app, port = arena
    for answer in ({"winner": "a"}, {"winner": "draw"}):
        token, _ = open_match(port)
        assert vote(port, {"token": token, **answer})[0] == 200
    rows, count = app.ratings()
    assert count == 2
    csv_path, png_path = write_exports(rows, tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "checkpoint,votes,wins,draws,losses,elo,elo_time_weighted,mu,sigma,conservative"
    assert len(lines) == 5
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 300


@pytest.mark.parametrize("args, message", [
    ([], "images is required"),
    (["images={images}", "db={db}", "host=0.0.0.0"], "allow_remote=true"),
])
def test_the_command_reports_configuration_errors_in_one_line(tmp_path, args, message):
    images = make_images_folder(tmp_path / "images", checkpoints=("a", "b"))
    fill = {"images": images, "db": tmp_path / "db.sqlite"}
    done = subprocess.run([sys.executable, "-m", "illustrious.arena", *(a.format(**fill) for a in args)],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("override, message", [
    ({"images": "{missing}"}, "not a folder"),
    ({"port": 70000}, "port=70000"),
    ({"elo": {"k": -1}}, "elo.k=-1"),
    ({"trueskill": {"draw_probability": 2}}, "draw_probability"),
    ({"action": "plot"}, "action=plot"),
    ({"kinds": ["duel"]}, "kinds"),
])
def test_settings_are_checked_before_serving(tmp_path, override, message):
    from illustrious.arena.cli import run

    images = make_images_folder(tmp_path / "images", checkpoints=("a", "b"))
    cfg = OmegaConf.load(Path(CONF_DIR) / "arena.yaml")
    cfg.merge_with({"images": str(images), "db": str(tmp_path / "db.sqlite"), "hydra": None})
    cfg.merge_with(OmegaConf.create(json.loads(json.dumps(override).replace("{missing}", str(tmp_path / "no")))))
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(cfg)
