"""Tests for ttc/revision/search_revise.py (search, then revise its best solutions) and
the `first` attempts of `chains.revise`."""

import json
import shutil
import types
import zlib

import jax
import numpy as np
import pytest

from ttc import workdir as workdir_lib
from ttc.data import arith_task
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, search_revise, verifier as verifier_lib
from ttc.search import results, sweep as search_sweep_lib
from tests.revision.test_sweep import one_device_context
from tests.verifiers.conftest import write_policy_workdir, write_reward_model

TASK = "search_revise_test"


@pytest.fixture(scope="module")
def task():
  # 4 test problems over 2 levels.
  return arith_task.register_arith_task(name=TASK, num_train_per_level=1, num_eval_per_level=2,
                                        levels=[(1, 9), (2, 9)])


def test_splits_share_what_the_search_left_as_powers_of_two():
  assert search_revise.splits(16, 8) == [(1, 8), (2, 4), (4, 2), (8, 1)]
  assert search_revise.splits(4, 2) == [(1, 2), (2, 1)]
  assert search_revise.splits(5, 2) == [(1, 3)]  # only C that divide B - S
  assert search_revise.splits(4, 4) == []
  assert search_revise.method_name("beam_m4", 2, 4, "hier") == "beam_m4_rev_c2_r4_hier"


def _result(codec, rows_per_problem, scores_QxN, complete_QxN=None):
  """A search result (host arrays) whose row n of problem q holds rows_per_problem[q][n],
  an EOS after each complete row."""
  num_rows = len(rows_per_problem[0])
  complete = (np.ones((len(rows_per_problem), num_rows), bool) if complete_QxN is None
              else np.asarray(complete_QxN))
  ids = [[codec.encode(text) + ([codec.eos_id] if complete[q, n] else [])
          for n, text in enumerate(row)] for q, row in enumerate(rows_per_problem)]
  width = max(len(i) for row in ids for i in row)
  tokens = np.zeros((len(ids), num_rows, width), np.int32)
  lengths = np.zeros((len(ids), num_rows), np.int32)
  for q, row in enumerate(ids):
    for n, i in enumerate(row):
      tokens[q, n, :len(i)], lengths[q, n] = i, len(i)
  return types.SimpleNamespace(
      tokens_QxNxW=tokens, lengths_QxN=lengths, complete_QxN=complete,
      scores_QxN=np.asarray(scores_QxN, np.float32),
      tokens_generated_Q=lengths.sum(1), prm_tokens_Q=lengths.sum(1) + 1,
      prm_overflowed=np.bool_(False))


def test_first_attempts_are_the_best_distinct_solutions_then_repeats(task):
  codec = workdir_lib.char_codec()
  texts = ["1+1=2\n\\boxed{2}", "\\boxed{3}", "1+1=2\n\\boxed{2}", "1+"]
  result = _result(codec, [texts], [[0.9, 0.2, 0.95, 0.5]], [[True, True, True, False]])
  first = search_revise.first_attempts(task, codec, result, 0, num_chains=5)
  # Row 2 (0.95) and row 0 (0.9) are one text: it opens one chain; then 0.5, then 0.2.
  assert [a.text for a in first] == [texts[2], texts[3], texts[1], texts[2], texts[3]]
  assert first[0].answer == "2" and first[0].finished and first[0].num_tokens == len(texts[2]) + 1
  assert first[1].answer is None and not first[1].finished and first[1].num_tokens == 2


def test_revise_opens_each_chain_with_its_first_attempt(task, monkeypatch):
  seen = []

  def next_attempts(policy, task, problems, histories, **kwargs):
    seen.append([[list(h) for h in per_problem] for per_problem in histories])
    return [[chains_lib.Attempt(f"r{len(h)}", True, None, 3) for h in per_problem]
            for per_problem in histories]

  monkeypatch.setattr(chains_lib, "next_attempts", next_attempts)
  problems = task.problems("test")[:2]
  first = [[chains_lib.Attempt(f"s{q}{c}", True, None, 4) for c in range(2)] for q in range(2)]
  out = chains_lib.revise(None, task, problems, num_chains=2, chain_length=2,
                          rng=jax.random.key(0), sampler=None, max_new_tokens=8,
                          rows_per_call=4, first=first)
  assert seen[0] == [[["s00"], ["s01"]], [["s10"], ["s11"]]]
  assert seen[1][1][0] == ["s10", "r1"]
  assert out.texts(1, 0) == ["s10", "r1", "r2"]
  with pytest.raises(ValueError, match=r"first attempts must be \[problems=2\]\[chains=3\]"):
    chains_lib.revise(None, task, problems, num_chains=3, chain_length=1,
                      rng=jax.random.key(0), sampler=None, max_new_tokens=8, rows_per_call=4,
                      first=first)


# ----------------------------------------------------------------------------- the stage


class FakePrograms:
  """Stands in for the compiled search: each row a boxed answer near the problem's,
  drawn from the rng only, as the real program's rows are."""

  calls = []

  def __init__(self, policy, prm, policy_params, prm_params):
    self.codec = workdir_lib.char_codec()

  def prepare(self, *args):
    pass  # nothing to compile

  def __call__(self, config, prompts, lengths, live, rng, sampler):
    FakePrograms.calls.append((config.num_rows, int(live.sum())))
    draw = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist())
    rows = [[f"\\boxed{{{draw.integers(3)}}}" for _ in range(config.num_rows)]
            for _ in range(prompts.shape[0])]
    return _result(self.codec, rows, draw.random((prompts.shape[0], config.num_rows)))


def fake_revise(policy, task, problems, *, num_chains, chain_length, rng, sampler,
                max_new_tokens, rows_per_call, progress="", first=None):
  draw = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist())
  attempts = []
  for q, _ in enumerate(problems):
    per_problem = []
    for c in range(num_chains):
      chain = [first[q][c]]
      for _ in range(chain_length):
        text = f"\\boxed{{{draw.integers(3)}}}"
        chain.append(chains_lib.Attempt(text, True, task.extract_answer(text), len(text) + 1))
      per_problem.append(chain)
    attempts.append(per_problem)
  return chains_lib.Chains(list(problems), attempts)


def fake_scores(model, params, task, codec, chains, batch_size=64):
  return [[[zlib.crc32(f"{p.uid}|{c}|{l}|{a.text}".encode()) / 2**32
            for l, a in enumerate(chain)] for c, chain in enumerate(per_problem)]
          for p, per_problem in zip(chains.problems, chains.attempts)]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A work dir as the study leaves it before this stage: random tiny weights."""
  path = tmp_path_factory.mktemp("search_revise") / "work"
  write_policy_workdir(path)
  write_policy_workdir(path / "revision_model")
  write_reward_model(path / "prm", seed=5)
  write_reward_model(path / "revision_orm", seed=5)
  return path


@pytest.fixture
def workdir(template, tmp_path, monkeypatch):
  monkeypatch.setattr(search_sweep_lib, "SearchPrograms", FakePrograms)
  monkeypatch.setattr(chains_lib, "revise", fake_revise)
  monkeypatch.setattr(verifier_lib, "score_chains", fake_scores)
  monkeypatch.setattr(workdir_lib, "device_context",
                      one_device_context(workdir_lib.device_context))
  FakePrograms.calls = []
  return shutil.copytree(template, tmp_path / "work")


def _lines(path):
  return {json.dumps({k: v for k, v in json.loads(line).items() if k != "wall_s"},
                     sort_keys=True) for line in path.read_text().splitlines()}


def test_lines_cover_every_split_and_resume_after_a_kill(workdir, task, capsys):
  settings = dict(task=TASK, budgets=(4, 8), rows_per_batch=4, max_solution_tokens=16)
  search_revise.search_revise_sweep(str(workdir), **settings)
  # S = 2 then 4 search rows; rows_per_batch // S problems per batch.
  assert FakePrograms.calls == [(2, 2), (2, 2), (4, 1), (4, 1), (4, 1), (4, 1)]
  path = workdir / "search_revise_test.jsonl"
  records = results.read_results(str(path))
  expected = {(search_revise.method_name("beam_m4", c, r, rule), b)
              for b, s in ((4, 2), (8, 4)) for c, r in search_revise.splits(b, s)
              for rule in ("maj", "hier")}
  assert {(r["method"], r["budget"]) for r in records} == expected
  assert len(records) == 4 * len(expected)
  problems = {p.uid: p for p in task.problems("test")}
  for r in records:
    assert r["generations"] == r["budget"] and r["rounds"] == r["budget"] // 2 // r["rows"] + 1
    assert r["correct"] == (r["answer"] is not None
                            and task.is_correct(r["answer"], problems[r["uid"]]))
  # hier also pays for the ORM's reading; majority only for the search's PRM.
  by_key = {(r["uid"], r["method"], r["budget"]): r for r in records}
  for (uid, method, budget), r in by_key.items():
    if r["rule"] == "hier":
      twin = by_key[uid, method[:-len("hier")] + "maj", budget]
      assert r["prm_tokens"] > twin["prm_tokens"]
      assert r["tokens_generated"] == twin["tokens_generated"]
  straight = _lines(path)
  # kill -9 mid-append: lines lost and the last one cut; the rerun restores the same ones.
  kept = path.read_text().splitlines()[:7]
  path.write_text("\n".join(kept) + "\n" + kept[-1][:10])
  search_revise.search_revise_sweep(str(workdir), **settings)
  assert _lines(path) == straight
  with pytest.raises(UserError, match="search_revise_sweep.results_file"):
    search_revise.search_revise_sweep(str(workdir), **{**settings, "search_share": 0.25})
  assert "beam_m4_rev_c1_r2_maj" in capsys.readouterr().out


def test_two_processes_split_the_batches_and_merge_to_one_process_lines(workdir, task,
                                                                        monkeypatch):
  """Processes 0 then 1, simulated one after the other, run disjoint batches; a
  one-process rerun (as after a kill) folds process 1's part in, runs nothing, and the
  file equals a one-process run's."""
  from ttc import multihost
  settings = dict(task=TASK, budgets=(4, 8), rows_per_batch=4, max_solution_tokens=16)
  straight = shutil.copytree(workdir, workdir.parent / "straight")
  search_revise.search_revise_sweep(str(straight), **settings)
  one_process_calls = list(FakePrograms.calls)
  FakePrograms.calls = []
  with monkeypatch.context() as two:
    two.setattr(multihost, "count", lambda: 2)
    two.setattr(multihost, "barrier", lambda name: None)
    for process in (0, 1):
      two.setattr(multihost, "index", lambda process=process: process)
      search_revise.search_revise_sweep(str(workdir), **settings)
  assert sorted(FakePrograms.calls) == sorted(one_process_calls)  # each batch once
  assert list(workdir.glob("*.part-00001-of-00002"))
  FakePrograms.calls = []
  search_revise.search_revise_sweep(str(workdir), **settings)
  assert not FakePrograms.calls and not list(workdir.glob("*.part-*"))
  path = "search_revise_test.jsonl"
  assert _lines(workdir / path) == _lines(straight / path)
  assert len((workdir / path).read_text().splitlines()) == len(_lines(straight / path))


@pytest.mark.parametrize("overrides, message", [
    (dict(search_share=1.0), r"search_share must be in \(0, 1\)"),
    (dict(budgets=(1,)), "budget 1 leaves no revision after a search of 1 generations"),
    (dict(search_method="beam_x"), "unknown search method 'beam_x'"),
    (dict(seeds=()), "needs budgets and seeds"),
])
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    search_revise.search_revise_sweep(str(tmp_path), task="arith_sft", **overrides)
  assert not list(tmp_path.iterdir())


def test_a_missing_revision_model_names_its_stage(tmp_path):
  with pytest.raises(UserError, match="the revision model .* is not there; run its stage"):
    search_revise.search_revise_sweep(str(tmp_path), task="arith_sft")
