"""Tests for ttc/revision/sweep.py and ttc/revision/report.py: the split grid, records
derived from the chains file, kill -9 resume, pinned settings, the tables by hand."""

import collections
import json
import os
import shutil
import zlib

import jax
import numpy as np
import pytest

from ttc import resumable, workdir as workdir_lib
from ttc.data import arith_task
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, report, sweep, verifier as verifier_lib
from ttc.search import results
from tests.verifiers.conftest import write_policy_workdir, write_reward_model

TASK = "revision_sweep_test"
RULES = ("maj", "hier", "flat")


@pytest.fixture(scope="module")
def task():
  # 4 test problems over 2 levels.
  return arith_task.register_arith_task(name=TASK, num_train_per_level=1, num_eval_per_level=2,
                                        levels=[(1, 9), (2, 9)])


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A work dir as train_revision and train_orm leave it: random tiny weights."""
  path = tmp_path_factory.mktemp("revision_sweep") / "work"
  write_policy_workdir(path / "revision_model")
  write_reward_model(path / "revision_orm", seed=5)
  return path


@pytest.fixture
def workdir(template, tmp_path):
  return shutil.copytree(template, tmp_path / "work")


def one_device_context(device_context):
  """`device_context` over the first device unless given devices (a stage passes
  `multihost.local_devices()`, None with one process)."""
  return lambda devices=None: device_context(devices or jax.devices()[:1])


@pytest.fixture
def one_device(monkeypatch):
  """One CPU device: compiles and runs faster here than 8 fake ones sharing the CPU."""
  monkeypatch.setattr(workdir_lib, "device_context",
                      one_device_context(workdir_lib.device_context))


def fake_revise(calls):
  """A stand-in for `chains.revise` whose attempts carry varied answers (a random tiny
  policy writes none), drawn from the rng only, as the real one is."""

  def revise(policy, task, problems, *, num_chains, chain_length, rng, sampler,
             max_new_tokens, rows_per_call, progress=""):
    del policy, sampler, progress
    calls.append((num_chains, chain_length, len(problems), max_new_tokens, rows_per_call))
    draw = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist())
    attempts = []
    for p in problems:
      per_problem = []
      for _ in range(num_chains):
        chain = []
        for _ in range(chain_length):
          kind = draw.integers(5)
          if kind == 4:  # ran out of tokens
            chain.append(chains_lib.Attempt("1+", False, None, max_new_tokens))
            continue
          text = "no answer" if kind == 3 else f"\\boxed{{{int(p.answer) + kind}}}"
          chain.append(chains_lib.Attempt(text, True, task.extract_answer(text),
                                          len(text) + 1))
        per_problem.append(chain)
      attempts.append(per_problem)
    return chains_lib.Chains(list(problems), attempts)

  return revise


def fake_scores(model, params, task, codec, chains, batch_size=64):
  """Scores in [0, 1] fixed by each attempt's problem, place and text."""
  del model, params, task, codec, batch_size
  return [[[zlib.crc32(f"{p.uid}|{c}|{l}|{a.text}".encode()) / 2**32
            for l, a in enumerate(chain)] for c, chain in enumerate(per_problem)]
          for p, per_problem in zip(chains.problems, chains.attempts)]


@pytest.fixture
def fakes(monkeypatch):
  """Fake sampling and ORM scoring; returns the list of revise calls."""
  calls = []
  monkeypatch.setattr(chains_lib, "revise", fake_revise(calls))
  monkeypatch.setattr(verifier_lib, "score_chains", fake_scores)
  return calls


SMALL = dict(budgets=(2, 4), rows_per_call=4, max_new_tokens=8)


def _lines(path, drop=()):
  """A JSONL file's lines as a set, minus measured fields (never equal across runs)."""
  return {json.dumps({k: v for k, v in json.loads(line).items() if k not in drop},
                     sort_keys=True) for line in path.read_text().splitlines()}


def _assert_same_files(got_dir, want_dir):
  """The sweep's three files hold the same lines, each once, timing fields aside."""
  for name, measured in (("revision_chains_test.jsonl", ("generate_s", "score_s")),
                         ("revision_chains_test_texts.jsonl", ()),
                         ("revisions_test.jsonl", ("wall_s",))):
    got = _lines(got_dir / name, measured)
    assert got == _lines(want_dir / name, measured)
    assert len(got) == len((got_dir / name).read_text().splitlines())  # each once


# ----------------------------------------------------------------------------- the grid


def test_splits_are_every_power_of_two_pair():
  assert sweep.splits(1) == [(1, 1)]
  assert sweep.splits(8) == [(1, 8), (2, 4), (4, 2), (8, 1)]
  assert sweep.chain_counts(4) == [1, 2, 4]
  assert sweep.method_name(2, 4, "hier") == "revise_c2_l4_hier"


@pytest.mark.parametrize("overrides, message", [
    (dict(budgets=(3, 4)), r"budgets must be powers of two .*got \[3\]"),
    (dict(budgets=()), "at least one budget"),
    (dict(seeds=()), "at least one budget and one seed"),
    (dict(seeds=(0.5,)), "seeds must be integers"),
    (dict(rows_per_call=0), "rows_per_call must be an integer >= 1"),
    (dict(max_problems_per_level=-1), "max_problems_per_level"),
])
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    sweep.revision_sweep(str(tmp_path), task="arith_sft", **overrides)
  assert not list(tmp_path.iterdir())  # refused before anything was loaded or written


def test_a_missing_revision_model_names_its_stage(tmp_path):
  with pytest.raises(UserError, match="revision_model not found: run train_revision first"):
    sweep.revision_sweep(str(tmp_path), task="arith_sft")
  assert not list(tmp_path.iterdir())


def test_the_stages_are_gin_configurables():
  import gin

  from ttc import main
  main._import_configurables()
  try:
    gin.parse_config("revision_sweep.budgets = (2, 4)\nplot_revisions.results_file = 'r.jsonl'")
  finally:
    gin.clear_config()


# ----------------------------------------------------------------------------- the stage


def _majority(ids):
  flat = [(c, l, i) for c, row in enumerate(ids) for l, i in enumerate(row)]
  counts = collections.Counter(i for _, _, i in flat if i != -1)
  if not counts:
    return 0, 0
  return next((c, l) for c, l, i in flat if i != -1 and counts[i] == max(counts.values()))


def _weighted(pairs):
  """The index of the first pair (answer id, weight) of the answer whose weights sum
  highest; 0 without answers."""
  sums = collections.defaultdict(float)
  for i, w in pairs:
    if i != -1:
      sums[i] += w
  if not sums:
    return 0
  return next(n for n, (i, _) in enumerate(pairs) if i != -1 and sums[i] == max(sums.values()))


def _flat(ids, scores):
  flat = [(i, s) for row_i, row_s in zip(ids, scores) for i, s in zip(row_i, row_s)]
  return divmod(_weighted(flat), len(ids[0]))


def _hierarchical(ids, scores):
  winners = []  # per chain: (answer id, position, weight)
  for row_i, row_s in zip(ids, scores):
    answer = row_i[_weighted(list(zip(row_i, row_s)))]
    at = [l for l, i in enumerate(row_i) if i == answer and i != -1]
    position = max(at, key=lambda l: (row_s[l], -l)) if at else 0
    winners.append((answer, position, row_s[position]))
  chain = _weighted([(a, w) for a, _, w in winners])
  return chain, winners[chain][1]


def test_records_are_the_rules_applied_to_prefixes_of_the_chains_file(workdir, task, fakes,
                                                                      capsys):
  tables = sweep.revision_sweep(str(workdir), task=TASK, **SMALL)
  problems = task.problems("test")
  # C = 1, 2, 4 chains of 4, 2, 1 attempts; max(1, 4 // C) problems per call.
  assert sorted(fakes) == sorted([(1, 4, 4, 8, 4)] + [(2, 2, 2, 8, 4)] * 2 +
                                 [(4, 1, 1, 8, 4)] * 4)
  lines = report.read_chains(str(workdir / "revision_chains_test.jsonl"))
  assert sorted((line["chains"], line["length"]) for line in lines) == sorted(
      [(1, 4), (2, 2), (4, 1)] * 4)
  records = results.read_results(str(workdir / "revisions_test.jsonl"))
  expected = {sweep.method_name(c, l, rule) for n in (2, 4) for c, l in sweep.splits(n)
              for rule in RULES}
  assert {r["method"] for r in records} == expected and len(expected) == 15
  assert len(records) == 15 * len(problems)
  assert all(set(results.FIELDS) <= set(r) and r["method"].startswith("revise")
             for r in records)

  # One problem by hand, from its chains line and its texts.
  # Problem 3's rules disagree on several splits (majority, hierarchical, flat).
  uid = problems[3].uid
  texts = {(t["uid"], t["chains"]): t["texts"] for t in map(
      json.loads, (workdir / "revision_chains_test_texts.jsonl").read_text().splitlines())}
  mine = {(r["method"], r["budget"]): r for r in records if r["uid"] == uid}
  codec = workdir_lib.char_codec()
  for line in (line for line in lines if line["uid"] == uid):
    c_count = line["chains"]
    line_texts = texts[uid, c_count]
    assert line["ids"] == np.asarray(task.answer_ids(
        [a for chain in line["answers"] for a in chain])).reshape(c_count, -1).tolist()
    assert line["scores"] == fake_scores(None, None, None, None, chains_lib.Chains(
        [problems[3]], [[[chains_lib.Attempt(t, True, None, 0) for t in chain]
                         for chain in line_texts]]))[0]
    for n in (2, 4):
      if c_count > n:
        continue
      length = n // c_count
      ids = [row[:length] for row in line["ids"]]
      scores = [row[:length] for row in line["scores"]]
      for rule, chosen in (("maj", _majority(ids)), ("flat", _flat(ids, scores)),
                           ("hier", _hierarchical(ids, scores))):
        r = mine.pop((sweep.method_name(c_count, length, rule), n))
        c, l = chosen
        assert tuple(r["chosen"]) == chosen, (rule, c_count, length)
        assert r["answer"] == line["answers"][c][l]
        assert r["correct"] == (r["answer"] is not None and task.is_correct(r["answer"],
                                                                            problems[3]))
        assert (r["rows"], r["rounds"], r["generations"]) == (c_count, length, n)
        assert r["tokens_generated"] == sum(sum(row[:length]) for row in line["tokens"])
        assert r["complete"] == sum(sum(row[:length]) for row in line["finished"])
        orm = sum(len(verifier_lib.attempt_tokens(task, codec, problems[3], chain, p)[0])
                  for chain in line_texts for p in range(length))
        assert r["prm_tokens"] == (0 if rule == "maj" else orm) and orm > r["tokens_generated"]
        assert r["prm_overflowed"] is False and r["wall_s"] >= 0
  assert not mine  # every record of the problem was checked

  out = capsys.readouterr().out
  assert "pass@1 by position" in out and "sequential_hier" in out and "1:4" in out
  stem = workdir / "revisions_test"
  for suffix in ("_positions.png", "_budget.png", "_splits.png"):
    assert (workdir / f"revisions_test{suffix}").read_bytes()[:4] == b"\x89PNG"
  saved = json.loads((workdir / "revisions_test_tables.json").read_text())
  assert set(saved["pass_at_1_by_position"]) == {"1", "2", "3", "4"}
  assert set(saved["splits"]["hier"]) == {"all", "1", "2"}
  assert set(saved["splits"]["hier"]["all"]["4"]) == {"c1_l4", "c2_l2", "c4_l1"}
  assert saved["budget"]["parallel_maj"]["4"] == list(tables["budget"]["parallel_maj"][4])
  assert stem.with_suffix(".settings.json").exists()


class _Killed(BaseException):
  """Stands for kill -9: nothing below catches it."""


@pytest.mark.parametrize("kill_at", [3, 5])  # the first records write; a chains write
def test_a_cut_write_then_rerun_equals_a_straight_run(template, tmp_path, task, fakes,
                                                      monkeypatch, kill_at):
  straight = shutil.copytree(template, tmp_path / "straight")
  sweep.revision_sweep(str(straight), task=TASK, **SMALL)
  resumed = shutil.copytree(template, tmp_path / "resumed")
  real, writes = resumable.append_lines, []

  def write_then_die(path, records):
    writes.append(path)
    if len(writes) < kill_at:
      return real(path, records)
    data = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "a") as f:
      f.write(data[:data.index("\n") + 1 + 20])  # one whole line, then 20 bytes
    raise _Killed

  monkeypatch.setattr(resumable, "append_lines", write_then_die)
  with pytest.raises(_Killed):
    sweep.revision_sweep(str(resumed), task=TASK, **SMALL)
  cut = os.path.basename(writes[-1])
  assert cut == ("revisions_test.jsonl" if kill_at == 3 else "revision_chains_test.jsonl")
  assert not (resumed / cut).read_bytes().endswith(b"\n")
  monkeypatch.setattr(resumable, "append_lines", real)
  sweep.revision_sweep(str(resumed), task=TASK, **SMALL)
  _assert_same_files(resumed, straight)


def test_other_settings_are_refused_and_new_budgets_need_no_sampling(workdir, task, fakes):
  sweep.revision_sweep(str(workdir), task=TASK, **{**SMALL, "budgets": (4,)})
  before = (workdir / "revisions_test.jsonl").read_text()
  with pytest.raises(UserError, match=r"written with other settings \(temperature 1.0 -> 0.5\)"):
    sweep.revision_sweep(str(workdir), task=TASK, **{**SMALL, "budgets": (4,)},
                         temperature=0.5)
  with pytest.raises(UserError, match=r"max_budget 4 -> 8"):
    sweep.revision_sweep(str(workdir), task=TASK, **{**SMALL, "budgets": (8,)})
  assert (workdir / "revisions_test.jsonl").read_text() == before
  # Budgets 1 and 2 are prefixes of the chains already sampled.
  calls = len(fakes)
  sweep.revision_sweep(str(workdir), task=TASK, **{**SMALL, "budgets": (1, 2, 4)})
  assert len(fakes) == calls
  records = results.read_results(str(workdir / "revisions_test.jsonl"))
  assert (workdir / "revisions_test.jsonl").read_text().startswith(before)
  assert collections.Counter(r["budget"] for r in records) == {1: 12, 2: 24, 4: 36}


def test_without_an_orm_only_majority(workdir, task, fakes):
  sweep.revision_sweep(str(workdir), task=TASK, orm_dir="", texts_file="", **SMALL)
  records = results.read_results(str(workdir / "revisions_test.jsonl"))
  assert {r["rule"] for r in records} == {"maj"} and len(records) == 5 * 4
  lines = report.read_chains(str(workdir / "revision_chains_test.jsonl"))
  assert all(line["scores"] is None and line["orm_tokens"] is None for line in lines)
  assert not (workdir / "revision_chains_test_texts.jsonl").exists()
  assert all(r["prm_tokens"] == 0 for r in records)


def test_the_real_model_and_orm_end_to_end(workdir, task, one_device):
  """Random weights write few answers; this checks the plumbing, not the rules."""
  sweep.revision_sweep(str(workdir), task=TASK, budgets=(1, 2), max_problems_per_level=1,
                       max_new_tokens=6, rows_per_call=4)
  lines = report.read_chains(str(workdir / "revision_chains_test.jsonl"))
  texts = {(t["uid"], t["chains"]): t["texts"] for t in map(
      json.loads, (workdir / "revision_chains_test_texts.jsonl").read_text().splitlines())}
  assert len(lines) == 2 * 2  # 2 problems x C in (1, 2)
  codec = workdir_lib.char_codec()
  problems = {p.uid: p for p in task.problems("test")}
  for line in lines:
    flat = [s for chain in line["scores"] for s in chain]
    assert all(0 < s < 1 for s in flat)
    for c, chain in enumerate(texts[line["uid"], line["chains"]]):
      for p in range(line["length"]):
        ids, _ = verifier_lib.attempt_tokens(task, codec, problems[line["uid"]], chain, p)
        assert line["orm_tokens"][c][p] == len(ids) > line["tokens"][c][p] >= 1
  records = results.read_results(str(workdir / "revisions_test.jsonl"))
  assert len(records) == 2 * 3 * 3  # 2 problems x splits (1x1, 1x2, 2x1) x 3 rules
  settings = json.loads((workdir / "revisions_test.settings.json").read_text())
  assert settings["policy"] == "revision_model" and settings["orm_dir"] == "revision_orm"
  assert settings["task"] == TASK and settings["max_budget"] == 2


# ----------------------------------------------------------------------------- the tables


def _line(uid, correct, seed=0):
  c, length = len(correct), len(correct[0])
  return {"uid": uid, "level": 1, "seed": seed, "chains": c, "length": length,
          "correct": correct}


T, F = True, False
# Problem a: chains of C = 1, 2, 4 with max budget 4; problem b: right only at the end.
HAND = [_line("a", [[T, F, T, T]]), _line("a", [[F, T], [T, T]]),
        _line("a", [[F], [F], [T], [T]]),
        _line("b", [[F, F, F, T]]), _line("b", [[F, F], [F, F]]),
        _line("b", [[F], [F], [F], [F]])]


def test_pass_at_1_by_position_pools_every_chain_reaching_it():
  table = report.pass_at_1_by_position(HAND)
  # position 1: a 4 of 7 chains, b 0 of 7; 2: a 2 of 3, b 0; 3: a 1, b 0; 4: a 1, b 1.
  means = {p: iv[0] for p, iv in table.items()}
  assert means == pytest.approx({1: 2 / 7, 2: 1 / 3, 3: 0.5, 4: 1.0})
  assert report.chains_by_position(HAND) == {1: 7, 2: 3, 3: 1, 4: 1}
  assert all(low <= mean <= high for mean, low, high in table.values())


def test_flip_shares_count_transitions_within_chains():
  flips = report.flip_shares(HAND)
  down, up = flips["correct_to_incorrect"], flips["incorrect_to_correct"]
  # correct at 1 (a: the C=1 chain and chain 1 of C=2), of which the C=1 chain is
  # wrong at 2; none correct at 2; at 3 a's C=1 chain, right again at 4.
  assert {l: iv[0] for l, iv in down.items()} == pytest.approx({"all": 1 / 3, 1: 0.5, 3: 0.0})
  # incorrect at 1: a 1 (right at 2), b 3 (wrong); at 2: a 1 (right), b 1; at 3: b 1 (right).
  assert {l: iv[0] for l, iv in up.items()} == pytest.approx(
      {"all": 3 / 7, 1: 0.25, 2: 0.5, 3: 1.0})
  assert all(low <= share <= high for share, low, high in down.values())


def test_ratio_interval_resamples_problems():
  share, low, high = report.ratio_interval([1, 0, 3], [2, 0, 4])
  assert share == pytest.approx(4 / 6) and low <= share <= high
  with pytest.raises(ValueError):
    report.ratio_interval([0], [0])


def _record(uid, level, c, l, rule, correct):
  return {"uid": uid, "level": level, "method": sweep.method_name(c, l, rule), "budget": c * l,
          "seed": 0, "rows": c, "rounds": l, "rule": rule, "correct": correct}


def test_budget_and_split_tables_pick_their_methods():
  records = [_record(u, lv, c, l, "maj", ok) for u, lv, cells in [
      ("a", 1, {(1, 1): T, (1, 2): T, (2, 1): F}), ("b", 2, {(1, 1): F, (1, 2): T, (2, 1): T})]
      for (c, l), ok in cells.items()]
  table = report.budget_table(records)
  assert set(table) == {"sequential_maj", "parallel_maj"}
  assert {n: iv[0] for n, iv in table["sequential_maj"].items()} == {1: 0.5, 2: 1.0}
  assert {n: iv[0] for n, iv in table["parallel_maj"].items()} == {1: 0.5, 2: 0.5}
  splits = report.split_table(records, "maj", level=1)
  assert {n: {k: iv[0] for k, iv in cells.items()} for n, cells in splits.items()} == {
      1: {(1, 1): 1.0}, 2: {(1, 2): 1.0, (2, 1): 0.0}}
  assert list(report.split_table(records, "maj")[2]) == [(1, 2), (2, 1)]


def test_processes_split_the_batches_and_the_merged_files_equal_one_process(
    template, tmp_path, task, fakes, monkeypatch):
  """Two processes simulated one after the other, then a one-process rerun (as after a
  kill): each process samples only its own batches, the rerun folds process 1's parts
  in and samples nothing, and the texts, chains and records equal a one-process run's.
  The real collectives are exercised by tests/test_multihost.py on the search sweep."""
  from ttc import multihost
  straight = shutil.copytree(template, tmp_path / "straight")
  sweep.revision_sweep(str(straight), task=TASK, **SMALL)
  one_process_calls = len(fakes)
  split = shutil.copytree(template, tmp_path / "split")
  per_process = []
  with monkeypatch.context() as two:
    two.setattr(multihost, "count", lambda: 2)
    two.setattr(multihost, "barrier", lambda name: None)
    for process in (0, 1):
      two.setattr(multihost, "index", lambda process=process: process)
      before = len(fakes)
      sweep.revision_sweep(str(split), task=TASK, **SMALL)
      per_process.append(len(fakes) - before)
  assert per_process[0] > 0 and per_process[1] > 0
  assert sum(per_process) == one_process_calls  # no batch sampled twice
  assert list(split.glob("*.part-00001-of-00002"))  # process 1's, never merged by itself
  before = len(fakes)
  sweep.revision_sweep(str(split), task=TASK, **SMALL)
  assert len(fakes) == before and not list(split.glob("*.part-*"))
  _assert_same_files(split, straight)
