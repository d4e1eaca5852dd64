"""Process-level CPU levers for the default run's training step, each against plain fp32, in fresh processes.

Variants: `fp32` (the base), `keep_freed` (glibc's mmap and trim thresholds raised to 1 GiB with `mallopt`, so freed
activation buffers stay in the heap instead of being unmapped and page-faulted in again next step: what preloading
jemalloc or tcmalloc does) and `bf16` (the step under `torch.autocast("cpu", torch.bfloat16)`). A process-wide
allocator setting cannot be undone within a process, so each round starts one process per variant, in rotating
order, and each times `--steps` optimizer steps (forward, backward, fused AdamW) after `--warmup` untimed ones.
Reports per variant the median step (wall time), the CPU time per step (all threads, user + system: what the step
costs, less the time the process waited for a core on a shared machine), the page faults per step and the resident
size, and the median over rounds of each variant's wall and CPU time over the base's in the same round.

    uv run python benchmarks/cpu_step_levers.py --rounds 6 --steps 30 [--threads 2] [--variants fp32 keep_freed bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import machine, median

VARIANTS = ("fp32", "keep_freed", "bf16")

ONE_PROCESS = """
import contextlib, ctypes, json, resource, statistics, sys, tempfile
variant, steps, warmup, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if variant == "keep_freed":  # glibc: M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1
    libc = ctypes.CDLL(None)
    assert libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, 1 << 30) == 1, "mallopt refused (not glibc?)"
import functools, torch
torch.set_num_threads(threads)
from benchmarks.step_variants import build_training, step
with tempfile.TemporaryDirectory() as tmp:
    module, optimizer, batches = build_training([], tmp)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    forward = autocast if variant == "bf16" else contextlib.nullcontext
    for _ in range(warmup):
        step(module, optimizer, next(batches), forward)
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [step(module, optimizer, next(batches), forward) for _ in range(steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) / steps
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / steps
rss = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
print(json.dumps({"step": statistics.median(times), "cpu": cpu, "faults": faults, "rss": rss}))
"""


def one(variant: str, args) -> dict:
    command = [sys.executable, "-c", ONE_PROCESS, variant, str(args.steps), str(args.warmup), str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="the first is the base")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(machine(), f"(each process: {args.threads} threads)")
    base, variants = args.variants[0], args.variants
    results = {v: [] for v in variants}
    ratios = {v: [] for v in variants[1:]}
    cpu_ratios = {v: [] for v in variants[1:]}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        now = {v: one(v, args) for v in order}
        for v, r in now.items():
            results[v].append(r)
        for v in ratios:
            ratios[v].append(now[v]["step"] / now[base]["step"])
            cpu_ratios[v].append(now[v]["cpu"] / now[base]["cpu"])
        print(f"round {round_}: " + ", ".join(f"{v} {now[v]['step']:.3f} s/step" for v in variants), flush=True)
    for v, rs in results.items():
        print(f"{v:10s} {median([r['step'] for r in rs]):.3f} s/step (median of {len(rs)} processes), "
              f"CPU {median([r['cpu'] for r in rs]):.3f} s/step, {median([r['faults'] for r in rs]):.0f} page faults/step, resident {median([r['rss'] for r in rs]):.0f} MiB")
    for v, rs in ratios.items():
        cpu = cpu_ratios[v]
        print(f"{v} / {base}: wall x{median(rs):.3f} (median of per-round ratios; rounds {min(rs):.3f}-{max(rs):.3f}), "
              f"CPU time x{median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})")


if __name__ == "__main__":
    main()
