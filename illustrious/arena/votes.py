"""A vote's JSON body, checked against the match it answers, turned into ranks (0 = best, equal = draw).

    duel:         {"token": "...", "winner": "a" | "b" | "draw"}     draw only where the kind allows it
    free-for-all: {"token": "...", "best": 2}                        slot of the best image (0-based)
                  {"token": "...", "order": [2, 0, 3, 1]}            every slot, best first
"""

from __future__ import annotations

from typing import Any

from illustrious.arena.pairing import DRAWS_ALLOWED
from illustrious.arena.store import Match

MAX_TOKEN_CHARS = 64
DUEL_SLOTS = {"a": 0, "b": 1}


class BadVote(ValueError):
    """The body is not a valid answer to the match (the server answers 400 with this message)."""


def token_of(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise BadVote("the body must be a JSON object")
    token = payload.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise BadVote("'token' must be the match's token (a string)")
    return token


def _slot(value: Any, n: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise BadVote(f"'{name}' must hold slot numbers 0..{n - 1}")
    return value


def ranks_for(payload: dict, match: Match) -> tuple[list[int], str]:
    """(ranks per slot, outcome) where outcome is "ranking" or "best" (only the best is known)."""
    n = len(match.entrants)
    answer = set(payload) - {"token"}
    if n == 2:
        if answer != {"winner"}:
            raise BadVote("a duel's vote is {\"token\": ..., \"winner\": \"a\" | \"b\"" +
                          (" | \"draw\"}" if DRAWS_ALLOWED[match.kind] else "}"))
        winner = payload["winner"]
        if winner == "draw" and DRAWS_ALLOWED[match.kind]:
            return [0, 0], "ranking"
        if not isinstance(winner, str) or winner not in DUEL_SLOTS:
            raise BadVote(f"'winner' must be 'a' or 'b'{' or draw' if DRAWS_ALLOWED[match.kind] else ''}, "
                          f"not {str(winner)[:20]!r}")
        return [0 if slot == DUEL_SLOTS[winner] else 1 for slot in range(2)], "ranking"
    if answer == {"best"}:
        best = _slot(payload["best"], n, "best")
        return [0 if slot == best else 1 for slot in range(n)], "best"
    if answer == {"order"}:
        order = payload["order"]
        if not isinstance(order, list) or len(order) != n:
            raise BadVote(f"'order' must list all {n} slots, best first")
        slots = [_slot(value, n, "order") for value in order]
        if len(set(slots)) != n:
            raise BadVote("'order' names a slot twice")
        ranks = [0] * n
        for position, slot in enumerate(slots):
            ranks[slot] = position
        return ranks, "ranking"
    raise BadVote("a free-for-all's vote is {\"token\": ..., \"best\": slot} or {\"token\": ..., \"order\": [slots]}")
