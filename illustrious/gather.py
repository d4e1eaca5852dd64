"""`python -m illustrious.gather multirun/<date>/<time>`: one table of a sweep's jobs, their overrides and metrics.

Each job folder of a Hydra multirun holds `.hydra/overrides.yaml` (the command-line choices of that job) and,
once training finished, `metrics.json`. The table has one row per job: its number, the overrides that differ
between jobs, and every metric; unfinished jobs are listed as such and counted. It is printed as Markdown and
written to `<sweep>/summary.md` and `<sweep>/summary.csv`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import yaml

OVERRIDES = Path(".hydra") / "overrides.yaml"


def job_dirs(sweep: Path) -> list[Path]:
    """Job folders of a sweep (those Hydra wrote overrides into), by job number."""
    jobs = [p.parent.parent for p in sweep.glob(f"*/{OVERRIDES}")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_job(job: Path) -> dict:
    """{'job', 'overrides' (key -> value), 'metrics' (name -> number) or None when unfinished or unreadable}."""
    entries = yaml.safe_load((job / OVERRIDES).read_text()) or []
    overrides = dict(e.split("=", 1) if "=" in e else (e, "") for e in entries)
    metrics = None
    path = job / "metrics.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            metrics = {k: v for k, v in loaded.items() if isinstance(v, (int, float))}
        except (json.JSONDecodeError, AttributeError):
            metrics = None
    return {"job": job.name, "overrides": overrides, "metrics": metrics}


def table(jobs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: job, the overrides that vary, status, then every metric (sorted)."""
    keys = sorted({k for j in jobs for k in j["overrides"]})
    varying = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1] or keys
    metric_names = sorted({m for j in jobs if j["metrics"] for m in j["metrics"]})
    header = ["job", *varying, "status", *metric_names]
    rows = []
    for j in jobs:
        m = j["metrics"]
        status = "done" if m is not None else "unfinished"
        values = [format_number(m.get(name)) if m else "" for name in metric_names]
        rows.append([j["job"], *(j["overrides"].get(k, "") for k in varying), status, *values])
    return header, rows


def format_number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def gather(sweep: str | Path) -> tuple[list[str], list[list[str]]]:
    """Read a sweep folder, write summary.md and summary.csv into it; returns the table."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep} is not a folder; give a sweep folder such as multirun/<date>/<time>.")
    jobs = [read_job(j) for j in job_dirs(sweep)]
    if not jobs:
        raise FileNotFoundError(f"{sweep} has no job folders with {OVERRIDES}: is it a Hydra multirun folder?")
    header, rows = table(jobs)
    write_atomic(sweep / "summary.md", markdown(header, rows))
    write_atomic(sweep / "summary.csv", to_csv(header, rows))
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m illustrious.gather", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a multirun folder, e.g. multirun/2026-12-01/08-00-00")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="what to print (both are written)")
    args = parser.parse_args(argv)
    try:
        header, rows = gather(args.sweep)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(header, rows) if args.format == "md" else to_csv(header, rows), end="")
    status = header.index("status")
    unfinished = sum(r[status] != "done" for r in rows)
    print(f"{len(rows)} jobs, {unfinished} unfinished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
