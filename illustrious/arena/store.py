"""The arena's SQLite file: every match served (with its one-time token) and every vote.

Durability: WAL journal with synchronous=FULL, and each vote is its own `BEGIN IMMEDIATE ... COMMIT`, which
returns only once the vote is on disk; the server answers the voter after that. A server killed at any
moment keeps every vote it acknowledged, and a vote it had not committed leaves no trace (SQLite rolls the
partial transaction back on the next open).

One-time tokens: a match is stored with a random token when served; a vote names the token, the store
checks it exists (else UnknownMatch) and has not been used (else AlreadyVoted) and marks it used in the
same transaction as the vote, so a token is spent exactly once even with concurrent requests.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from illustrious.errors import ConfigError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
    token TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    prompt_index INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    entrants TEXT NOT NULL,        -- JSON list of checkpoint names, in slot order
    images TEXT NOT NULL,          -- JSON list of image paths relative to the images folder, in slot order
    served_at REAL NOT NULL,
    voted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE REFERENCES matches(token),
    kind TEXT NOT NULL,
    prompt_index INTEGER NOT NULL,
    entrants TEXT NOT NULL,        -- JSON list of checkpoint names, in slot order
    ranks TEXT NOT NULL,           -- JSON list, per slot: 0 = best; equal ranks = a draw between them
    outcome TEXT NOT NULL,         -- 'ranking' (every pair ordered or drawn) or 'best' (only the best is known)
    voted_at REAL NOT NULL
);
"""


class UnknownMatch(LookupError):
    """No match was served with this token."""


class AlreadyVoted(RuntimeError):
    """The match's token was already spent on a vote."""


@dataclass(frozen=True)
class Match:
    token: str
    kind: str
    prompt_index: int
    seed: int
    entrants: tuple[str, ...]
    images: tuple[str, ...]
    voted: bool


@dataclass(frozen=True)
class Vote:
    id: int
    token: str
    kind: str
    prompt_index: int
    entrants: tuple[str, ...]
    ranks: tuple[int, ...]
    outcome: str  # "ranking" | "best"
    voted_at: float


class ArenaStore:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path).expanduser()
        self.clock = clock
        if not self.path.parent.is_dir():
            raise ConfigError(f"db={self.path}: its folder {self.path.parent} does not exist; create it first.")
        try:
            # autocommit mode (isolation_level=None): transactions are the explicit BEGIN ... COMMIT below
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"db={self.path}: not a usable SQLite arena file ({e}).") from None
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif found[0] != str(SCHEMA_VERSION):
            raise ConfigError(f"db={self.path}: arena schema version {found[0]}, this code reads {SCHEMA_VERSION}.")
        self._lock = threading.Lock()  # one connection shared by the server's threads

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def open_match(self, kind: str, prompt_index: int, seed: int, entrants: list[str], images: list[str]) -> str:
        """Store a served match; return its one-time token (unguessable, URL-safe)."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._db.execute("INSERT INTO matches (token, kind, prompt_index, seed, entrants, images, served_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (token, kind, prompt_index, seed, json.dumps(entrants), json.dumps(images), self.clock()))
        return token

    def match(self, token: str) -> Match | None:
        with self._lock:
            row = self._db.execute("SELECT token, kind, prompt_index, seed, entrants, images, voted FROM matches "
                                   "WHERE token = ?", (token,)).fetchone()
        if row is None:
            return None
        return Match(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), tuple(json.loads(row[5])), bool(row[6]))

    def record_vote(self, token: str, ranks: list[int], outcome: str = "ranking") -> Vote:
        """Spend the token and store the vote in one committed transaction."""
        if outcome not in ("ranking", "best"):
            raise ValueError(f"outcome must be 'ranking' or 'best', got {outcome!r}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT kind, prompt_index, entrants, voted FROM matches WHERE token = ?",
                                       (token,)).fetchone()
                if row is None:
                    raise UnknownMatch(token)
                if row[3]:
                    raise AlreadyVoted(token)
                kind, prompt_index, entrants = row[0], row[1], tuple(json.loads(row[2]))
                if len(ranks) != len(entrants):
                    raise ValueError(f"{len(ranks)} ranks for a match of {len(entrants)}")
                voted_at = self.clock()
                self._db.execute("UPDATE matches SET voted = 1 WHERE token = ?", (token,))
                cursor = self._db.execute(
                    "INSERT INTO votes (token, kind, prompt_index, entrants, ranks, outcome, voted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (token, kind, prompt_index, json.dumps(entrants), json.dumps(list(ranks)), outcome, voted_at))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Vote(cursor.lastrowid, token, kind, prompt_index, entrants, tuple(ranks), outcome, voted_at)

    def votes(self, after_id: int = 0) -> list[Vote]:
        """The vote log (from vote `after_id` on) in the order the votes were committed: writers are
        serialised, so ids grow in commit order and the log is append-only."""
        with self._lock:
            rows = self._db.execute("SELECT id, token, kind, prompt_index, entrants, ranks, outcome, voted_at "
                                    "FROM votes WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        return [Vote(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), tuple(json.loads(r[5])), r[6], r[7])
                for r in rows]

    def vote_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def served_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM matches").fetchone()[0]
