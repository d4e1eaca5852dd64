"""Ratings to a CSV table and a PNG plot (written atomically)."""

from __future__ import annotations

import csv
import io
from dataclasses import fields
from pathlib import Path

from illustrious.arena.ratings import Rating
from illustrious.utils.files import atomic_save, atomic_write

COLUMNS = [f.name for f in fields(Rating)]


def ratings_csv(rows: list[Rating]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_dict())
    return out.getvalue()


def plot_ratings(rows: list[Rating], path: Path, title: str = "Arena ratings") -> None:
    """Two panels: Elo (bar) with its time-weighted average (marker); TrueSkill mu with a 3-sigma bar."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    names = [row.checkpoint for row in rows]
    y = list(range(len(rows)))[::-1]
    figure = Figure(figsize=(10, 1.5 + 0.45 * len(rows)), layout="constrained")
    elo_axes, skill_axes = figure.subplots(1, 2, sharey=True)
    elo_axes.barh(y, [row.elo for row in rows], color="tab:blue", label="Elo")
    elo_axes.plot([row.elo_time_weighted for row in rows], y, "o", color="tab:orange", label="time-weighted")
    low = min(min(row.elo, row.elo_time_weighted) for row in rows)
    elo_axes.set_xlim(left=low - 50)
    elo_axes.set_yticks(y, names)
    elo_axes.set_xlabel("Elo")
    elo_axes.legend(loc="lower right")
    skill_axes.errorbar([row.mu for row in rows], y, xerr=[3 * row.sigma for row in rows], fmt="o",
                        color="tab:green", capsize=4)
    skill_axes.plot([row.conservative for row in rows], y, "|", color="black", markersize=12)
    skill_axes.set_xlabel("TrueSkill μ ± 3σ (| = μ − 3σ)")
    figure.suptitle(title)
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def write_exports(rows: list[Rating], out_dir: str | Path, stem: str = "arena_ratings") -> tuple[Path, Path]:
    """<out_dir>/<stem>.csv and <out_dir>/<stem>.png; returns both paths."""
    out_dir = Path(out_dir).expanduser()
    csv_path, png_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.png"
    with atomic_write(csv_path, "w") as f:
        f.write(ratings_csv(rows))
    plot_ratings(rows, png_path)
    return csv_path, png_path
