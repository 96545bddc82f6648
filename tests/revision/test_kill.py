"""A real `kill -9` in the middle of a results write, through the gin driver, for the two
revision stages that sample for long: `make_revision_data` and `revision_sweep`. The
rerun repairs the cut line and must end with the files of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

from tests.kill_mid_write import KILL_AT_SECOND_WRITE
from tests.verifiers.conftest import write_policy_workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_FLAGS = ["--gin_file=configs/arith/quickstart.gin",
              "--gin.register_arith_task.levels=[(1, 9), (2, 9)]",
              "--gin.register_arith_task.num_train_per_level=6",
              "--gin.register_arith_task.num_eval_per_level=2"]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI on one device
TIMINGS = ("generate_s", "score_s", "wall_s")  # measured, so never equal between runs


def _kill_then_rerun(tmp_path, stage_flags, make_workdir):
  """(straight run's dir, killed-then-rerun dir) after running `stage_flags` in both."""
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  for workdir in (straight, resumed):
    make_workdir(workdir)
  flags = [*TASK_FLAGS, *stage_flags]
  killed = subprocess.Popen(
      [sys.executable, "-c", KILL_AT_SECOND_WRITE, *flags, f"--gin.WORKDIR='{resumed}'"],
      cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  subprocess.run([sys.executable, "-m", "ttc.main", *flags, f"--gin.WORKDIR='{straight}'"],
                 cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)  # meanwhile
  _, stderr = killed.communicate(timeout=600)
  assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
  result = subprocess.run(
      [sys.executable, "-m", "ttc.main", *flags, f"--gin.WORKDIR='{resumed}'"], cwd=REPO,
      env=ENV, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "dropped 20 bytes" in result.stdout
  return straight, resumed


def _lines(path, drop=()):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


def test_make_revision_data_after_kill_9_equals_a_straight_run(tmp_path):
  stage = ["--gin.run.stages=[@make_revision_data]", "--gin.make_revision_data.task=%TASK",
           "--gin.make_revision_data.num_samples=4", "--gin.make_revision_data.max_new_tokens=12",
           "--gin.make_revision_data.questions_per_chunk=2",
           "--gin.make_revision_data.batch_size=8"]
  straight, resumed = _kill_then_rerun(tmp_path, stage, write_policy_workdir)
  want = (straight / "revision_data.jsonl").read_bytes()
  assert want.count(b"\n") == 12  # every train question, once
  assert (resumed / "revision_data.jsonl").read_bytes() == want


def test_revision_sweep_after_kill_9_equals_a_straight_run(tmp_path):
  def make(workdir):
    write_policy_workdir(workdir / "revision_model")

  stage = ["--gin.run.stages=[@revision_sweep]", "--gin.revision_sweep.task=%TASK",
           "--gin.revision_sweep.budgets=[2, 4]", "--gin.revision_sweep.max_new_tokens=8",
           "--gin.revision_sweep.rows_per_call=4", "--gin.revision_sweep.orm_dir=''"]
  straight, resumed = _kill_then_rerun(tmp_path, stage, make)
  for name in ("revision_chains_test.jsonl", "revision_chains_test_texts.jsonl"):
    want = _lines(straight / name, TIMINGS)
    assert want and _lines(resumed / name, TIMINGS) == want, name
  # Records the rerun derives for chains written before the kill come after its new
  # ones: the same records, keyed by (uid, method, budget, seed), in another order.
  key = lambda r: (r["uid"], r["method"], r["budget"], r["seed"])
  want = sorted(_lines(straight / "revisions_test.jsonl", TIMINGS), key=key)
  got = sorted(_lines(resumed / "revisions_test.jsonl", TIMINGS), key=key)
  assert want and got == want
