"""Wall time of `python -m illustrious.run --cfg job` (composing and printing the config), median of runs.

    uv run python benchmarks/cfg_job_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import machine, median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    times = {}
    for name, cmd in {
        "python -c pass": [sys.executable, "-c", "pass"],
        "illustrious.run --cfg job": [sys.executable, "-m", "illustrious.run", "--cfg", "job"],
        "illustrious.run --help": [sys.executable, "-m", "illustrious.run", "--help"],
    }.items():
        runs = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        times[name] = median(runs)
        print(f"{name:28s} median {times[name]:.2f} s over {args.runs} runs", flush=True)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
