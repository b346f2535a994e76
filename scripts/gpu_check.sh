#!/usr/bin/env bash
# GPU check (issue 3): bf16 + SDPA flash + Liger, 4-bit bnb QLoRA and ZeRO-3 on one GPU, on a random
# ~0.5 B-parameter Llama; tokens/s and peak GPU memory in $OUT/gpu_check.json (scripts/gpu_check.py).
#
# 1. Here (a CPU machine with PyPI): fetch the wheels the GPU machine lacks into .whl/ (git-ignored;
#    ~47 MB: bitsandbytes, liger-kernel, deepspeed built as a pure-Python wheel, and their few needs):
#        bash scripts/gpu_check.sh fetch
# 2. On the GPU machine (no network; the device tool, carrying .whl), in under 8 minutes:
#        bash scripts/gpu_check.sh [gpu_check.py options]
#    It installs .whl/*.whl into /tmp/site (no index, no deps), then runs the checks with a 470 s limit.
# Without CUDA, gpu_check.py says so, writes {"cuda": false, ...} and exits 3.
set -uo pipefail
cd "$(dirname "$0")/.."
PY_TARGET="${GPU_CHECK_PYTHON_VERSION:-3.12}"   # the GPU machine's python3 (device KINDS.md: 3.12)

if [ "${1:-}" = "fetch" ]; then
  set -e
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TARGET" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    bitsandbytes==0.50.2 liger-kernel==0.8.5 hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5
  # DeepSpeed is published as a source archive only: build its pure-Python wheel here (ops compile on use)
  PIP="${PIP:-.venv/bin/pip}"
  DS_BUILD_OPS=0 "$PIP" wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
  ls -la .whl
  du -sh .whl
  exit 0
fi

PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT="${OUT:-.airtune/gpu-check}"
mkdir -p "$OUT"
set -o pipefail
timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
