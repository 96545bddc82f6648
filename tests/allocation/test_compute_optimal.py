import json

import numpy as np
import pytest

from ttc.allocation import compute_optimal
from ttc.errors import UserError
from tests.allocation.synthetic import line as _line, uid as _uid, write as _write

NUM = 50  # questions; bin k (1 = easiest) holds questions 10 (k-1) ... 10 k - 1


@pytest.fixture
def workdir(tmp_path):
  """best_of_n solves bins 1..2 / 1..3 / 1..4 at N = 4 / 16 / 64; "strong" solves at
  budget 4 what best_of_n needs 16 for, and at 16 what it needs 64 for: 4x cheaper."""
  search = []
  for i in range(NUM):
    b = i // 10 + 1
    for budget, solved in ((4, 2), (16, 3), (64, 4)):
      search.append(_line(i, "best_of_n", budget, b <= solved, majority_correct=b <= solved - 1))
    search.append(_line(i, "strong", 4, b <= 3))
    search.append(_line(i, "strong", 16, b <= 4))
  _write(tmp_path / "search.jsonl", search)
  # Revisions ran on the first 30 questions only; a cell at 16 solves bins 1..3.
  _write(tmp_path / "revisions.jsonl",
         [_line(i, "revise_c1_l16_maj", 16, i // 10 + 1 <= 3) for i in range(30)])
  # Difficulty: pass@1 falls with i; the verifier's mean score ranks them the same way.
  _write(tmp_path / "difficulty_test.jsonl",
         [{"uid": _uid(i), "level": 1 + i % 5, "samples": 100, "correct": 100 - 2 * i,
           "pass_at_1": (100 - 2 * i) / 100, "finished": 100, "mean_final_score": 1 - i / NUM,
           "final_scores": [1 - (i // 10) / 5] * 4 + [0.5] * 96,  # a probe finds the bin
           "tokens_generated": 1000} for i in range(NUM)])
  return tmp_path


def test_compute_optimal_finds_the_planted_4x_and_writes_its_files(workdir, capsys):
  got = compute_optimal.compute_optimal(
      str(workdir), results_files={"search": "search.jsonl", "revisions": "revisions.jsonl"},
      num_resamples=50)
  search = got["search"]["oracle"]
  assert search.budgets == (4, 16, 64) and search.questions == NUM
  assert search.accuracy["best_of_n"] == pytest.approx([0.4, 0.6, 0.8])
  assert search.accuracy["majority"] == pytest.approx([0.2, 0.4, 0.6])
  assert search.accuracy["compute_optimal"] == pytest.approx([0.6, 0.8, 0.8])
  assert [(r.budget, r.kind, r.ratio) for r in search.ratios] == [
      (4, ">=", 1.0), (16, ">=", 4.0), (64, "=", 4.0)]
  assert search.summary[0] == pytest.approx((1 * 4 * 4) ** (1 / 3))
  # Per bin: bin 3 is where strong@4 pays at N = 4.
  assert search.per_bin["compute_optimal"][2] == pytest.approx([1.0, 1.0, 1.0])
  assert search.per_bin["best_of_n"][2] == pytest.approx([0.0, 1.0, 1.0])
  # On-line: a probe of 4 samples leaves nothing at N = 4, best_of_n / strong at 4 for
  # N = 16 and strong at 16 for N = 64, each bin found from the probe's scores.
  assert search.accuracy["online_probe4"] == pytest.approx([np.nan, 0.6, 0.8], nan_ok=True)
  # One global budget cannot beat this: the compute that helps bin 4 is already bought.
  assert search.accuracy["global_budget"] == pytest.approx([0.6, 0.8, 0.8])
  for kind in ("oracle", "predicted"):
    assert set(got["pooled"][kind].accuracy) == {"compute_optimal", "best_of_n", "majority",
                                                 "global_budget", "online_probe4"}
  # The revisions pool and the pooled one run on the 30 questions revisions ran on; the
  # revisions pool may choose only its own method (best_of_n is its baseline).
  revisions = got["revisions"]["oracle"]
  assert revisions.questions == 30 == got["pooled"]["oracle"].questions
  chosen = {name for at in revisions.choices for half in at for name in half}
  assert chosen == {None, "revise_c1_l16_maj@16"}  # None: no revision at N = 4 or 64
  assert revisions.accuracy["compute_optimal"] == pytest.approx([np.nan, 1.0, np.nan],
                                                                nan_ok=True)
  written = json.loads((workdir / "allocation.json").read_text())
  assert written["pools"]["search"]["oracle"]["accuracy"]["compute_optimal"] == pytest.approx(
      [0.6, 0.8, 0.8])
  assert (workdir / "allocation.png").stat().st_size > 10_000
  out = capsys.readouterr().out
  assert "geometric mean 2.52x" in out and "N=16: >=4.00x" in out
  # Where a curve has no value (the probe takes all of N = 4) the table says "-".
  online = [line.split() for line in out.splitlines() if line.startswith("online_probe4")]
  assert online[0][1:3] == ["-", "0.600"] and "nan" not in out


def test_a_pool_without_shared_questions_or_a_baseline_is_one_error(workdir):
  _write(workdir / "other.jsonl", [_line(99, "best_of_n", 4, True)])
  with pytest.raises(UserError, match="shares no question"):
    compute_optimal.compute_optimal(str(workdir), results_files={"x": "other.jsonl"},
                                    num_resamples=5)
  with pytest.raises(UserError, match="baseline 'nope' has no lines in search.jsonl"):
    compute_optimal.compute_optimal(str(workdir), results_files={"x": "search.jsonl"},
                                    baseline="nope", num_resamples=5)
