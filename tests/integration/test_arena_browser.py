"""The arena end to end in a real browser: headless Chromium (Debian's package) driven by Playwright opens the
page, votes by clicking (a fixed duel won, a fixed duel drawn, a free duel, a free-for-all "best" and a full
free-for-all ranking), and the ratings page then shows exactly the Elo the published formula gives
(E = 1 / (1 + 10^((Rb - Ra) / 400)), R' = R + K (S - E), K = 32) and the trueskill library's mu and sigma.

Skipped, with the reason, where Chromium or Playwright is missing, unless ILLUSTRIOUS_REQUIRE_BROWSER is set
(.ci/run sets it and installs Chromium), in which case it fails.
"""

from __future__ import annotations

import os
import threading
from itertools import combinations

import pytest
import trueskill

from illustrious.arena.catalog import scan
from illustrious.arena.pairing import Pairing
from illustrious.arena.server import Arena, make_server
from illustrious.arena.store import ArenaStore
from tests.unit.test_arena_catalog import CHECKPOINTS, make_images_folder

CHROMIUM = os.environ.get("ILLUSTRIOUS_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("ILLUSTRIOUS_REQUIRE_BROWSER", "") not in ("", "0")


def browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev dependency group: uv sync)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)"
    return None


PROBLEM = browser_problem()
if PROBLEM and REQUIRED:
    raise RuntimeError(f"ILLUSTRIOUS_REQUIRE_BROWSER is set but the browser test cannot run: {PROBLEM}")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))]

K = 32.0


@pytest.fixture
def served(tmp_path):
    images = make_images_folder(tmp_path / "images", prompts=("character X, red hair, smiling", "free prompt"))
    store = ArenaStore(tmp_path / "arena.sqlite")
    arena = Arena(scan(images), store, Pairing(scan(images), seed=0))
    server = make_server(arena, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url, store
    server.shutdown()
    server.server_close()
    store.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
        assert errors == [], f"script errors in the page: {errors}"


def expected_elo(log: list[tuple[tuple[str, ...], list[tuple[int, int, float]]]]) -> dict[str, float]:
    """The published Elo formula applied to each vote's pairs, all from the ratings before the vote."""
    r = dict.fromkeys(CHECKPOINTS, 1000.0)
    for entrants, pairs in log:
        delta = dict.fromkeys(entrants, 0.0)
        for i, j, s in pairs:
            e = 1 / (1 + 10 ** ((r[entrants[j]] - r[entrants[i]]) / 400))
            delta[entrants[i]] += K * (s - e)
            delta[entrants[j]] += K * ((1 - s) - (1 - e))
        for name, d in delta.items():
            r[name] += d
    return r


def test_votes_cast_by_clicking_change_the_ratings_as_the_formulas_say(served, page):
    url, store = served
    log, ts_log = [], []

    def open_match(kind):
        page.goto(f"{url}match/{kind}")
        token = page.get_attribute("#match", "data-token")
        assert page.locator("img").count() == (4 if kind == "ffa" else 2)
        assert all(page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth === 8)"))  # images load
        return token, store.match(token).entrants

    def wait_for_next(token):  # the page reloads a new match once the vote is recorded
        page.wait_for_function("t => document.getElementById('match')?.dataset.token !== t", arg=token)
        assert store.match(token).voted

    # 1. fixed duel, A wins
    token, entrants = open_match("fixed")
    assert page.get_by_role("button", name="Draw").count() == 1
    page.get_by_role("button", name="A is better").click()
    wait_for_next(token)
    log.append((entrants, [(0, 1, 1.0)]))
    ts_log.append((entrants, [0, 1]))
    # 2. fixed duel, draw
    token, entrants = open_match("fixed")
    page.get_by_role("button", name="Draw").click()
    wait_for_next(token)
    log.append((entrants, [(0, 1, 0.5)]))
    ts_log.append((entrants, [0, 0]))
    # 3. free-prompt duel: no draw offered; B wins
    token, entrants = open_match("free")
    assert page.get_by_role("button", name="Draw").count() == 0
    page.get_by_role("button", name="B is better").click()
    wait_for_next(token)
    log.append((entrants, [(0, 1, 0.0)]))
    ts_log.append((entrants, [1, 0]))
    # 4. free-for-all: C is the best (only the best-vs-other pairs are known)
    token, entrants = open_match("ffa")
    page.get_by_role("button", name="C is the best").click()
    wait_for_next(token)
    log.append((entrants, [(2, j, 1.0) for j in (0, 1, 3)]))
    ts_log.append((entrants, [1, 1, 0, 1]))
    # 5. free-for-all ranked: D first, B second, A third, C last
    token, entrants = open_match("ffa")
    ranks = {0: 2, 1: 1, 2: 3, 3: 0}
    page.select_option('select[data-slot="1"]', value="0")  # a duplicate rank is refused in the page, nothing sent
    page.get_by_role("button", name="Submit ranking").click()
    assert "different rank" in page.text_content("#status")
    assert not store.match(token).voted
    for slot, rank in ranks.items():
        page.select_option(f'select[data-slot="{slot}"]', value=str(rank))  # values 0..3, labels 1st..4th
    page.get_by_role("button", name="Submit ranking").click()
    wait_for_next(token)
    log.append((entrants, [(i, j, 1.0 if ranks[i] < ranks[j] else 0.0) for i, j in combinations(range(4), 2)]))
    ts_log.append((entrants, [ranks[s] for s in range(4)]))

    # replaying a spent token from the page's own origin is refused with 409
    status = page.evaluate("""t => fetch('/api/vote', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                   body: JSON.stringify({token: t, order: [0, 1, 2, 3]})}).then(r => r.status)""", token)
    assert status == 409
    assert len(store.votes()) == 5

    page.goto(f"{url}ratings")
    shown = {name: {key: float(page.get_attribute(f'tr[data-checkpoint="{name}"] td.{key}', "data-value"))
                    for key in ("elo", "mu", "sigma")} for name in CHECKPOINTS}
    elo = expected_elo(log)
    env = trueskill.TrueSkill(backend=None)
    skill = {name: env.create_rating() for name in CHECKPOINTS}
    for entrants, vote_ranks in ts_log:
        rated = env.rate([(skill[n],) for n in entrants], ranks=vote_ranks)
        skill.update({n: group[0] for n, group in zip(entrants, rated, strict=True)})
    for name in CHECKPOINTS:
        assert shown[name]["elo"] == pytest.approx(elo[name], abs=1e-9), name
        assert (shown[name]["mu"], shown[name]["sigma"]) == (skill[name].mu, skill[name].sigma), name
    assert sum(shown[n]["elo"] for n in CHECKPOINTS) == pytest.approx(4000)
    assert len({round(v["elo"], 6) for v in shown.values()}) > 1  # the votes moved the ratings
