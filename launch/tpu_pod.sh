#!/usr/bin/env bash
# Runs ttc.main on every worker of an existing Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_pod.sh TPU_NAME ZONE --gin_file=configs/arith/quickstart.gin \
#       --gin.WORKDIR="'gs://BUCKET/runs/arith'" --gin.make_mesh.fsdp=-1 --gin.make_mesh.data=1
#
# Every worker gets the same command; `run.distributed=True` makes each call
# jax.distributed.initialize() so the mesh spans all hosts.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE --gin_file=... [--gin.NAME=VALUE ...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 2
jax_version=$(sed -n 's/^jax\[cpu\]==//p' requirements.txt)
args=$(printf "%q " "$@")
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all . "$tpu":~/ttc
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e; cd ~/ttc
  python3 -m pip install -q -r requirements.txt 'jax[tpu]==${jax_version}'
  python3 -m ttc.main ${args} --gin.run.distributed=True"
