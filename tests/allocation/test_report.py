import dataclasses
import json
import os
import re

import pytest

from ttc import workdir as workdir_lib
from ttc.allocation import compute_optimal, findings, report
from ttc.models.config import ModelConfig
from tests.allocation.synthetic import line as _line, uid as _uid, write as _write

NUM = 50  # questions; oracle bin k (1 = easiest) holds questions 10 (k-1) ... 10 k - 1


def _verdicts(findings):
  return {k: f.verdict for k, f in findings.items()}


# ----------------------------------------------------------------------------- pure findings


def test_verdict_reads_the_interval_against_the_threshold():
  assert findings.verdict(0.1, 0.3) == "yes"
  assert findings.verdict(-0.3, -0.1) == "no"
  assert findings.verdict(-0.1, 0.3) == "inconclusive"
  assert findings.verdict(0.0, 0.0) == "inconclusive"  # touching the threshold decides nothing
  assert findings.verdict(-0.3, -0.1, above=False) == "yes"
  assert findings.verdict(1.2, 3.0, threshold=1.0) == "yes"
  assert findings.verdict(float("nan"), 1.0) == "n/a"


def test_beam_clearly_ahead_at_the_small_budget_reproduces_f1():
  # beam_m4 right on every problem at N=4, best_of_n on 10 of 40; both right on all at 16.
  records = []
  for i in range(40):
    records += [_line(i, "beam_m4", 4, True), _line(i, "best_of_n", 4, i < 10),
                _line(i, "beam_m4", 16, True), _line(i, "best_of_n", 16, True)]
  bins = {_uid(i): 1 + i // 8 for i in range(40)}  # problems 24..39 in the hardest two
  got = {f.key: f for f in findings.beam_vs_best_of_n(records, "s.jsonl", bins)}
  f1 = got["F1"]
  assert f1.verdict == "yes"
  assert f1.interval[0] == pytest.approx(0.75) and f1.interval[1] > 0
  assert "beam_m4 - best_of_n at N=4, 40 problems" in f1.measured
  hard = got["F1 hard bins"]
  assert hard.verdict == "yes" and hard.interval[0] == pytest.approx(1.0)
  assert "16 problems, bins 4-5" in hard.measured
  # At N=16 they tie on every problem: best-of-N has caught up, but not overtaken.
  assert got["F2"].verdict == "inconclusive" and got["F2"].interval == (0.0, 0.0, 0.0)


def test_equal_accuracy_with_different_problems_is_inconclusive():
  # Each method solves the half the other misses: same accuracy, interval around 0.
  records = []
  for i in range(40):
    records += [_line(i, "beam_m4", 4, i % 2 == 0), _line(i, "best_of_n", 4, i % 2 == 1)]
  f1 = findings.beam_vs_best_of_n(records, "s.jsonl")[0]
  assert f1.verdict == "inconclusive"
  mean, low, high = f1.interval
  assert mean == 0.0 and low < 0 < high


def test_step_method_prefers_beam_m4_then_other_beams_by_name():
  assert findings.step_method({"best_of_n", "dvts_m4", "beam_m4", "beam_m2"}) == "beam_m4"
  assert findings.step_method({"best_of_n", "dvts_m4", "beam_sqrt", "beam_m2"}) == "beam_m2"
  assert findings.step_method({"best_of_n", "dvts_m4", "lookahead_k1"}) == "dvts_m4"
  assert findings.step_method({"best_of_n", "lookahead_k1", "strong"}) is None


def test_paired_difference_averages_budgets_per_problem_and_keeps_shared_problems():
  records = [_line(0, "a", 4, True), _line(0, "b", 4, False), _line(0, "a", 16, False),
             _line(0, "b", 16, False), _line(1, "a", 4, True), _line(1, "b", 4, True),
             _line(2, "a", 4, True)]  # problem 2: b never ran it, so it is left out
  interval, n = findings.paired_difference(records, "a", "b", [4])
  assert n == 2 and interval[0] == pytest.approx(0.5)
  interval, n = findings.paired_difference(records, "a", "b", [4, 16])
  assert n == 1 and interval[0] == pytest.approx(0.5)  # problem 1 never ran at 16


def test_prm_vs_orm_and_unpaired_bounds():
  verifiers = {"problems": 30, "accuracy": {
      "PRM-last weighted": {"16": [0.6, 0.5, 0.7], "64": [0.8, 0.75, 0.85]},
      "ORM weighted": {"16": [0.6, 0.5, 0.7], "64": [0.5, 0.45, 0.55]}}}
  f7 = findings.prm_vs_orm(verifiers, "v.json")
  assert f7.verdict == "yes" and "at N=64" in f7.measured
  assert f7.interval == pytest.approx((0.3, 0.3 - 0.05 * 2 ** 0.5, 0.3 + 0.05 * 2 ** 0.5))
  del verifiers["accuracy"]["ORM weighted"]["64"]  # the largest shared N instead
  f7 = findings.prm_vs_orm(verifiers, "v.json")
  assert f7.verdict == "inconclusive" and "at N=16" in f7.measured
  # A file with the paired interval: that one, not the unpaired bounds.
  verifiers["difference_to_orm"] = {"PRM-last weighted": {"16": [0.02, 0.01, 0.03]}}
  f7 = findings.prm_vs_orm(verifiers, "v.json")
  assert f7.interval == pytest.approx((0.02, 0.01, 0.03)) and f7.verdict == "yes"
  assert "paired" in f7.measured and "unpaired" not in f7.measured


def test_flops_matched_reads_bounds_and_missing_values():
  row = lambda r, b, small, kind, large: {"R": r, "X": 5.0, "bin": b, "small": small,
                                          "small_kind": kind, "large": large,
                                          "small_minus_large": small - large}
  allocation = {"num_bins": 3, "flops_matched": {"m": 4.0, "pools": {"p": {"oracle": [
      row(0.2, 1, 0.9, "=", 0.5), row(0.2, 2, 0.7, "=", 0.5), row(0.2, 3, 0.1, "=", 0.2),
      # Past the small model's largest budget: 0.2 is a lower bound, and it trails 0.4.
      row(20.0, 1, 0.9, ">", 0.5), row(20.0, 2, 0.9, ">", 0.5), row(20.0, 3, 0.2, ">", 0.4)]}}}}
  got = {f.key: f for f in findings.flops_matched(allocation, "a.json")}
  assert got["F8 easy p/oracle"].verdict == "yes"
  assert got["F8 easy p/oracle"].interval[0] == pytest.approx(0.3)
  assert got["F8 hard p/oracle"].verdict == "inconclusive"  # might still overtake
  allocation["flops_matched"]["pools"]["p"]["oracle"][0]["small_minus_large"] = float("nan")
  assert findings.flops_matched(allocation, "a.json")[0].verdict == "n/a"
  del allocation["flops_matched"]
  assert findings.flops_matched(allocation, "a.json")[0].verdict == "not run"


def test_the_report_prints_the_flops_matched_table_it_was_given():
  row = {"R": 0.16, "X": 138.4, "bin": 1, "small": 0.917, "small_kind": ">", "large": 0.922,
         "small_minus_large": -0.005}
  text = "\n".join(report._allocation_tables(
      {"pools": {}, "flops_matched": {"m": 8.0, "pools": {"search": {"oracle": [row]}}}}))
  assert "not run" not in text
  assert "search, oracle bins: FLOPs-matched" in text and "8.0x larger" in text
  assert "R=0.16  X= 138.4: >=0.917/0.922" in text
  assert "not run: set compute_optimal.large_policy" in "\n".join(
      report._allocation_tables({"pools": {}}))


def test_cost_rows_count_policy_and_verifier_flops():
  records = [_line(0, "beam_m4", 4, True), _line(1, "beam_m4", 4, False)]
  records[1]["tokens_generated"] = 60  # mean 50 tokens, 44 PRM tokens per problem
  row, = report.cost_rows(records, policy_params=1000, verifier_params=100)
  assert (row["generations"], row["tokens"], row["verifier_tokens"]) == (4, 50, 44)
  assert row["flops"] == 2 * 1000 * 50 + 2 * 100 * 44
  assert report.cost_rows(records, None, 100)[0]["flops"] is None


# ----------------------------------------------------------------------------- the stage


def test_missing_inputs_name_the_stage_that_writes_them(tmp_path, capsys):
  (tmp_path / "search_test.jsonl").write_text('{"uid": "q0"')  # a cut line: unreadable
  got = report.report(str(tmp_path))
  assert {f.verdict for f in got.values()} == {"not run"}
  text = (tmp_path / "report.md").read_text()
  for stage in ("revision_sweep", "compute_optimal", "estimate_difficulty",
                "evaluate_verifiers"):
    assert f"(the stage {stage} writes it)" in text
  assert "search_test.jsonl: unreadable" in text
  assert "![" not in text and not list(tmp_path.glob("*.png"))
  assert "| F1 |" in capsys.readouterr().out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """A whole study of hand-made files with known findings (see each file's comment);
  shared by the tests below (compute_optimal runs once), which only add files to it."""
  tmp_path = tmp_path_factory.mktemp("study")
  search = []
  for i in range(NUM):
    b = i // 10 + 1
    # best_of_n solves bins 1..2 / 1..3 / 1..4 at N = 4 / 16 / 64; beam_m4 does at 4 and
    # 16 what best_of_n needs 16 and 64 for; lookahead_k1 trails beam_m4.
    for budget, bon, beam, look in ((4, 2, 3, 1), (16, 3, 4, 3), (64, 4, 4, 4)):
      search += [_line(i, "best_of_n", budget, b <= bon, majority_correct=b <= bon - 1),
                 _line(i, "beam_m4", budget, b <= beam), _line(i, "lookahead_k1", budget,
                                                               b <= look)]
  _write(tmp_path / "search_test.jsonl", search)
  _write(tmp_path / "difficulty_test.jsonl",
         [{"uid": _uid(i), "level": 1 + i % 5, "samples": 100, "correct": 100 - 2 * i,
           "pass_at_1": (100 - 2 * i) / 100, "finished": 100, "mean_final_score": 1 - i / NUM,
           "final_scores": [1 - (i // 10) / 5] * 4 + [0.5] * 96,
           "tokens_generated": 1000} for i in range(NUM)])
  # Revisions: sequential (C=1, L=4) solves bins 1..4, parallel (C=4, L=1) bins 1..2.
  revisions = []
  for i in range(NUM):
    for c, l, solved in ((1, 4, 4), (2, 2, 3), (4, 1, 2), (1, 2, 2), (2, 1, 1)):
      revisions.append({**_line(i, f"revise_c{c}_l{l}_hier", c * l, i // 10 + 1 <= solved),
                        "rows": c, "rounds": l, "rule": "hier", "chosen": [0, 0]})
  _write(tmp_path / "revisions_test.jsonl", revisions)
  # Verifiers: the PRM clearly ahead of the ORM at N = 64.
  (tmp_path / "verifiers_test.json").write_text(json.dumps({"problems": NUM, "accuracy": {
      "majority": {"64": [0.5, 0.4, 0.6]}, "ORM weighted": {"64": [0.5, 0.4, 0.6]},
      "PRM-last weighted": {"64": [0.8, 0.7, 0.9]}}}))
  # The policy, its PRM and a 16-layer policy ~4x larger (M = 3.98) that solves half
  # of the easy questions and 30% of the hardest bin at pass@1.
  workdir_lib.save_model_config(str(tmp_path), ModelConfig())
  workdir_lib.save_model_config(str(tmp_path / "prm"), ModelConfig())
  workdir_lib.save_model_config(str(tmp_path / "large"), ModelConfig(num_layers=16))
  _write(tmp_path / "large_eval.jsonl",
         [{"uid": _uid(i), "samples": 10, "correct": 5 if i < 20 else 3 if i >= 40 else 0}
          for i in range(NUM)])
  compute_optimal.compute_optimal(str(tmp_path), results_files={"search": "search_test.jsonl"},
                                  num_resamples=30, large_policy="large",
                                  large_eval="large_eval.jsonl")
  return tmp_path


def test_report_of_a_whole_study(study, capsys):
  got = report.report(str(study))
  verdicts = _verdicts(got)
  assert verdicts["F1"] == "yes" and got["F1"].interval[0] == pytest.approx(0.2)
  assert verdicts["F1 hard bins"] == "inconclusive"  # bins 4-5: beam and best_of_n tie at 4
  assert verdicts["F2"] == "inconclusive"  # a tie at 64
  assert verdicts["F3 lookahead_k1"] == "yes" and got["F3 lookahead_k1"].interval[0] == (
      pytest.approx(-0.2))
  assert verdicts["F4"] == "yes" and got["F4"].interval[0] == pytest.approx(0.4)
  assert "revise_c1_l4_hier - revise_c4_l1_hier" in got["F4"].measured
  assert verdicts["F7"] == "yes"
  allocation = json.loads((study / "allocation.json").read_text())
  for kind in ("oracle", "predicted"):
    summary = allocation["pools"]["search"][kind]["summary"]
    assert got[f"F6 search/{kind}"].interval == pytest.approx(tuple(summary))
    assert verdicts[f"F6 search/{kind}"] == findings.verdict(summary[1], summary[2], 1.0)
    # F5 takes compute_optimal's paired interval of the difference.
    assert got[f"F5 search/{kind}"].interval == pytest.approx(
        tuple(allocation["pools"]["search"][kind]["difference"]))
    assert "paired" in got[f"F5 search/{kind}"].measured
  # FLOPs-matched: the small model solves bins 1-2 at X ~ 60 (large: 0.5) and nothing
  # of bin 5 at X ~ 4.4 (large: 0.3).
  assert got["F8 easy search/oracle"].interval[0] == pytest.approx(0.5)
  assert got["F8 hard search/oracle"].interval[0] == pytest.approx(-0.3)
  assert verdicts["F8 easy search/oracle"] == verdicts["F8 hard search/oracle"] == "yes"

  text = (study / "report.md").read_text()
  assert "| # | finding (paper) | measured here (95% interval) | reproduced? | source |" in text
  for key, finding in got.items():
    assert f"| {key} | {finding.claim} |" in text
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert set(links) == {"report_search.png", "report_bins.png",
                        "report_revisions_budget.png", "report_revisions_splits.png",
                        "report_allocation.png"}
  for link in links:
    assert os.path.getsize(study / link) > 1000
  for section in ("## 3. Tables", "Efficiency ratios", "R=0.16", "bin 5", "## 4. Costs"):
    assert section in text
  # beam_m4 at 4: 40 policy tokens (P = 790528) and 44 PRM tokens (P = 790528 - 32·128 + 128).
  p = ModelConfig().num_matmul_params()
  flops = 2 * p * 40 + 2 * (p - 32 * 128 + 128) * 44
  assert f"| beam_m4 | 4 | 4.0 | 40 | 44 | {flops:.3g} |" in text
  assert "| F1 |" in capsys.readouterr().out


def test_report_is_a_gin_stage(tmp_path):
  import gin
  (tmp_path / "v.json").write_text(json.dumps({"accuracy": {
      "PRM-last weighted": {"64": [0.8, 0.7, 0.9]}, "ORM weighted": {"64": [0.5, 0.4, 0.6]}}}))
  gin.clear_config()
  try:
    gin.parse_config(["report.output = 'other.md'", "report.verifiers_file = 'v.json'",
                      "report.search_file = ''"])
    got = report.report(str(tmp_path))
  finally:
    gin.clear_config()
  assert got["F7"].verdict == "yes" and got["F1"].verdict == "not run"
  assert "search: skipped" in (tmp_path / "other.md").read_text()
  assert dataclasses.is_dataclass(got["F1"])
