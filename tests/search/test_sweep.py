"""The search_sweep stage through the driver: results, kill -9 resume, bad input; report."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from ttc.search import report, sweep
from ttc.train import checkpointing, partitioning
from ttc.verifiers import reward_model
from tests.kill_mid_write import KILL_AT_SECOND_WRITE
from tests.verifiers.conftest import POLICY_CONFIG, write_policy_workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = [
    "--gin_file=configs/arith/quickstart.gin",
    "--gin.register_arith_task.num_train_per_level=10",
    "--gin.register_arith_task.num_eval_per_level=2",
    "--gin.run.stages=[@search_sweep]",
    "--gin.search_sweep.task_name=%TASK",
    # Lookahead runs the whole beam-search path too (k = 0 is beam search).
    "--gin.search_sweep.method_names=['best_of_n', 'lookahead_k1_m2']",
    "--gin.search_sweep.budgets=[4]",
    "--gin.search_sweep.max_problems_per_level=1",
    "--gin.search_sweep.max_solution_tokens=24",
    "--gin.search_sweep.max_step_tokens=8",
    "--gin.search_sweep.rows_per_batch=8",
]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI runs on one device


def _cli(workdir, *flags, check=True):
  return subprocess.run([sys.executable, "-m", "ttc.main", *SWEEP, *flags,
                         f"--gin.WORKDIR='{workdir}'"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture
def workdir(tmp_path):
  """A random tiny policy and a PRM on its backbone, as train and train_prm leave them."""
  path = write_policy_workdir(tmp_path / "work")
  prm = reward_model.RewardModel(POLICY_CONFIG)
  params = partitioning.init_params(prm, jax.random.key(5))
  params["params"]["value_head"]["kernel"] *= 100.0  # spread the scores over (0, 1)
  reward_model.save_config(str(path / "prm"), POLICY_CONFIG)
  mngr = checkpointing.manager(str(path / "prm" / "best"), keep=1)
  checkpointing.save(mngr, 1, {"params": params}, 1)
  mngr.close()
  return path


def _lines_without_wall_time(path):
  """Result lines as a set, minus wall_s (a measurement, never equal across runs)."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return {json.dumps({k: v for k, v in r.items() if k != "wall_s"}, sort_keys=True)
          for r in records}


def test_kill_9_mid_sweep_then_rerun_equals_a_straight_run(workdir, tmp_path):
  straight = tmp_path / "straight"
  os.rename(workdir, straight)
  resumed = tmp_path / "resumed"
  subprocess.run(["cp", "-r", str(straight), str(resumed)], check=True)
  killed = subprocess.Popen([sys.executable, "-c", KILL_AT_SECOND_WRITE, *SWEEP,
                             f"--gin.WORKDIR='{resumed}'"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  result = _cli(straight)  # meanwhile, on the other core
  _, stderr = killed.communicate(timeout=300)
  assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
  cut = (resumed / "search_test.jsonl").read_bytes()
  assert not cut.endswith(b"\n")

  rerun = _cli(resumed)
  assert "dropped 20 bytes" in rerun.stdout
  want = _lines_without_wall_time(straight / "search_test.jsonl")
  got = _lines_without_wall_time(resumed / "search_test.jsonl")
  # 5 problems (one per level) x 2 methods x 1 budget x 1 seed, each exactly once.
  assert len(got) == len((resumed / "search_test.jsonl").read_text().splitlines()) == 10
  assert got == want
  assert "accuracy" in result.stdout and "lookahead_k1_m2" in result.stdout
  records = sweep.read_results(str(resumed / "search_test.jsonl"))
  for r in records:
    assert r["generations"] <= r["budget"] and r["tokens_generated"] > 0
    assert r["prm_tokens"] > r["tokens_generated"]  # the prompt, then each token once
    assert r["correct"] in (True, False) and r["complete"] <= r["rows"]

  # Asking again for what is there computes nothing and compiles nothing.
  again = _cli(resumed)
  assert "compiled" not in again.stdout
  assert (resumed / "search_test.jsonl").read_text().count("\n") == 10
  # Other settings would mix two experiments in one file: one error line, nothing lost.
  changed = _cli(resumed, "--gin.search_sweep.temperature=0.5", check=False)
  assert changed.returncode == 2 and "Traceback" not in changed.stderr
  [line] = _errors(changed)
  assert "written with other settings (temperature 1.0 -> 0.5)" in line
  assert (resumed / "search_test.jsonl").read_text().count("\n") == 10


def _errors(result):
  """The driver's error lines (TF and XLA log their own lines to stderr too)."""
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_unknown_method_is_one_error_line(workdir):
  bad = _cli(workdir, "--gin.search_sweep.method_names=['beam4']", check=False)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert _errors(bad) == [
      "error: search_sweep: unknown search method 'beam4'; use best_of_n, beam_m<M>, "
      "beam_sqrt, lookahead_k<k>[_m<M>] or dvts_m<M>"]


def _record(uid, level, method, budget, correct, seed=0):
  return {"uid": uid, "level": level, "method": method, "budget": budget, "seed": seed,
          "correct": correct, "tokens_generated": 10, "prm_tokens": 12, "wall_s": 0.5}


def test_accuracy_table_averages_seeds_then_problems_and_plot_writes_a_png(tmp_path):
  records = [_record("a", 1, "beam", 4, True), _record("a", 1, "beam", 4, False, seed=1),
             _record("b", 2, "beam", 4, True), _record("a", 1, "beam", 16, True),
             _record("b", 2, "beam", 16, True), _record("a", 1, "best_of_n", 4, False),
             _record("b", 2, "best_of_n", 4, True)]
  table = report.accuracy_table(records)
  assert table["beam"][4][0] == pytest.approx((0.5 + 1.0) / 2)
  assert table["beam"][16] == (1.0, 1.0, 1.0)
  assert report.accuracy_table(records, level=2)["best_of_n"][4][0] == 1.0
  assert "N=16" in report.format_table(table)
  assert "1.200" in report.format_costs(records)  # PRM tokens / generated = 12 / 10
  out = tmp_path / "search.png"
  report.plot(records, str(out))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert np.isfinite(table["beam"][4][1])
