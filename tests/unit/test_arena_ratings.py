"""Arena ratings against the published formulas (hand-computed numbers) and the trueskill library.

Elo: E_a = 1 / (1 + 10^((Rb - Ra) / 400)), R' = R + K (S - E).
TrueSkill two-player update (Herbrich, Minka & Graepel 2007; as in the trueskill library, which first adds
the dynamics tau^2 to each variance): c^2 = 2 beta^2 + s_w^2 + s_l^2, draw margin eps = Phi^-1((p + 1) / 2)
sqrt(2) beta; win: v = N(t - e) / Phi(t - e), w = v (v + t - e) with t = (mu_w - mu_l) / c, e = eps / c;
mu_w' = mu_w + s_w^2 / c v, s_w'^2 = s_w^2 (1 - s_w^2 / c^2 w) (the loser with -v).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import trueskill

from illustrious.arena.ratings import (
    EloSettings,
    TrueSkillSettings,
    compute_ratings,
    elo_expected,
    elo_update,
)
from illustrious.arena.store import Vote
from illustrious.errors import ConfigError

N = NormalDist()


def vote(i, entrants, ranks, outcome="ranking", at=None, kind="fixed"):
    return Vote(i, f"t{i}", kind, 0, tuple(entrants), tuple(ranks), outcome, float(i if at is None else at))


def by_name(rows):
    return {row.checkpoint: row for row in rows}


def test_elo_expected_and_update_match_hand_computed_numbers():
    assert elo_expected(1000, 1000) == 0.5
    # Ra = 1200, Rb = 1000: E_a = 1 / (1 + 10^-0.5) = 1 / 1.316227766016838 = 0.7597469266479578
    assert elo_expected(1200, 1000) == pytest.approx(0.7597469266479578, abs=1e-15)
    assert elo_update(1000, 1000, 1.0, 32) == (1016.0, 984.0)
    assert elo_update(1000, 1000, 0.5, 32) == (1000.0, 1000.0)
    # A (1200) beats B: 1200 + 32 * 0.2402530733520422 = 1207.688098347265; B loses the same
    a, b = elo_update(1200, 1000, 1.0, 32)
    assert (a, b) == pytest.approx((1207.688098347265, 992.311901652735), abs=1e-9)
    # draw: A gives 32 * (0.5 - 0.7597469266479578) = -8.311901652734650
    assert elo_update(1200, 1000, 0.5, 32) == pytest.approx((1191.688098347265, 1008.311901652735), abs=1e-9)
    assert elo_update(1200, 1000, 0.0, 10) == pytest.approx((1192.402530733520, 1007.597469266480), abs=1e-9)


def test_duel_log_replays_to_the_hand_computed_elo_with_draws():
    votes = [vote(1, ["x", "y"], [0, 1]),          # x beats y: 1016 / 984
             vote(2, ["y", "x"], [0, 0]),          # draw: y gains 32 * (0.5 - E_y)
             vote(3, ["z", "x"], [1, 0])]          # x beats z (1000)
    rows = by_name(compute_ratings(votes, ["x", "y", "z"], EloSettings(k=32)))
    e_y = 1 / (1 + 10 ** ((1016 - 984) / 400))       # 0.4540...
    y2, x2 = 984 + 32 * (0.5 - e_y), 1016 - 32 * (0.5 - e_y)
    e_x = 1 / (1 + 10 ** ((1000 - x2) / 400))
    assert rows["y"].elo == pytest.approx(y2, abs=1e-9)
    assert rows["x"].elo == pytest.approx(x2 + 32 * (1 - e_x), abs=1e-9)
    assert rows["z"].elo == pytest.approx(1000 - 32 * (1 - e_x), abs=1e-9)
    assert (rows["x"].wins, rows["x"].draws, rows["x"].losses, rows["x"].votes) == (2, 1, 0, 3)
    assert sum(r.elo for r in rows.values()) == pytest.approx(3000)  # Elo is zero-sum
    assert compute_ratings(votes, ["x", "y", "z"]) == compute_ratings(votes, ["x", "y", "z"])  # deterministic


def test_k_is_configurable_and_checked():
    rows = by_name(compute_ratings([vote(1, ["x", "y"], [0, 1])], ["x", "y"], EloSettings(k=16, initial=1500)))
    assert (rows["x"].elo, rows["y"].elo) == (1508.0, 1492.0)
    with pytest.raises(ConfigError, match="elo.k"):
        EloSettings(k=0)


def test_free_for_all_elo_is_pairwise_from_the_ratings_before_the_match():
    ranking = vote(1, ["a", "b", "c", "d"], [2, 0, 3, 1])  # order: b, d, a, c
    rows = by_name(compute_ratings([ranking], list("abcd")))
    # all start at 1000 so every E = 0.5: 3 wins = +48, 2 wins 1 loss = +16, 1 win 2 losses = -16, 3 losses = -48
    assert {n: r.elo for n, r in rows.items()} == {"b": 1048.0, "d": 1016.0, "a": 984.0, "c": 952.0}
    best = vote(1, ["a", "b", "c", "d"], [1, 0, 1, 1], outcome="best")  # only "b is best" is known
    rows = by_name(compute_ratings([best], list("abcd")))
    assert {n: r.elo for n, r in rows.items()} == {"b": 1048.0, "a": 984.0, "c": 984.0, "d": 984.0}
    assert rows["a"].draws == 0  # the unordered others did not draw with each other


def test_time_weighted_average_integrates_the_rating_over_time():
    votes = [vote(1, ["x", "y"], [0, 1], at=100.0),   # x = 1016, held 10 s
             vote(2, ["x", "y"], [0, 1], at=110.0),   # x = 1016 + 32 (1 - E), held 30 s
             vote(3, ["y", "x"], [0, 1], at=140.0)]   # the last state is held for no time
    x2 = 1016 + 32 * (1 - 1 / (1 + 10 ** ((984 - 1016) / 400)))
    rows = by_name(compute_ratings(votes, ["x", "y"]))
    assert rows["x"].elo_time_weighted == pytest.approx((1016 * 10 + x2 * 30) / 40, abs=1e-9)
    assert rows["y"].elo_time_weighted == pytest.approx((984 * 10 + (2000 - x2) * 30) / 40, abs=1e-9)
    assert by_name(compute_ratings(votes[:1], ["x", "y"]))["x"].elo_time_weighted == 1016.0  # one vote: current
    assert by_name(compute_ratings([], ["x"]))["x"].elo_time_weighted == 1000.0
    # a checkpoint first seen in the third vote held the initial rating before it
    late = [*votes[:2], vote(3, ["w", "x"], [0, 1], at=140.0), vote(4, ["w", "y"], [0, 1], at=150.0)]
    w3 = 1000 + 32 * (1 - 1 / (1 + 10 ** ((x2 - 1000) / 400)))
    assert by_name(compute_ratings(late, ["x", "y"]))["w"].elo_time_weighted == pytest.approx(
        (1000 * 40 + w3 * 10) / 50, abs=1e-9)


def trueskill_two_player(mu_w, s_w, mu_l, s_l, draw, beta=25 / 6, tau=25 / 300, p=0.1):
    """The published update for one game between two players (player 1 listed first)."""
    s_w2, s_l2 = s_w ** 2 + tau ** 2, s_l ** 2 + tau ** 2
    c = math.sqrt(2 * beta ** 2 + s_w2 + s_l2)
    t, e = (mu_w - mu_l) / c, N.inv_cdf((p + 1) / 2) * math.sqrt(2) * beta / c
    if draw:
        z = N.cdf(e - t) - N.cdf(-e - t)
        v = (N.pdf(-e - t) - N.pdf(e - t)) / z
        w = v ** 2 + ((e - t) * N.pdf(e - t) + (e + t) * N.pdf(e + t)) / z
    else:
        v = N.pdf(t - e) / N.cdf(t - e)
        w = v * (v + t - e)
    return ((mu_w + s_w2 / c * v, math.sqrt(s_w2 * (1 - s_w2 / c ** 2 * w))),
            (mu_l - s_l2 / c * v, math.sqrt(s_l2 * (1 - s_l2 / c ** 2 * w))))


def test_trueskill_duel_matches_the_published_formulas():
    # within 1e-6: the library's pure-Python backend approximates erfc and its inverse (to about 1e-7)
    rows = by_name(compute_ratings([vote(1, ["x", "y"], [0, 1])], ["x", "y"]))
    (mu_x, s_x), (mu_y, s_y) = trueskill_two_player(25, 25 / 3, 25, 25 / 3, draw=False)
    assert (rows["x"].mu, rows["x"].sigma) == pytest.approx((mu_x, s_x), abs=1e-6)
    assert (rows["y"].mu, rows["y"].sigma) == pytest.approx((mu_y, s_y), abs=1e-6)
    assert (round(rows["x"].mu, 3), round(rows["x"].sigma, 3)) == (29.396, 7.171)  # the library's documented example
    assert rows["x"].conservative == pytest.approx(rows["x"].mu - 3 * rows["x"].sigma)
    # then a draw between unequal players
    rows = by_name(compute_ratings([vote(1, ["x", "y"], [0, 1]), vote(2, ["x", "y"], [0, 0])], ["x", "y"]))
    (mu_x2, s_x2), (mu_y2, s_y2) = trueskill_two_player(mu_x, s_x, mu_y, s_y, draw=True)
    assert (rows["x"].mu, rows["x"].sigma, rows["y"].mu, rows["y"].sigma) == pytest.approx(
        (mu_x2, s_x2, mu_y2, s_y2), abs=1e-5)  # approximation errors of both steps add up
    assert rows["x"].mu < mu_x and rows["y"].mu > mu_y


def test_trueskill_free_for_all_is_one_multiplayer_match_of_the_library():
    settings = TrueSkillSettings(draw_probability=0.05)
    votes = [vote(1, ["a", "b", "c", "d"], [2, 0, 3, 1]), vote(2, ["c", "a", "b", "d"], [0, 1, 1, 1], "best")]
    rows = by_name(compute_ratings(votes, list("abcd"), trueskill=settings))
    env = trueskill.TrueSkill(draw_probability=0.05, backend=None)
    r = {n: env.create_rating() for n in "abcd"}
    for v in votes:
        rated = env.rate([(r[n],) for n in v.entrants], ranks=list(v.ranks))
        r.update({n: g[0] for n, g in zip(v.entrants, rated, strict=True)})
    for name in "abcd":
        assert (rows[name].mu, rows[name].sigma) == (r[name].mu, r[name].sigma)
    with pytest.raises(ConfigError, match="draw_probability"):
        TrueSkillSettings(draw_probability=1.0).environment()
