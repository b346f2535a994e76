#!/usr/bin/env bash
# Install LLaMA-Factory 0.9.5 in its own virtualenv beside the project's CPU torch, for bench/prepare_bench.py.
#
#   bash bench/setup_llamafactory.sh [VENV]      (default: .airtune/bench/llamafactory-venv)
#
# The recipe (docs/benchmarks.md, Setup): torch 2.13.0 first (the CPU wheel here), then llamafactory with
# torch/torchvision pinned, then torchvision removed and torchaudio's compiled extension disabled (their PyPI
# wheels are CUDA builds that fail beside the CPU torch; text-only preprocessing needs neither).
set -euo pipefail
VENV="${1:-$(dirname "$0")/../.airtune/bench/llamafactory-venv}"
PY="${PYTHON:-python3.11}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llamafactory.data" 2>/dev/null; then
  echo "llamafactory ready in $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q llamafactory==0.9.5 torch==2.13.0 torchvision==0.28.0
"$VENV/bin/pip" uninstall -q -y torchvision
for so in "$VENV"/lib/python3.11/site-packages/torchaudio/lib/*.so; do
  [ -e "$so" ] && mv "$so" "$so.disabled"
done
"$VENV/bin/python" -c "import llamafactory.data; print('llamafactory', __import__('llamafactory').__version__, 'ready in $VENV')"
