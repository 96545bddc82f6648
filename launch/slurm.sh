#!/usr/bin/env bash
# Runs ttc.main on several GPU nodes through SLURM, one process per GPU (see
# launch/slurm.py; --dry-run prints the sbatch script instead of submitting it).
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 [--partition gpu] [--time 04:00:00] \
#       [--dry-run] -- --gin_file=configs/arith/quickstart.gin \
#       --gin.WORKDIR="'/shared/runs/arith'"
exec python3 "$(dirname "$0")/slurm.py" "$@"
