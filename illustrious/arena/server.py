"""The arena's web server: the standard library's ThreadingHTTPServer, bound to 127.0.0.1 unless told
otherwise.

Routes: `/` (index), `/match/<kind>` (serves a new match: stores it with a one-time token), `/image/<token>/<slot>`
(the images of a served match, read only from the catalog's folder), `/api/vote` (POST JSON), `/ratings`,
`/api/ratings`, `/ratings.csv` (each with `?kind=fixed|free|ffa` for one kind of match), `/static/arena.{js,css}`.

Votes: a body that is not a JSON object of the right shape, too large, of the wrong content type, or that
names an unknown match gets 400; a second vote on the same token gets 409. Images are addressed by the
match's token and slot, never by a path from the request, so a request can only reach files the catalog
scan found inside the folder (and each is checked again to resolve inside it).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from illustrious.arena import page
from illustrious.arena.catalog import Catalog
from illustrious.arena.export import ratings_csv
from illustrious.arena.pairing import KINDS, Pairing
from illustrious.arena.ratings import EloSettings, Rating, RatingsFold, TrueSkillSettings
from illustrious.arena.store import AlreadyVoted, ArenaStore, UnknownMatch
from illustrious.arena.votes import BadVote, ranks_for, token_of
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
STATIC = {name: Path(__file__).parent / "static" / name for name in ("arena.js", "arena.css")}
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
IMAGE_ROUTE = re.compile(r"^/image/([A-Za-z0-9_-]{1,64})/([0-9]{1,2})$")
MATCH_ROUTE = re.compile(r"^/match/([a-z]{1,16})$")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Arena:
    """What the server does, independent of HTTP: serve matches, take votes, compute ratings."""

    def __init__(self, catalog: Catalog, store: ArenaStore, pairing: Pairing, elo: EloSettings | None = None,
                 trueskill: TrueSkillSettings | None = None):
        self.catalog, self.store, self.pairing = catalog, store, pairing
        self.elo = elo or EloSettings()
        self.trueskill = trueskill or TrueSkillSettings()
        self._folds: dict[str | None, tuple[RatingsFold, int]] = {}  # kind -> (fold, last vote id folded in)
        self._folds_lock = threading.Lock()

    def new_match(self, kind: str) -> tuple[str, str, int]:
        """(token, prompt text, number of images) of a newly served match."""
        proposal = self.pairing.propose(kind)
        token = self.store.open_match(kind, proposal.prompt_index, proposal.seed,
                                      [image.checkpoint for image in proposal.images],
                                      [image.path.relative_to(self.catalog.root).as_posix() for image in proposal.images])
        return token, self.catalog.prompts[proposal.prompt_index].text, len(proposal.images)

    def image_path(self, token: str, slot: int) -> Path | None:
        match = self.store.match(token)
        if match is None or slot >= len(match.images):
            return None
        path = (self.catalog.root / match.images[slot]).resolve()
        if not path.is_relative_to(self.catalog.root) or not path.is_file():
            return None
        return path

    def vote(self, body: bytes) -> tuple[int, dict]:
        """(HTTP status, JSON answer) for a vote's body."""
        try:
            payload = json.loads(body.decode("utf-8"))
            token = token_of(payload)
            match = self.store.match(token)
            if match is None:
                raise BadVote("unknown match token (open a match first)")
            if match.voted:
                return HTTPStatus.CONFLICT, {"error": "this match was already voted on"}
            ranks, outcome = ranks_for(payload, match)
            vote = self.store.record_vote(token, ranks, outcome)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return HTTPStatus.BAD_REQUEST, {"error": "the body is not valid UTF-8 JSON"}
        except BadVote as e:
            return HTTPStatus.BAD_REQUEST, {"error": str(e)}
        except UnknownMatch:
            return HTTPStatus.BAD_REQUEST, {"error": "unknown match token"}
        except AlreadyVoted:  # two requests raced for one token: the store let exactly one through
            return HTTPStatus.CONFLICT, {"error": "this match was already voted on"}
        return HTTPStatus.OK, {"recorded": vote.id}

    def ratings(self, kind: str | None = None) -> tuple[list[Rating], int]:
        """(rows, number of votes) from every vote, or from the votes of one kind of match. The log only grows,
        so each kind's fold is kept and only new votes are added (TrueSkill free-for-alls cost milliseconds
        each; a long log is not refolded per page view); the numbers equal a fold of the whole log."""
        with self._folds_lock:
            fold, last_id = self._folds.get(kind) or (RatingsFold(self.catalog.checkpoints, self.elo, self.trueskill), 0)
            for vote in self.store.votes(after_id=last_id):
                if kind is None or vote.kind == kind:
                    fold.add(vote)
                last_id = vote.id
            self._folds[kind] = (fold, last_id)
            return fold.rows(), fold.votes


class Handler(BaseHTTPRequestHandler):
    server_version = "IllustriousArena"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle or trickle a request before it is dropped

    @property
    def arena(self) -> Arena:
        return self.server.arena  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _html(self, text: str) -> None:
        self._send(HTTPStatus.OK, text.encode(), "text/html; charset=utf-8")

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _host_allowed(self) -> bool:
        """On a loopback bind, only loopback Host headers: a web page elsewhere cannot reach the arena by
        pointing its own host name at 127.0.0.1 (DNS rebinding)."""
        allowed = self.server.allowed_hosts  # type: ignore[attr-defined]
        if allowed is None:
            return True
        if self.headers.get("Host", "") in allowed:
            return True
        self.close_connection = True
        self._send(HTTPStatus.BAD_REQUEST, b"unexpected Host header\n", "text/plain; charset=utf-8")
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_allowed():
            return
        url = urlsplit(self.path)
        path, kind = url.path, parse_qs(url.query).get("kind", [None])[0]
        kind = kind if kind in KINDS else None  # ratings of any kind in the log, served by this run or not
        arena = self.arena
        if path == "/":
            return self._html(page.index_page(arena.pairing.kinds, arena.store.vote_count(), len(arena.catalog.checkpoints)))
        if (m := MATCH_ROUTE.match(path)) and m[1] in arena.pairing.kinds:
            token, prompt, n = arena.new_match(m[1])
            return self._html(page.match_page(m[1], token, prompt, n, arena.pairing.kinds, arena.store.vote_count()))
        if m := IMAGE_ROUTE.match(path):
            image = arena.image_path(m[1], int(m[2]))
            if image is None:
                return self._not_found()
            return self._send(HTTPStatus.OK, image.read_bytes(), CONTENT_TYPES[image.suffix.lower()])
        if path.startswith("/static/") and path[len("/static/"):] in STATIC:
            file = STATIC[path[len("/static/"):]]
            return self._send(HTTPStatus.OK, file.read_bytes(), CONTENT_TYPES[file.suffix])
        if path == "/ratings":
            rows, votes = arena.ratings(kind)
            return self._html(page.ratings_page(rows, votes, arena.elo.k, arena.pairing.kinds, kind))
        if path == "/api/ratings":
            return self._json(HTTPStatus.OK, [row.as_dict() for row in arena.ratings(kind)[0]])
        if path == "/ratings.csv":
            return self._send(HTTPStatus.OK, ratings_csv(arena.ratings(kind)[0]).encode(), "text/csv; charset=utf-8")
        return self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_allowed():
            return
        if urlsplit(self.path).path != "/api/vote":
            self.close_connection = True
            return self._not_found()
        problem = self._body_problem()
        if problem:
            self.close_connection = True  # the body (if any) was not read
            return self._json(HTTPStatus.BAD_REQUEST, {"error": problem})
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, answer = self.arena.vote(body)
        self._json(status, answer)

    def _body_problem(self) -> str | None:
        if self.headers.get("Transfer-Encoding"):
            return "send the body with a Content-Length, not chunked"
        if self.headers.get_content_type() != "application/json":
            return "Content-Type must be application/json"
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return "a Content-Length header is required"
        if int(length) > MAX_BODY_BYTES:
            return f"the body is larger than {MAX_BODY_BYTES} bytes"
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ArenaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, arena: Arena, host: str, port: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.arena = arena
        self.allowed_hosts = None
        if is_loopback(host):
            port = self.server_address[1]
            self.allowed_hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(arena: Arena, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False) -> ArenaServer:
    """Bind the server (port 0 picks a free one). Anything but a loopback address needs allow_remote=True."""
    if not is_loopback(host):
        if not allow_remote:
            raise ConfigError(f"host={host}: the arena binds to 127.0.0.1 by default; binding to {host} lets other "
                              "machines see the images and vote. Set allow_remote=true to do this on purpose.")
        log.warning("arena: binding to %s; anyone who can reach this machine on port %s can see the images and "
                    "vote (there is no login).", host, port)
    return ArenaServer(arena, host, port)
