"""The search_sweep stage through the driver: results, kill -9 resume, bad input; the
oracle verifier; the answer pick; results tables and the report's figure."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import typing

import numpy as np
import pytest

from ttc import workdir as workdir_lib
from ttc.data import arith_task, task as task_lib
from ttc.errors import UserError
from ttc.search import report, results, sweep, tree_search
from tests.kill_mid_write import KILL_AT_SECOND_WRITE
from tests.verifiers.conftest import write_policy_workdir, write_reward_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = [
    "--gin_file=configs/arith/quickstart.gin",
    "--gin.register_arith_task.num_train_per_level=10",
    "--gin.register_arith_task.num_eval_per_level=2",
    "--gin.run.stages=[@search_sweep]",
    "--gin.search_sweep.task=%TASK",
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
  write_reward_model(path / "prm", seed=5)
  return path


@pytest.fixture(scope="module")
def policy_only(tmp_path_factory):
  """A random tiny policy without a PRM (~15 s to write), shared by the sweeps that need
  no PRM; each writes its own results file."""
  return write_policy_workdir(tmp_path_factory.mktemp("policy_only") / "work")


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
  records = results.read_results(str(resumed / "search_test.jsonl"))
  for r in records:
    assert r["generations"] <= r["budget"] and r["tokens_generated"] > 0
    assert r["prm_tokens"] > r["tokens_generated"]  # the prompt, then each token once
    assert r["correct"] in (True, False) and r["complete"] <= r["rows"]
  settings = json.loads((resumed / "search_test.settings.json").read_text())
  assert settings["task"] == "arith_sft" and settings["verifier"] == "prm"
  assert settings["policy_kind"] == "workdir" and settings["policy_step"] == 1

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
      "error: search_sweep: unknown search method 'beam4'; use greedy, best_of_n, "
      "beam_m<M>, beam_sqrt, lookahead_k<k>[_m<M>], dvts_m<M>, particles[_t<t>] or "
      "rebase[_t<t>], any step-by-step one optionally ending in _dedup, beam, lookahead and "
      "dvts in _vote, any step-by-step one with _lik<w> before those endings"]


def _record(uid, level, method, budget, correct, seed=0):
  return {"uid": uid, "level": level, "method": method, "budget": budget, "seed": seed,
          "correct": correct, "tokens_generated": 10, "prm_tokens": 12, "wall_s": 0.5}


def test_accuracy_table_averages_seeds_then_problems_and_plot_writes_a_png(tmp_path):
  records = [_record("a", 1, "beam", 4, True), _record("a", 1, "beam", 4, False, seed=1),
             _record("b", 2, "beam", 4, True), _record("a", 1, "beam", 16, True),
             _record("b", 2, "beam", 16, True), _record("a", 1, "best_of_n", 4, False),
             _record("b", 2, "best_of_n", 4, True)]
  table = results.accuracy_table(records)
  assert table["beam"][4][0] == pytest.approx((0.5 + 1.0) / 2)
  assert table["beam"][16] == (1.0, 1.0, 1.0)
  assert results.accuracy_table(records, level=2)["best_of_n"][4][0] == 1.0
  assert "N=16" in results.format_table(table)
  assert "1.200" in results.format_costs(records)  # PRM tokens / generated = 12 / 10
  assert results.format_diversity(records) == ""  # written before distinct_prefixes
  records[0]["distinct_prefixes"] = [4, 2, 0]
  records[3]["distinct_prefixes"] = [2, 0]  # its problem finished in round 2
  assert results.format_diversity(records).splitlines()[1:] == [
      "beam                4  4.0 / 2.0 / 0.0", "beam               16  2.0 / 0.0 / -"]
  out = tmp_path / "search.png"
  report.plot(records, str(out))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert np.isfinite(table["beam"][4][1])


def test_a_figure_of_many_methods_keeps_its_legend_inside_and_its_lines_apart():
  """25 methods (search_imperfect.gin's sweep): every legend entry is drawn inside the
  figure, and no two methods share both colour and line style."""
  import matplotlib.pyplot as plt
  names = [f"method_{i}_lik8_dedup" for i in range(25)]
  records = [_record(u, level, name, budget, (i + budget + level) % 3 == 0)
             for i, name in enumerate(names) for u, level in (("a", 1), ("b", 2))
             for budget in (4, 16)]
  fig = report.figure(records, title="many")
  try:
    fig.canvas.draw()
    [legend] = fig.legends
    inside = fig.bbox.padded(1)
    for text in legend.get_texts():
      box = text.get_window_extent()
      assert inside.x0 <= box.x0 and box.x1 <= inside.x1, text.get_text()
      assert inside.y0 <= box.y0 and box.y1 <= inside.y1, text.get_text()
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(names)
    for ax in fig.axes:  # legend rows sit below every panel
      assert legend.get_window_extent().y1 <= ax.get_tightbbox().y0 + 1
    looks = [(line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines()]
    assert len(looks) == 25 and len(set(looks)) == 25
  finally:
    plt.close(fig)


def test_report_and_sweep_share_the_results_schema_not_each_other():
  imports = {}
  for module in (report, sweep):
    with open(module.__file__) as f:
      imports[module] = [line for line in f if line.startswith(("import ", "from "))]
    assert any("search import" in line and "results" in line for line in imports[module])
  assert not any("sweep" in line for line in imports[report])
  assert not any("report" in line for line in imports[sweep])


CHAR_CODEC = workdir_lib.char_codec()


def _result(texts, complete, scores):
  """A one-problem `SearchResult` (host arrays) of N solution texts."""
  ids = [CHAR_CODEC.encode(t) for t in texts]
  tokens = np.zeros((1, len(texts), 32), np.int32)
  for n, row in enumerate(ids):
    tokens[0, n, :len(row)] = row
  return tree_search.SearchResult(
      tokens_QxNxW=tokens, lengths_QxN=np.array([[len(r) for r in ids]]),
      scores_QxN=np.array([scores], np.float32), complete_QxN=np.array([complete]),
      rounds=np.int32(1), tokens_generated_Q=np.zeros(1, np.int32),
      prm_tokens_Q=np.zeros(1, np.int32), prm_overflowed=np.bool_(False),
      distinct_QxR=np.full((1, 1), -1, np.int32))


def test_choose_sums_scores_over_the_tasks_equal_answers():
  task = arith_task.ArithTask(name="choose_test")
  problem = task_lib.Problem(uid="p", question="2+5", answer="7", level=1)
  # "7" and "007" are one answer to the task: 0.3 + 0.3 beats 0.5. An unfinished row
  # (no EOS) has no answer, however high its score.
  result = _result(["\\boxed{7}", "\\boxed{8}", "\\boxed{007}", "\\boxed{8}", "\\boxed{9}"],
                   [True, True, True, False, False], [0.3, 0.5, 0.3, 0.9, 0.99])
  chosen = sweep._choose(task, CHAR_CODEC, problem, result, 0)
  # Majority: "7" (twice, as one answer) beats "8" (once finished).
  assert chosen == {"answer": "7", "correct": True, "majority_correct": True, "complete": 3}
  result = _result(["\\boxed{7}", "\\boxed{8}", "\\boxed{8}", "\\boxed{7}", "\\boxed{7}"],
                   [True] * 5, [0.9, 0.1, 0.1, 0.1, 0.1])
  chosen = sweep._choose(task, CHAR_CODEC, problem, result, 0)
  assert chosen["correct"] is True and chosen["majority_correct"] is True
  result = _result(["\\boxed{7}", "\\boxed{8}", "\\boxed{8}"], [True] * 3, [0.9, 0.1, 0.1])
  chosen = sweep._choose(task, CHAR_CODEC, problem, result, 0)
  assert chosen["correct"] is True and chosen["majority_correct"] is False
  result = _result(["\\boxed{7}", "\\boxed{8}"], [True, True], [0.3, 0.5])
  assert sweep._choose(task, CHAR_CODEC, problem, result, 0)["correct"] is False
  result = _result(["\\boxed{7}"], [False], [0.3])
  assert sweep._choose(task, CHAR_CODEC, problem, result, 0) == {
      "answer": None, "correct": False, "majority_correct": False, "complete": 0}


def test_majority_row_and_paired_differences_to_best_of_n():
  records = [dict(_record(u, lv, "best_of_n", 4, c), majority_correct=m)
             for u, lv, c, m in (("a", 1, True, False), ("b", 4, False, True),
                                 ("c", 5, False, False))]
  records += [_record(u, lv, "beam", 4, c) for u, lv, c in (("a", 1, True), ("b", 4, True),
                                                             ("c", 5, True))]
  records.append(_record("d", 5, "beam", 4, True))  # best_of_n never ran d: not paired
  table = results.accuracy_table(records)
  assert table[results.MAJORITY][4][0] == pytest.approx(1 / 3)
  assert table["beam"][4][0] == 1.0
  diff = results.difference_table(records)
  assert set(diff) == {"beam", results.MAJORITY}
  assert diff["beam"][4][0] == pytest.approx(2 / 3)  # over a, b, c only
  assert diff[results.MAJORITY][4][0] == pytest.approx(0.0)
  # Levels 4-5: problems b and c, both right by beam, both wrong by best_of_n.
  assert results.difference_table(records, level=(4, 5))["beam"][4] == (1.0, 1.0, 1.0)
  assert results.accuracy_table(records, level=(4, 5))["beam"][4][0] == 1.0
  # Per problem 0, 1, 1: resamples of a alone (1 in 27) give 0, of b and c alone 1.
  assert "0.667 [0.000, 1.000]" in results.format_table(diff)


class _NoStepChecker(arith_task.ArithTask):

  @property
  def has_step_checker(self):
    return False


def test_oracle_needs_a_task_with_a_step_checker(tmp_path):
  with pytest.raises(UserError, match="no step checker.*verifier = 'prm'"):
    sweep.search_sweep(str(tmp_path), task=_NoStepChecker(name="unchecked"), verifier="oracle")
  assert not list(tmp_path.iterdir())  # refused before anything was loaded or written


class _RecordingTask(arith_task.ArithTask):
  """Notes which problems the oracle checks."""

  checked: typing.ClassVar[set] = set()

  def step_correctness(self, problem, text):
    self.checked.add(problem.uid)
    return super().step_correctness(problem, text)


def test_oracle_sweep_checks_each_problem_by_its_own_prompt(policy_only, capsys):
  """The oracle looks each row's problem up by the prompt the sweep encoded."""
  path = policy_only
  base = arith_task.register_arith_task(name="oracle_sweep", num_train_per_level=1,
                                        num_eval_per_level=1, levels=[(1, 9), (2, 9)])
  task = _RecordingTask(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
  table = sweep.search_sweep(str(path), task=task, verifier="oracle",
                             method_names=("best_of_n", "beam_m2"), budgets=(2,),
                             max_solution_tokens=24, max_step_tokens=8, rows_per_batch=4)
  # Both problems share a batch (2 x 2 rows); each row was checked against its own.
  assert task.checked == {p.uid for p in task.problems("test")} and len(task.checked) == 2
  records = results.read_results(str(path / "search_test.jsonl"))
  assert sorted((r["method"], r["level"]) for r in records) == [
      ("beam_m2", 1), ("beam_m2", 2), ("best_of_n", 1), ("best_of_n", 2)]
  assert set(table) == {"best_of_n", "beam_m2", results.MAJORITY}
  for r in records:  # best-of-N has no selection rounds
    assert (r["distinct_prefixes"] == []) == (r["method"] == "best_of_n"), r
  report.plot_search(str(path))
  printed = capsys.readouterr().out
  assert "difference to best_of_n, levels [1, 2]" in printed and "beam_m2" in printed
  assert (path / "search_test.png").exists()
  settings = json.loads((path / "search_test.settings.json").read_text())
  assert settings["verifier"] == "oracle" and settings["task"] == "oracle_sweep"


def test_constant_verifier_sweep_records_distinct_prefixes(policy_only, capsys):
  """The floor: every step scores 0.5; no PRM is loaded (the work dir has none)."""
  arith_task.register_arith_task(name="constant_sweep", num_train_per_level=1,
                                 num_eval_per_level=1, levels=[(1, 9), (2, 9)])
  sweep.search_sweep(str(policy_only), task="constant_sweep", verifier="constant",
                     method_names=("particles_dedup",), budgets=(2,), max_solution_tokens=24,
                     max_step_tokens=8, rows_per_batch=4, results_file="constant.jsonl")
  records = results.read_results(str(policy_only / "constant.jsonl"))
  assert [r["method"] for r in records] == ["particles_dedup"] * 2
  for r in records:
    counts = r["distinct_prefixes"]
    # The problem's own rounds: all the batch ran, or fewer, the last leaving none.
    assert len(counts) == r["rounds"] or 1 <= len(counts) < r["rounds"] and counts[-1] == 0
    assert all(0 <= c <= r["rows"] for c in counts), r
  assert "distinct prefixes after round" in capsys.readouterr().out
  settings = json.loads((policy_only / "constant.settings.json").read_text())
  assert settings["verifier"] == "constant"


def test_greedy_is_one_temperature_0_solution_at_every_budget_and_seed(policy_only,
                                                                       monkeypatch):
  """greedy samples at 0 whatever the sweep's temperature, and so equals best-of-1 run
  at temperature 0; the other methods of the same sweep sample at its temperature."""
  arith_task.register_arith_task(name="greedy_sweep", num_train_per_level=1,
                                 num_eval_per_level=2, levels=[(1, 9), (2, 9)])
  common = dict(task="greedy_sweep", verifier="constant", max_solution_tokens=24,
                max_step_tokens=8, rows_per_batch=4)
  temperatures = set()
  run_batch = sweep.run_batch

  def recording(programs, config, *args):
    temperatures.add((config.num_rows, float(args[-1].temperature)))
    return run_batch(programs, config, *args)

  monkeypatch.setattr(sweep, "run_batch", recording)
  sweep.search_sweep(str(policy_only), method_names=("greedy", "best_of_n"), budgets=(2, 4),
                     seeds=(0, 1), temperature=0.7, results_file="greedy.jsonl", **common)
  assert temperatures == {(1, 0.0), (2, np.float32(0.7)), (4, np.float32(0.7))}
  sweep.search_sweep(str(policy_only), method_names=("best_of_n",), budgets=(1,),
                     temperature=0.0, results_file="argmax.jsonl", **common)
  argmax = {r["uid"]: r for r in results.read_results(str(policy_only / "argmax.jsonl"))}
  records = [r for r in results.read_results(str(policy_only / "greedy.jsonl"))
             if r["method"] == "greedy"]
  assert len(records) == 4 * 2 * 2 and len(argmax) == 4
  for r in records:
    want = argmax[r["uid"]]
    assert (r["rows"], r["generations"]) == (1, 1), r
    assert (r["answer"], r["tokens_generated"]) == (want["answer"], want["tokens_generated"])


@pytest.mark.parametrize("overrides", [dict(seeds=()), dict(budgets=()), dict(method_names=()),
                                       dict(max_problems_per_level=-1)])
def test_empty_sweeps_are_user_errors(tmp_path, overrides):
  with pytest.raises(UserError, match="search_sweep needs at least one seed"):
    sweep.search_sweep(str(tmp_path), task="arith_sft", **overrides)


def test_a_batch_wall_time_leaves_out_compilation():
  """`search_batch` compiles ahead (`prepare`), then times the run alone: a slow compile
  must not land in the first batch's wall_s (it would inflate every first-batch cost)."""
  import time

  class SlowToCompile(sweep.SearchPrograms):
    def __init__(self):
      super().__init__(None, None, None, None)

    def prepare(self, config, prompts, *args):
      if (config, prompts.shape) not in self._compiled:
        time.sleep(1.0)
        self._compiled[(config, prompts.shape)] = lambda *a: np.zeros(prompts.shape[0])

  result, wall = sweep.search_batch(SlowToCompile(), "config", [[1, 2, 3], [4]], None, None)
  assert result.shape == (2,)
  assert wall < 0.25, wall  # seconds per problem; compiling took 1 s
