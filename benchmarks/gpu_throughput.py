"""Training throughput of the real-size SDXL UNet and Lumina-2 Next-DiT on one GPU (issue 12), or of the tiny
flavours on the CPU (`--tiny`, what the tests run).

Each measurement builds the backbone from the shipped architecture configs with random weights (nothing is
downloaded), and trains it through the project's own `build_module` / `build_trainer` (DiffusionModule,
Lightning Trainer, the default callbacks minus sampling, checkpoints and logging) on synthetic cached batches:
latents and precomputed text embeddings (`batch["conditioning"]`), so no autoencoder or text encoder runs in
the step. bf16-mixed, AdamW, denoiser only (text encoders frozen, as with cached embeddings).

Reported per row: samples/s (batch / median step time), the median step time after warm-up, the median time
the loop waited for the next batch (fetch + copy to the device), peak device memory, and model FLOP
utilisation: FLOPs of one training step counted with torch.utils.flop_counter.FlopCounterMode (forward +
backward, no recomputation) over step time, against `--peak-tflops` (790: the bf16 matrix rate measured on
these H100/H200 machines).

Sections (`--sections`, run in this order, both models in each; `--budget-s` starts no measurement that would
end after it, by a rough estimate per measurement):
  levers         each lever added to the last, as a ratio: math attention + for-loop AdamW (reference) ->
                 flash attention -> fused AdamW -> channels-last (SDXL); the fastest is carried on
  checkpointing  full (gradient_checkpointing=[denoiser]) and selective (backbone.checkpoint_blocks=0.5)
  compile        + backbone.compile=regional (each repeated block compiled; compile time stays in the warm-up)
  batch          other batch sizes (and resolutions: --resolutions 1024,768,1536)
  memory         the largest batch that fits, without and with checkpointing every block (a guess from the
                 peak memory measured so far, then growth and bisection; each try is two training steps)
  data           the uncached path: pixels through the VAE and captions through full-depth text encoders

    python -m benchmarks.gpu_throughput --out results.json            # the GPU sweep (benchmarks/gpu_run.sh)
    python -m benchmarks.gpu_throughput --tiny --out /tmp/tiny.json   # the same code on the CPU, tiny models
    python -m benchmarks.gpu_throughput --count-flops --models sdxl,lumina   # FLOPs only, on the meta device
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import compose, machine
from benchmarks.throughput_parts import (
    MODELS,
    CachedDataModule,
    StepTimer,
    free,
    largest_batch,
    line_fit,
    make_real_size,
    memory_guess,
    meta_batch,
    synchronize,
    synthetic_batches,
    training_step_flops,
)
from illustrious.config import instantiate, validate
from illustrious.train import build_module, build_trainer

COLUMNS = ("model", "res", "batch", "section", "variant", "samples/s", "step ms", "wait ms", "peak GiB",
           "TFLOP/s", "MFU %", "x prev", "x ref")
# the fastest settings found on the way are carried into the later sections
LEVERS = {
    "sdxl": [("reference: math attention, for-loop AdamW", ["backbone.attention=math", "optim.optimizer.fused=false"]),
             ("+ flash attention", ["backbone.attention=flash", "optim.optimizer.fused=false"]),
             ("+ fused AdamW", ["backbone.attention=flash", "optim.optimizer.fused=true"]),
             ("+ channels-last", ["backbone.attention=flash", "optim.optimizer.fused=true", "backbone.channels_last=true"])],
    "lumina": [("reference: math attention, for-loop AdamW", ["backbone.attention=math", "optim.optimizer.fused=false"]),
               ("+ flash attention", ["backbone.attention=flash", "optim.optimizer.fused=false"]),
               ("+ fused AdamW", ["backbone.attention=flash", "optim.optimizer.fused=true"])],
}
CHECKPOINTING = [("checkpointing: selective, every other block", ["backbone.checkpoint_blocks=0.5"]),
                 ("checkpointing: every block", ["gradient_checkpointing=[denoiser]"])]
SECTIONS = ("levers", "checkpointing", "compile", "batch", "memory", "data")
# rough seconds one measurement takes on an H100/H200 (build, warm-up, timed steps): a measurement starts only if
# it can end inside --budget-s
COST_S = {"compile": 150.0, "memory": 20.0}
DEFAULT_COST_S = 30.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.started = time.perf_counter()
        self.flops: dict[tuple, int] = {}
        self.best = {m: LEVERS[m][-1][1] for m in MODELS}
        self.out = Path(args.out) if args.out else None
        self.workdir = tempfile.mkdtemp(prefix="throughput-")
        self.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"

    # -- configs -------------------------------------------------------------------------------------------
    def config(self, model: str, overrides: list[str], batch: int, steps: int, full_text_encoders: bool = False):
        trainer = "gpu" if self.device == "cuda" else "cpu"
        cfg = compose([f"backbone={MODELS[model]['tiny']}", f"trainer={trainer}", "trainer.precision=bf16-mixed",
                       f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
                       "trainer.enable_model_summary=false", "trainer.enable_checkpointing=false",
                       "callbacks.samples=null", "callbacks.composition=null", "callbacks.checkpoint=null",
                       "callbacks.step_log=null", "callbacks.lr_monitor=null", "callbacks.progress=null",
                       "callbacks.memory_check=null",  # the memory section finds the limit by trying
                       "optim.lr=1e-5", "optim.text_encoder_lr=0", f"data.batch_size={batch}", *overrides],
                      self.workdir)
        cfg.logger = None
        if not self.args.tiny:
            make_real_size(cfg, model, full_text_encoders)
        validate(cfg)
        return cfg

    def latent_hw(self, model: str, res: int) -> tuple[int, int]:
        factor = 2 if self.args.tiny else 8  # the tiny flavours' pixel autoencoder; the real VAEs
        return res // factor, res // factor

    def tokens(self, model: str) -> int:
        return self.args.caption_tokens or (16 if self.args.tiny else MODELS[model]["tokens"])

    # -- FLOPs ---------------------------------------------------------------------------------------------
    def flops_per_sample(self, model: str, res: int) -> int:
        """Counted once per model and resolution on the meta device (no memory, no device time), batch 1."""
        key = (model, res, self.tokens(model))
        if key not in self.flops:
            cfg = self.config(model, [], 1, 1)
            with torch.device("meta"):
                backbone = instantiate(cfg.backbone)
            objective = instantiate(cfg.objective)
            batch = meta_batch(backbone, 1, self.latent_hw(model, res), self.tokens(model))
            self.flops[key] = training_step_flops(backbone, objective, batch, on_meta=True)
            del backbone
        return self.flops[key]

    # -- one measurement -----------------------------------------------------------------------------------
    def measure(self, model: str, res: int, batch: int, section: str, variant: str, overrides: list[str],
                cached: bool = True, steps: int | None = None, warmup: int | None = None) -> dict:
        steps = self.args.steps if steps is None else steps
        warmup = self.args.warmup if warmup is None else warmup
        row = {"model": model, "res": res, "batch": batch, "section": section, "variant": variant,
               "overrides": overrides, "cached": cached}
        try:
            row.update(self.fit(model, res, batch, overrides, cached, steps, warmup))
        except Exception as e:  # one failed setting must not cost the rest of a one-shot device run
            row["error"] = "out of memory" if out_of_memory(e) else f"{type(e).__name__}: {str(e)[:300]}"
            if not out_of_memory(e):
                traceback.print_exc()
            del e
        finally:
            free()
        return row

    def fit(self, model, res, batch, overrides, cached, steps, warmup) -> dict:
        cfg = self.config(model, overrides, batch, warmup + steps, full_text_encoders=not cached)
        flops = self.flops_per_sample(model, res)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        build = time.perf_counter()
        with torch.device(self.device):  # random weights made where they train
            backbone = instantiate(cfg.backbone)
        module = build_module(cfg, backbone)
        text_calls = count_calls(backbone, "encode_text")  # with cached embeddings the step never encodes text
        module.flops_per_batch = flops * batch  # Lightning's ThroughputMonitor reports FLOP/s from it
        batches = synthetic_batches(backbone, batch, self.latent_hw(model, res), self.tokens(model), cached)
        trainer = build_trainer(cfg)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        built = time.perf_counter() - build
        trainer.fit(module, datamodule=CachedDataModule(batches, warmup + steps))
        synchronize()
        step_s = timer.step_s[max(warmup - 1, 0):]  # step_s[i] is step i+1; the first `warmup` steps are dropped
        wait_s = timer.wait_s[max(warmup - 1, 0):]
        step = statistics.median(step_s)
        out = {"samples_per_s": batch / step, "step_ms": 1e3 * step, "wait_ms": 1e3 * statistics.median(wait_s),
               "steps_timed": len(step_s), "build_s": built,
               "warmup_s": sum(timer.step_s[:max(warmup - 1, 0)]), "flops_per_sample": flops,
               "tflops": flops * batch / step / 1e12, "loss_finite": bool(torch.isfinite(
                   torch.as_tensor(float(trainer.callback_metrics.get("train/loss", float("nan")))))),
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None,
               "text_encoder_calls": text_calls[0]}
        out["mfu"] = out["tflops"] / self.args.peak_tflops if self.device == "cuda" else None
        del module, backbone, trainer, batches
        return out

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def over_budget(self, section: str = "") -> bool:
        cost = 0.0 if self.args.tiny else COST_S.get(section, DEFAULT_COST_S)
        return time.perf_counter() - self.started + cost > self.args.budget_s

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.save()
        return row

    def save(self) -> None:
        if self.out is None:
            return
        payload = {"machine": machine(), "args": vars(self.args), "device": self.device,
                   "peak_tflops": self.args.peak_tflops, "flops_per_sample": {
                       f"{m}@{r}px/{t}tok": f for (m, r, t), f in self.flops.items()}, "rows": self.rows,
                   "elapsed_s": time.perf_counter() - self.started}
        if self.device == "cuda":
            payload["gpu"] = torch.cuda.get_device_name()
            payload["cuda"] = torch.version.cuda
        write_atomic(self.out, json.dumps(payload, indent=1, default=str))  # a run cut short keeps whole files
        if self.args.table:
            write_atomic(Path(self.args.table), markdown(self.rows) + "\n")

    def run(self, section: str, model: str, res: int, batch: int, variant: str, overrides: list[str],
            **kw) -> dict | None:
        if self.over_budget(section):
            return self.add({"model": model, "res": res, "batch": batch, "section": section, "variant": variant,
                             "overrides": overrides, "error": "skipped: over --budget-s"})
        return self.add(self.measure(model, res, batch, section, variant, overrides, **kw))


def out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def count_calls(obj, method: str) -> list[int]:
    """Count calls of obj.<method> (a one-element list, updated in place)."""
    calls, real = [0], getattr(obj, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(obj, method, counted)
    return calls


def best_of(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r and "samples_per_s" in r]
    return max(ok, key=lambda r: r["samples_per_s"]) if ok else None


def sweep(bench: Bench) -> None:
    """Section by section, both models in each, so a run cut short by its budget still compares both."""
    a = bench.args
    res = a.resolutions[0]
    best = bench.best  # the full lever set unless the levers section finds another fastest
    for section in (s for s in SECTIONS if s in a.sections):
        for model in a.models:
            batch = a.batch[model]
            if section == "levers":
                chain = LEVERS[model][:a.levers or None]
                found = best_of([bench.run(section, model, res, batch, name, ov) for name, ov in chain])
                best[model] = found["overrides"] if found else best[model]
            elif section == "checkpointing":
                for name, ov in CHECKPOINTING:
                    bench.run(section, model, res, batch, name, [*best[model], *ov])
            elif section == "batch":
                for b in a.sweep[model]:
                    for r in a.resolutions:
                        if (b, r) != (batch, res):
                            bench.run(section, model, r, b, f"batch {b}", best[model])
            elif section == "memory":
                for name, ov in [("largest batch, no checkpointing", []),
                                 ("largest batch, checkpointing every block", ["gradient_checkpointing=[denoiser]"])]:
                    largest(bench, model, res, name, [*best[model], *ov])
            elif section == "compile":
                bench.run(section, model, res, batch, "+ regional torch.compile",
                          [*best[model], "backbone.compile=regional"], warmup=a.warmup + 1)
            elif section == "data":
                bench.run(section, model, res, batch, "uncached: VAE encode + text encoders in the step", best[model],
                          cached=False)


def largest(bench: Bench, model: str, res: int, name: str, overrides: list[str]) -> None:
    """The largest batch at `res` with these settings: a guess from a straight-line fit of the peak memory
    measured so far, then growth by 1.25 and bisection to within 5 % (every try is two real training steps)."""
    tried: dict[int, dict] = {}

    def fits(b: int) -> bool:
        if bench.over_budget("memory"):
            raise TimeoutError
        row = bench.measure(model, res, b, "memory", f"{name}: try {b}", overrides, steps=1, warmup=1)
        tried[b] = row
        peak = row.get("peak_gib")
        print(f"  memory try: {model} batch {b}: {row.get('error') or (f'{peak:.1f} GiB' if peak else 'ran')}",
              flush=True)
        if row.get("error") not in (None, "out of memory"):
            raise RuntimeError(row["error"])
        return "error" not in row

    guess, growth, tolerance = bench.args.batch[model] * 2, 2.0, 0.0
    if bench.device == "cuda":
        capacity = torch.cuda.get_device_properties(0).total_memory / 2**30
        def points(ov):
            return [(r["batch"], r["peak_gib"]) for r in bench.rows if r.get("model") == model
                    and r.get("res") == res and r.get("peak_gib") and r.get("overrides") == ov]

        plain = line_fit(points(overrides[:len(bench.best[model])]))
        intercept = plain[0] if plain and overrides != bench.best[model] else None
        guess = memory_guess(points(overrides), capacity, intercept) or guess
        growth, tolerance = 1.25, 0.05
    try:
        lo, hi = largest_batch(fits, cap=bench.args.max_batch_cap, guess=guess, growth=growth, tolerance=tolerance)
        row = dict(tried.get(lo) or {"model": model, "res": res})
        row.update(variant=f"{name} (fits {lo}; {'out of memory at ' + str(hi) if hi else 'cap reached'})",
                   section="memory", batch=lo, first_oom=hi, tried=sorted(tried))
    except (TimeoutError, RuntimeError) as e:
        why = "skipped: over --budget-s" if isinstance(e, TimeoutError) else str(e)
        row = {"model": model, "res": res, "batch": None, "section": "memory", "variant": name,
               "error": f"{why} (tried {sorted(tried)})"}
    bench.add(row)


# -- the table -------------------------------------------------------------------------------------------------
def cells(row: dict, ref: dict | None = None, prev: dict | None = None) -> list[str]:
    def num(key, fmt, scale=1.0):
        v = row.get(key)
        return fmt.format(v * scale) if isinstance(v, int | float) else "-"

    def ratio(other):
        if other is None or "samples_per_s" not in other or "samples_per_s" not in row:
            return "-"
        return f"{row['samples_per_s'] / other['samples_per_s']:.2f}"

    if "error" in row:
        return [row["model"], str(row["res"]), str(row.get("batch")), row["section"], row["variant"],
                row["error"], *["-"] * 7]
    return [row["model"], str(row["res"]), str(row["batch"]), row["section"], row["variant"],
            num("samples_per_s", "{:.2f}"), num("step_ms", "{:.1f}"), num("wait_ms", "{:.2f}"),
            num("peak_gib", "{:.1f}"), num("tflops", "{:.3g}"), num("mfu", "{:.1f}", 100), ratio(prev), ratio(ref)]


def format_row(row: dict) -> str:
    return " | ".join(cells(row))


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    prev_by_model: dict[str, dict] = {}
    ref_by_model: dict[str, dict] = {}
    for row in rows:
        key = row["model"]
        ref, prev = None, None
        if row["section"] == "levers":
            ref = ref_by_model.setdefault(key, row)
            prev = prev_by_model.get(key)
            prev_by_model[key] = row
        elif row["section"] in ("checkpointing", "compile", "data"):  # against the best lever setting
            ref = ref_by_model.get(key)
            prev = best_of([r for r in rows if r["model"] == key and r["section"] == "levers"])
        lines.append("| " + " | ".join(cells(row, ref, prev)) + " |")
    return "\n".join(lines)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="sdxl_tiny / lumina_tiny on the CPU at small resolution")
    ap.add_argument("--models", default="sdxl,lumina")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--resolutions", default=None, help="pixels per side; the first is the main one (1024)")
    ap.add_argument("--batch-sdxl", type=int, default=None, help="batch of the lever comparisons")
    ap.add_argument("--batch-lumina", type=int, default=None)
    ap.add_argument("--sweep-sdxl", default=None, help="batch sizes of the batch section")
    ap.add_argument("--sweep-lumina", default=None)
    ap.add_argument("--levers", type=int, default=None, help="only the first N steps of each lever chain")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    ap.add_argument("--caption-tokens", type=int, default=None, help="text tokens per sample (77 SDXL, 256 Lumina)")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="MFU denominator (bf16 matrix rate measured here)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no measurement that would end after this")
    ap.add_argument("--max-batch-cap", type=int, default=None)
    ap.add_argument("--count-flops", action="store_true", help="only count FLOPs per sample (meta device) and print")
    ap.add_argument("--out", default=None, help="JSON results (rewritten after every measurement)")
    ap.add_argument("--table", default=None, help="write the Markdown table here too")
    a = ap.parse_args(argv)
    tiny = a.tiny
    a.models = a.models.split(",")
    a.sections = a.sections.split(",")
    unknown = set(a.sections) - set(SECTIONS) or set(a.models) - set(MODELS)
    if unknown:
        ap.error(f"unknown {sorted(unknown)}: sections {SECTIONS}, models {tuple(MODELS)}")
    a.resolutions = [int(r) for r in (a.resolutions or ("32" if tiny else "1024")).split(",")]
    a.batch = {"sdxl": a.batch_sdxl or (2 if tiny else 8), "lumina": a.batch_lumina or (2 if tiny else 4)}
    a.sweep = {"sdxl": [int(b) for b in (a.sweep_sdxl or ("4" if tiny else "16")).split(",")],
               "lumina": [int(b) for b in (a.sweep_lumina or ("4" if tiny else "8")).split(",")]}
    a.steps = a.steps or (2 if tiny else 6)
    a.warmup = a.warmup or (1 if tiny else 2)
    a.max_batch_cap = a.max_batch_cap or (4 if tiny else 256)
    return a


def quiet_lightning() -> None:
    """One line per measurement instead of Lightning's banner for each of the dozens of short fits."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def main(argv=None) -> list[dict]:
    args = parse(argv)
    if args.tiny:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    quiet_lightning()
    bench = Bench(args)
    print(f"machine: {machine()}", flush=True)
    if args.count_flops:
        for model in args.models:
            for res in args.resolutions:
                f = bench.flops_per_sample(model, res)
                print(f"{model} {res}x{res} ({bench.tokens(model)} text tokens): {f / 1e12:.3f} TFLOP per training "
                      f"sample (forward + backward)", flush=True)
        bench.save()
        return []
    sweep(bench)
    print("\n" + markdown(bench.rows))
    return bench.rows


if __name__ == "__main__":
    main()
