"""Ratings recomputed from the vote log (the same log gives the same numbers, every time).

Elo (logistic, base 10, scale 400): for a pair with ratings Ra, Rb the expected score of A is
    E_a = 1 / (1 + 10 ** ((Rb - Ra) / 400))
and after a game with score S_a (win 1, draw 0.5, loss 0) the new rating is R_a' = R_a + K (S_a - E_a)
(B symmetrically). A free-for-all is scored as its pairs, each against the ratings from before the match,
deltas summed: a full ranking gives every pair (equal ranks = draws); "pick the best" gives only the
best-vs-other pairs (the order of the others is unknown).

Time-weighted average Elo (option): each checkpoint's rating as a step function of wall-clock time over
the vote log, R(t) = its rating after the last vote at or before t, averaged over [first vote, last vote]:
    TWA = (1 / (t_n - t_1)) * sum_{i=1}^{n-1} R(after vote i) * (t_{i+1} - t_i)
It damps the dependence of the final Elo on the order of the last few votes; a rating that held for a
long time counts for more. With one vote (or all votes at one instant) it is the current rating; a gap
where the clock stepped back counts as zero.

TrueSkill (Herbrich, Minka & Graepel 2007) through the `trueskill` library: each vote is one match of
one-player teams with the vote's ranks (a duel is a 1-vs-1 match, a draw a shared rank; a free-for-all a
multi-player match; for "pick the best" the others share second place, the library's only way to say
"behind the best"). Reported as mu, sigma and the conservative mu - 3 sigma.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations

from illustrious.arena.store import Vote
from illustrious.errors import ConfigError


@dataclass(frozen=True)
class EloSettings:
    k: float = 32.0
    initial: float = 1000.0

    def __post_init__(self):
        if not (math.isfinite(self.k) and self.k > 0):
            raise ConfigError(f"elo.k={self.k}: must be a positive number (32 is the usual choice).")


@dataclass(frozen=True)
class TrueSkillSettings:
    mu: float = 25.0
    sigma: float = 25.0 / 3
    beta: float = 25.0 / 6
    tau: float = 25.0 / 300
    draw_probability: float = 0.10

    def environment(self):
        import trueskill

        if not 0 <= self.draw_probability < 1:
            raise ConfigError(f"trueskill.draw_probability={self.draw_probability}: must be in [0, 1).")
        return trueskill.TrueSkill(mu=self.mu, sigma=self.sigma, beta=self.beta, tau=self.tau,
                                   draw_probability=self.draw_probability, backend=None)


@dataclass(frozen=True)
class Rating:
    checkpoint: str
    votes: int
    wins: int       # pairwise outcomes, counting each pair of a free-for-all
    draws: int
    losses: int
    elo: float
    elo_time_weighted: float
    mu: float
    sigma: float
    conservative: float  # mu - 3 sigma

    def as_dict(self) -> dict:
        return asdict(self)


def elo_expected(ra: float, rb: float) -> float:
    return 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))


def elo_update(ra: float, rb: float, score_a: float, k: float) -> tuple[float, float]:
    """One game between A and B; score_a is 1 (A won), 0.5 (draw) or 0 (B won)."""
    ea = elo_expected(ra, rb)
    return ra + k * (score_a - ea), rb + k * ((1.0 - score_a) - (1.0 - ea))


def pair_outcomes(ranks: tuple[int, ...] | list[int], outcome: str) -> list[tuple[int, int, float]]:
    """(slot i, slot j, score of i) for every pair the vote orders or draws."""
    pairs = []
    best = min(ranks)
    for i, j in combinations(range(len(ranks)), 2):
        if outcome == "best" and best not in (ranks[i], ranks[j]):
            continue  # two non-best images: their order was not asked
        score = 1.0 if ranks[i] < ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0
        pairs.append((i, j, score))
    return pairs


def elo_deltas(vote: Vote, ratings: dict[str, float], k: float) -> dict[str, float]:
    """Each entrant's rating change from one vote, every pair scored against the ratings before it."""
    deltas = dict.fromkeys(vote.entrants, 0.0)
    for i, j, score in pair_outcomes(vote.ranks, vote.outcome):
        a, b = vote.entrants[i], vote.entrants[j]
        new_a, new_b = elo_update(ratings[a], ratings[b], score, k)
        deltas[a] += new_a - ratings[a]
        deltas[b] += new_b - ratings[b]
    return deltas


class RatingsFold:
    """The ratings as a fold over the vote log: `add` the votes in log order, read `rows()` at any point.
    Folding the same log always gives the same numbers; the server keeps one and adds only new votes."""

    def __init__(self, checkpoints: list[str], elo: EloSettings, trueskill: TrueSkillSettings):
        self.settings = elo
        self.env = trueskill.environment()
        self.elo: dict[str, float] = {}
        self.skill: dict = {}
        self.counts: dict[str, list[int]] = {}  # votes, wins, draws, losses
        self.integral: dict[str, float] = {}  # of the Elo step function over time, for the time-weighted average
        self.span = 0.0
        self.last_time: float | None = None
        self.votes = 0
        for name in checkpoints:
            self._enter(name)

    def _enter(self, name: str) -> None:
        if name not in self.elo:  # a newcomer held the initial rating for the time already covered
            self.elo[name] = self.settings.initial
            self.skill[name] = self.env.create_rating()
            self.counts[name] = [0, 0, 0, 0]
            self.integral[name] = self.settings.initial * self.span

    def add(self, vote: Vote) -> None:
        for name in vote.entrants:
            self._enter(name)
        if self.last_time is not None:
            gap = max(0.0, vote.voted_at - self.last_time)  # a clock stepped back adds no time
            for name, rating in self.elo.items():
                self.integral[name] += rating * gap
            self.span += gap
        self.last_time = vote.voted_at
        for name, delta in elo_deltas(vote, self.elo, self.settings.k).items():
            self.elo[name] += delta
        rated = self.env.rate([(self.skill[name],) for name in vote.entrants], ranks=list(vote.ranks))
        for name, (rating,) in zip(vote.entrants, rated, strict=True):
            self.skill[name] = rating
        for name in vote.entrants:
            self.counts[name][0] += 1
        for i, j, score in pair_outcomes(vote.ranks, vote.outcome):
            for name, s in ((vote.entrants[i], score), (vote.entrants[j], 1.0 - score)):
                self.counts[name][1 if s == 1.0 else 2 if s == 0.5 else 3] += 1
        self.votes += 1

    def time_weighted(self, name: str) -> float:
        return self.integral[name] / self.span if self.span > 0 else self.elo[name]

    def rows(self) -> list[Rating]:
        """One row per checkpoint, best Elo first."""
        rows = [Rating(name, *self.counts[name], self.elo[name], self.time_weighted(name), self.skill[name].mu,
                       self.skill[name].sigma, self.skill[name].mu - 3 * self.skill[name].sigma)
                for name in sorted(self.elo)]
        return sorted(rows, key=lambda r: (-r.elo, r.checkpoint))


def compute_ratings(votes: list[Vote], checkpoints: list[str], elo: EloSettings = EloSettings(),
                    trueskill: TrueSkillSettings = TrueSkillSettings()) -> list[Rating]:
    """One row per checkpoint (those in the catalog and any named in the log), best Elo first."""
    fold = RatingsFold(checkpoints, elo, trueskill)
    for vote in votes:
        fold.add(vote)
    return fold.rows()
