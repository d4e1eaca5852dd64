"""The arena's HTML. Every value placed in the page goes through `html.escape` (prompts come from a file
anyone may have written); the page's script and style are separate files, so the Content-Security-Policy
can forbid inline script entirely."""

from __future__ import annotations

from html import escape

from illustrious.arena.pairing import DRAWS_ALLOWED
from illustrious.arena.ratings import Rating

TITLES = {"fixed": "Fixed-characteristics duel", "free": "Free-prompt duel", "ffa": "Free-for-all"}
SLOT_NAMES = "ABCDEFGHIJKLMNOP"


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _document(title: str, body: str, kinds: tuple[str, ...]) -> str:
    links = "".join(f'<a href="/match/{escape(k)}">{escape(TITLES[k])}</a>' for k in kinds)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)} · Illustrious arena</title>"
            "<link rel=\"stylesheet\" href=\"/static/arena.css\"><script src=\"/static/arena.js\" defer></script>"
            f"</head><body><nav>{links}<a href=\"/ratings\">Ratings</a></nav>\n{body}\n</body></html>\n")


def index_page(kinds: tuple[str, ...], votes: int, checkpoints: int) -> str:
    items = "".join(f'<li><a href="/match/{escape(k)}">{escape(TITLES[k])}</a></li>' for k in kinds)
    body = (f"<main><h1>Illustrious arena</h1><p>{checkpoints} checkpoints, {votes} votes so far. "
            "Images are shown without their checkpoint's name, in random order.</p>"
            f"<ul>{items}</ul></main>")
    return _document("Arena", body, kinds)


def match_page(kind: str, token: str, prompt: str, n_images: int, kinds: tuple[str, ...], votes: int) -> str:
    figures = []
    for slot in range(n_images):
        name = SLOT_NAMES[slot]
        extra = ""
        if kind == "ffa":
            options = "".join(f'<option value="{r}"{" selected" if r == slot else ""}>{ordinal(r + 1)}</option>'
                              for r in range(n_images))
            extra = (f'<button type="button" class="vote" data-best="{slot}">{name} is the best</button>'
                     f'<label>Rank of {name} <select data-slot="{slot}">{options}</select></label>')
        figures.append(f'<figure><img src="/image/{escape(token)}/{slot}" alt="Image {name}">'
                       f"<figcaption>{name}</figcaption>{extra}</figure>")
    if kind == "ffa":
        choices = '<button type="button" id="submit-order" class="vote">Submit ranking</button>'
    else:
        draw = '<button type="button" class="vote" data-winner="draw">Draw</button>' if DRAWS_ALLOWED[kind] else ""
        choices = ('<button type="button" class="vote" data-winner="a">A is better</button>' + draw +
                   '<button type="button" class="vote" data-winner="b">B is better</button>')
    question = "Which image is best?" if kind == "ffa" else "Which image is better?"
    body = (f'<main id="match" data-token="{escape(token)}" data-kind="{escape(kind)}">'
            f"<h1>{escape(TITLES[kind])}</h1><p>{question}</p>"
            f'<p class="prompt">Prompt: <q id="prompt">{escape(prompt)}</q></p>'
            f'<div class="images">{"".join(figures)}</div><div class="choices">{choices}</div>'
            f'<p id="status" role="status"></p><p class="count">{votes} votes so far.</p></main>')
    return _document(TITLES[kind], body, kinds)


RATING_COLUMNS = [("elo", "Elo"), ("elo_time_weighted", "Elo (time-weighted)"), ("mu", "TrueSkill μ"),
                  ("sigma", "σ"), ("conservative", "μ − 3σ")]


def ratings_page(rows: list[Rating], votes: int, k: float, kinds: tuple[str, ...], kind: str | None = None) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in RATING_COLUMNS)
    lines = []
    for row in rows:
        cells = "".join(f'<td class="{key}" data-value="{getattr(row, key)!r}">{getattr(row, key):.2f}</td>'
                        for key, _ in RATING_COLUMNS)
        lines.append(f'<tr data-checkpoint="{escape(row.checkpoint)}"><th>{escape(row.checkpoint)}</th>'
                     f"<td>{row.votes}</td><td>{row.wins}</td><td>{row.draws}</td><td>{row.losses}</td>{cells}</tr>")
    query = f"?kind={escape(kind)}" if kind else ""
    scope = "".join(f' <a href="/ratings?kind={escape(k_)}">{escape(TITLES[k_])}s only</a>' for k_ in TITLES)
    body = (f"<main><h1>Ratings{': ' + escape(TITLES[kind]) + 's' if kind else ''}</h1>"
            f"<p>From {votes} votes; Elo K = {escape(str(k))}. <a href=\"/ratings.csv{query}\">CSV</a> · "
            f'<a href="/ratings">all votes</a>{scope}</p>'
            f'<table id="ratings"><thead><tr><th>Checkpoint</th><th>Votes</th><th>Wins</th><th>Draws</th>'
            f"<th>Losses</th>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></main>")
    return _document("Ratings", body, kinds)
