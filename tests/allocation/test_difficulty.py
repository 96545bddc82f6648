"""The estimate_difficulty stage through the driver (counts, bins, kill -9 resume, pinned
settings), without a verifier in process, and the binning on hand-made records."""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ttc.allocation import difficulty
from ttc.data import arith_task
from ttc.errors import UserError
from tests.kill_mid_write import KILL_AT_SECOND_WRITE
from tests.verifiers.conftest import write_policy_workdir, write_reward_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_SAMPLES, MAX_NEW_TOKENS = 4, 24
FLAGS = [
    "--gin_file=configs/arith/quickstart.gin",
    "--gin.register_arith_task.num_train_per_level=10",
    # 2 levels x 5 = 10 questions, whose prompts all fit one length bucket: one program
    # to compile for sampling.
    "--gin.register_arith_task.levels=[(1, 25), (2, 25)]",
    "--gin.register_arith_task.num_eval_per_level=5",
    "--gin.run.stages=[@estimate_difficulty]",
    "--gin.estimate_difficulty.task=%TASK",
    f"--gin.estimate_difficulty.num_samples={NUM_SAMPLES}",
    f"--gin.estimate_difficulty.max_new_tokens={MAX_NEW_TOKENS}",
    "--gin.estimate_difficulty.questions_per_chunk=4",  # chunks of 4, 4 and 2 questions
    "--gin.estimate_difficulty.batch_size=8",
    "--gin.estimate_difficulty.score_batch_size=16",
]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI runs on one device


def _cli(workdir, *flags, check=True):
  return subprocess.run([sys.executable, "-m", "ttc.main", *FLAGS, *flags,
                         f"--gin.WORKDIR='{workdir}'"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300, check=check)


def _errors(result):
  """The driver's error lines (TF and XLA log their own lines to stderr too)."""
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _lines(path):
  """The file's lines as a set of canonical JSON (no field is a timing)."""
  return {json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A random tiny policy and a PRM on its backbone, as train and train_prm leave them."""
  path = write_policy_workdir(tmp_path_factory.mktemp("difficulty") / "base")
  write_reward_model(path / "prm", seed=5)
  return path


@pytest.fixture(scope="module")
def runs(base):
  """(straight run's work dir and output, work dir of a run killed at its 2nd write):
  both run at once, on the two cores."""
  straight, killed_dir = base.parent / "straight", base.parent / "killed"
  shutil.copytree(base, straight)
  shutil.copytree(base, killed_dir)
  killed = subprocess.Popen([sys.executable, "-c", KILL_AT_SECOND_WRITE, *FLAGS,
                             f"--gin.WORKDIR='{killed_dir}'"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  result = _cli(straight)
  _, stderr = killed.communicate(timeout=300)
  assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
  return straight, result, killed_dir


def test_driver_writes_one_consistent_line_per_question_and_equal_bins(runs):
  straight, result, _ = runs
  records = difficulty.read_difficulty(str(straight / "difficulty_test.jsonl"))
  assert len(records) == len({r["uid"] for r in records}) == 10
  assert collections.Counter(r["level"] for r in records) == {1: 5, 2: 5}
  for r in records:
    assert r["samples"] == NUM_SAMPLES and 0 <= r["correct"] <= r["finished"] <= NUM_SAMPLES
    assert r["pass_at_1"] == r["correct"] / NUM_SAMPLES
    assert 0 <= r["mean_final_score"] <= 1
    # A sample that ran out of tokens generated all of them; one that ended, its stop too.
    # Each sample's own score is kept in order, and their mean is the record's.
    assert len(r["final_scores"]) == NUM_SAMPLES
    assert r["mean_final_score"] == pytest.approx(sum(r["final_scores"]) / NUM_SAMPLES,
                                                  abs=1e-4)
    unfinished = NUM_SAMPLES - r["finished"]
    assert unfinished * MAX_NEW_TOKENS + r["finished"] <= r["tokens_generated"]
    assert r["tokens_generated"] <= NUM_SAMPLES * MAX_NEW_TOKENS

  binned = json.loads((straight / "difficulty_test_bins.json").read_text())
  assert binned["num_bins"] == 5 and binned["questions"] == 10
  by_uid = {r["uid"]: r for r in records}
  for kind, statistic in (("oracle", "pass_at_1"), ("predicted", "mean_final_score")):
    assert set(binned[kind]) == set(by_uid)
    assert collections.Counter(binned[kind].values()) == {b: 2 for b in range(1, 6)}
    # Bin 1 is the easiest: every question of a bin ranks at or above the next bin's.
    for b in range(1, 5):
      lower = min(by_uid[u][statistic] for u, x in binned[kind].items() if x == b)
      assert lower >= max(by_uid[u][statistic] for u, x in binned[kind].items() if x == b + 1)
    for row in binned["summary"][kind]:
      members = [by_uid[u] for u, x in binned[kind].items() if x == row["bin"]]
      assert row["questions"] == len(members) == 2
      assert row["mean_final_score"] == pytest.approx(
          sum(m["mean_final_score"] for m in members) / 2)
      assert row["mean_pass_at_1"] == pytest.approx(sum(m["pass_at_1"] for m in members) / 2)
  same = sum(binned["oracle"][u] == binned["predicted"][u] for u in by_uid)
  assert binned["agreement"] == pytest.approx(same / 10)
  assert f"predicted bin = oracle bin for {same / 10:.3f} of the questions" in result.stdout
  assert "questions by task level (rows) and oracle bin (columns)" in result.stdout
  settings = json.loads((straight / "difficulty_test.settings.json").read_text())
  assert settings["num_samples"] == NUM_SAMPLES and settings["prm_dir"] == "prm"
  assert settings["task"] == "arith_sft" and settings["policy_kind"] == "workdir"


def test_kill_9_mid_write_then_rerun_equals_a_straight_run(runs):
  straight, _, resumed = runs
  cut = (resumed / "difficulty_test.jsonl").read_bytes()
  assert not cut.endswith(b"\n") and cut.count(b"\n") == 5  # chunk 0, then 1 line of chunk 1
  rerun = _cli(resumed)
  assert "dropped 20 bytes" in rerun.stdout
  assert (resumed / "difficulty_test.jsonl").read_text().count("\n") == 10
  assert _lines(resumed / "difficulty_test.jsonl") == _lines(straight / "difficulty_test.jsonl")
  assert ((resumed / "difficulty_test_bins.json").read_text() ==
          (straight / "difficulty_test_bins.json").read_text())


def test_rerun_with_another_setting_is_one_error_line_and_changes_nothing(runs, tmp_path):
  straight, _, _ = runs
  workdir = tmp_path / "work"
  shutil.copytree(straight, workdir)
  before = {name: (workdir / name).read_bytes()
            for name in ("difficulty_test.jsonl", "difficulty_test_bins.json")}
  changed = _cli(workdir, "--gin.estimate_difficulty.temperature=0.5", check=False)
  assert changed.returncode == 2 and "Traceback" not in changed.stderr
  [line] = _errors(changed)
  assert "written with other settings (temperature 1.0 -> 0.5)" in line
  assert "estimate_difficulty.output_file" in line
  assert {name: (workdir / name).read_bytes() for name in before} == before


def test_without_a_verifier_no_predicted_bins_and_done_questions_are_not_resampled(
    base, tmp_path, monkeypatch):
  workdir = tmp_path / "work"
  shutil.copytree(base, workdir)
  arith_task.register_arith_task(name="difficulty_no_prm", num_train_per_level=1,
                                 num_eval_per_level=1, levels=[(1, 9), (2, 9), (3, 9)])
  run = lambda: difficulty.estimate_difficulty(
      str(workdir), task="difficulty_no_prm", prm_dir="", num_samples=2, max_new_tokens=16,
      batch_size=4, questions_per_chunk=2, num_bins=3, output_file="no_prm.jsonl")
  result = run()
  assert result["predicted"] is None and result["agreement"] is None
  assert result["summary"]["predicted"] is None
  assert sorted(result["oracle"].values()) == [1, 2, 3]
  records = difficulty.read_difficulty(str(workdir / "no_prm.jsonl"))
  assert len(records) == 3 and all(r["mean_final_score"] is None for r in records)
  assert json.loads((workdir / "no_prm_bins.json").read_text()) == result

  def no_sampling(*args, **kwargs):
    raise AssertionError("a question already in the file was sampled again")

  monkeypatch.setattr(difficulty.generation, "generate_texts", no_sampling)
  assert run() == result


def _records(pass_at_1, scores):
  return [{"uid": f"q{i}", "level": 1 + i % 5, "samples": 10, "correct": round(p * 10),
           "pass_at_1": p, "finished": 10, "mean_final_score": s, "tokens_generated": 100}
          for i, (p, s) in enumerate(zip(pass_at_1, scores))]


def test_bins_rank_pass_at_1_and_scores_easiest_first(tmp_path):
  # q0 is the easiest by pass@1 and the hardest by score; q9 the reverse.
  pass_at_1 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
  records = _records(pass_at_1, [0.05 + p for p in reversed(pass_at_1)])
  binned = difficulty.difficulty_bins(records, num_bins=5)
  assert binned["oracle"] == {f"q{i}": i // 2 + 1 for i in range(10)}
  assert binned["predicted"] == {f"q{i}": 5 - i // 2 for i in range(10)}
  result = difficulty.write_bins(str(tmp_path / "d.jsonl"), records, 5)
  assert json.loads((tmp_path / "d_bins.json").read_text()) == result
  assert result["agreement"] == pytest.approx(0.2)  # only bin 3 (q4, q5) agrees
  assert [row["mean_pass_at_1"] for row in result["summary"]["oracle"]] == pytest.approx(
      [0.85, 0.65, 0.45, 0.25, 0.05])
  assert [row["mean_final_score"] for row in result["summary"]["predicted"]] == pytest.approx(
      [0.9, 0.7, 0.5, 0.3, 0.1])
  assert "predicted bin = oracle bin for 0.200" in difficulty.format_report(records, result)

  unscored = _records(pass_at_1, [None] * 10)
  assert difficulty.difficulty_bins(unscored, num_bins=2)["predicted"] is None
  result = difficulty.write_bins(str(tmp_path / "u.jsonl"), unscored, 2)
  assert result["summary"]["oracle"][0]["mean_final_score"] is None
  assert "predicted bins: none" in difficulty.format_report(unscored, result)
  with pytest.raises(ValueError, match="with and without a verifier"):
    difficulty.difficulty_bins(_records(pass_at_1, [0.5] * 9 + [None]))


def test_read_difficulty_refuses_a_missing_or_cut_file(tmp_path):
  path = tmp_path / "d.jsonl"
  with pytest.raises(UserError, match="not found; run estimate_difficulty first"):
    difficulty.read_difficulty(str(path))
  line = json.dumps(_records([0.5], [0.5])[0])
  path.write_text(line + "\n" + line[:20])
  with pytest.raises(UserError, match="cut mid-line; rerun estimate_difficulty"):
    difficulty.read_difficulty(str(path))
  path.write_text(json.dumps({"uid": "q0"}) + "\n")
  with pytest.raises(UserError, match="lacks"):
    difficulty.read_difficulty(str(path))


@pytest.mark.parametrize("overrides, message", [
    (dict(num_samples=0), "estimate_difficulty.num_samples must be >= 1"),
    (dict(num_bins=0), "estimate_difficulty.num_bins must be >= 1"),
    (dict(temperature=-1.0), "estimate_difficulty.temperature must be >= 0"),
    (dict(num_bins=4), "estimate_difficulty.num_bins=4 needs at least that many questions"),
])
def test_bad_arguments_are_user_errors_before_any_work(tmp_path, overrides, message):
  arith_task.register_arith_task(name="difficulty_tiny", num_train_per_level=1,
                                 num_eval_per_level=1, levels=[(1, 9), (2, 9), (3, 9)])
  with pytest.raises(UserError, match=message):
    difficulty.estimate_difficulty(str(tmp_path), task="difficulty_tiny", **overrides)
  assert not list(tmp_path.iterdir())
