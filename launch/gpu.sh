#!/usr/bin/env bash
# Runs ttc.main on one machine with NVIDIA GPUs (all local GPUs form the mesh).
#
#   launch/gpu.sh --gin_file=configs/arith/quickstart.gin --gin.WORKDIR="'/data/runs/arith'"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv-gpu ]; then
  python3 -m venv .venv-gpu
  jax_version=$(sed -n 's/^jax\[cpu\]==//p' requirements.txt)
  .venv-gpu/bin/pip install -q -r requirements.txt "jax[cuda12]==${jax_version}"
fi
exec .venv-gpu/bin/python -m ttc.main "$@"
