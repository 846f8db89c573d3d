#!/usr/bin/env bash
# The GPU suite in one go: build throughput on a Llama-3.1-8B-shaped random bf16 model, a one-process nccl
# torchrun build and --device map checked against the single build, GPU FAISS search latency at 1M and 10M rows;
# one section appended to bench/runs/gpu.md. Within 9 minutes on one H100/H200 (the driver is bench/gpu.py).
#
#   bench/gpu.sh             # on the GPU machine, from the repository root or anywhere
#   bench/gpu.sh --dry-run   # the same steps on the CPU with tiny shapes (a few minutes): what CI runs
#
# Python: $PYTHON, else .venv/bin/python, else python3. Nothing is downloaded. GPU FAISS: when the installed
# FAISS sees no GPU and a wheel lies in bench/.wheels (pip download faiss-gpu-cu12 --no-deps -d bench/.wheels, on
# a machine with a registry), it is installed into bench/.faiss-gpu and put first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
if [ "${1:-}" != "--dry-run" ] && ! "$PY" -c "import faiss, sys; sys.exit(faiss.get_num_gpus() == 0)" 2>/dev/null; then
  wheel=$(ls bench/.wheels/faiss_gpu*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then
    "$PY" -m pip install --no-deps --quiet --target bench/.faiss-gpu "$wheel" \
      && export PYTHONPATH="$PWD/bench/.faiss-gpu:$PYTHONPATH" \
      || echo "gpu.sh: could not install $wheel; the FAISS step will be skipped"
  else
    echo "gpu.sh: no GPU FAISS installed and no wheel in bench/.wheels; the FAISS step will be skipped"
  fi
fi
LIMIT=540
[ "${1:-}" = "--dry-run" ] && LIMIT=1200  # about 2 minutes on idle cores; a shared machine stretches it
exec timeout "$LIMIT" "$PY" bench/gpu.py "$@"
