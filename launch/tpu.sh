#!/usr/bin/env bash
# Runs ttc.main on every worker of a Cloud TPU VM or pod slice: create or reuse, copy,
# install, run, fetch logs (see launch/tpu.py; --dry-run prints the commands).
#
#   launch/tpu.sh --name my-tpu --zone us-central2-b --accelerator v4-32 [--create] \
#       [--dry-run] -- --gin_file=configs/arith/quickstart.gin \
#       --gin.WORKDIR="'gs://BUCKET/runs/arith'"
exec python3 "$(dirname "$0")/tpu.py" "$@"
