#!/usr/bin/env bash
# Issue 12's whole GPU measurement in one command: the throughput sweep of the real-size SDXL UNet and Lumina-2
# Next-DiT (benchmarks/gpu_throughput.py), its table and JSON under $OUT.
#
# Before (on a machine with pip and the package registry, once; .whl/ is git-ignored):
#   bash benchmarks/gpu_run.sh --download-wheels
# On the device machine (the device tool's `run`, from the repository root; .whl travels through `carry`):
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=540)
# Dry run of the same path on a CPU (tiny models, wheels installed to a scratch folder):
#   DRY=1 PYTHON=.venv/bin/python PIP="python3 -m pip" OUT=/tmp/gpu-run bash benchmarks/gpu_run.sh
#
# The device machine has torch, Lightning, transformers, timm, peft and safetensors but not diffusers, hydra-core,
# omegaconf (with its antlr4 runtime), importlib-metadata or webdataset: those come as wheels (.whl is git-ignored,
# so run --download-wheels in the very checkout the device tool sends). BUDGET_S (default 400 s): no
# measurement starts that would end after it (by a rough per-measurement estimate), so the command ends in about
# 7 minutes and a narrowed rerun (SECTIONS=..., MODELS=...) still fits a 15-minute device lease. Results are written after every measurement: a run cut short keeps
# what it measured.
set -uo pipefail

WHEELS=(diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 importlib-metadata==8.7.0 webdataset==1.0.2 braceexpand==0.1.7)
PY=${PYTHON:-python3}
PIP=${PIP:-$PY -m pip}

if [ "${1:-}" = "--download-wheels" ]; then
  mkdir -p .whl
  $PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}" || exit 1
  $PIP wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit 1  # published as a source archive only
  ls -l .whl
  exit 0
fi

OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PIP install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv
  $PY -c "import torch, lightning, diffusers, transformers, hydra, omegaconf; print('torch', torch.__version__, 'cuda',
torch.version.cuda, '| lightning', lightning.__version__, '| diffusers', diffusers.__version__, '| transformers',
transformers.__version__, '| hydra', hydra.__version__, '| omegaconf', omegaconf.__version__)"
} 2>&1 | tee "$OUT/env.txt"

if [ -n "${DRY:-}" ]; then
  ARGS=(--tiny --sections levers,checkpointing,batch,memory --levers 2 --steps 1 --warmup 1)
else
  ARGS=(--budget-s "${BUDGET_S:-400}")
fi
# a rerun may narrow the sweep: SECTIONS=compile,memory MODELS=lumina bash benchmarks/gpu_run.sh
ARGS+=(${SECTIONS:+--sections "$SECTIONS"} ${MODELS:+--models "$MODELS"})
$PY -m benchmarks.gpu_throughput "${ARGS[@]}" --out "$OUT/throughput.json" --table "$OUT/throughput.md" \
  2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv \
  >>"$OUT/env.txt" 2>&1
exit "$status"
