"""Tests for ttc/revision/data.py: revision training data, its file, its seqio task.

Most tests replace text generation by `FakeSolver`, whose samples are right, wrong or
invalid by construction, so every record can be checked by hand. One test samples a
real (random-weights) tiny policy to check the plumbing around generation.
"""

import collections
import json
import shutil

import jax
import numpy as np
import pytest
import seqio

from tests.verifiers.conftest import write_policy_workdir
from ttc import workdir as workdir_lib
from ttc.data import arith, arith_task, vocab
from ttc.data import task as task_lib
from ttc.decoding import generation
from ttc.errors import UserError
from ttc.revision import context, data
from ttc.train import data as train_data
from ttc.verifiers import labeling

LEVELS = [(1, 9), (2, 9)]
TASK = "test_revision_arith"
CHAR_VOCAB = vocab.CharVocabulary()


@pytest.fixture(scope="module")
def task():
  return arith_task.register_arith_task(TASK, num_train_per_level=50, num_eval_per_level=5,
                                        levels=LEVELS)


# ----------------------------------------------------------------------------- choose_context

CORRECT = "1+2=3|3\n\\boxed{3}"
INCORRECT = [
    "0+0=1|1\n\\boxed{1}",  # distance 5: every digit differs
    "1+2=4|4\n\\boxed{4}",  # distance 3: the three 4s
    "1+2=3|3\n\\boxed{4}",  # distance 1: the boxed digit; the first of the closest
    "9*9=81|81\n\\boxed{81}",
    "1+2=3|3\n\\boxed{5}",  # distance 1 too, but later
]


def test_choose_context_puts_the_closest_by_edit_distance_last():
  rng = np.random.default_rng(0)
  for k in range(1, 6):
    chosen = data.choose_context(CORRECT, INCORRECT, k, rng)
    assert len(chosen) == k and chosen[-1] == INCORRECT[2]
    # The others: distinct draws from the rest.
    rest = [t for i, t in enumerate(INCORRECT) if i != 2]
    assert len(set(chosen[:-1])) == k - 1 and set(chosen[:-1]) <= set(rest)
  assert data.choose_context(CORRECT, INCORRECT, 0, rng) == []


def test_choose_context_caps_k_at_the_incorrect_attempts():
  rng = np.random.default_rng(0)
  chosen = data.choose_context(CORRECT, INCORRECT[:3], 4, rng)
  assert len(chosen) == 3 and chosen[-1] == INCORRECT[2]
  assert sorted(chosen) == sorted(INCORRECT[:3])
  assert data.choose_context(CORRECT, [], 4, rng) == []
  with pytest.raises(ValueError, match="k must be >= 0"):
    data.choose_context(CORRECT, INCORRECT, -1, rng)


def test_choose_context_is_deterministic_and_draws_the_rest_at_random():
  def draws(seed):
    rng = np.random.default_rng(seed)
    return [tuple(data.choose_context(CORRECT, INCORRECT, 3, rng)) for _ in range(5)]

  assert draws(1) == draws(1)
  assert draws(1) != draws(2)
  # Every other incorrect attempt comes first for some seed: no fixed order.
  firsts = {data.choose_context(CORRECT, INCORRECT, 2, np.random.default_rng(s))[0]
            for s in range(40)}
  assert firsts == {INCORRECT[i] for i in (0, 1, 3, 4)}


# ----------------------------------------------------------------------------- a fake policy


def _wrong(answer: int) -> str:
  return f"\\boxed{{{answer + 1}}}"


class FakeSolver:
  """Stands in for `generation.generate_texts` with outcomes known by construction.

  Sample j of a question (rows permuted by the rng, so results depend on it, as with a
  real sampler) is kind j % 5: 0 the reference solution; 1 a wrong first step "0+0=j"
  and a wrong answer (distinct per j); 2 the reference steps with a wrong answer (the
  closest wrong one by edit distance); 3 the reference solution that never stops and
  4 one without \\boxed (both dropped).
  """

  def __init__(self):
    self.calls = []  # (prompts, num_samples, max_new_tokens, prompts_per_call) per call

  def __call__(self, policy, prompts, rng, sampler, *, num_samples, max_new_tokens,
               prompts_per_call, **unused):
    del policy, sampler, unused
    self.calls.append((len(prompts), num_samples, max_new_tokens, prompts_per_call))
    texts, finished = [], []
    for i, prompt in enumerate(prompts):
      assert prompt[0] == vocab.DECODER_START_ID
      question = CHAR_VOCAB.decode(prompt[1:])
      assert question.endswith("\n") and question.count("\n") == 1  # the plain prompt
      order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, i), num_samples))
      for j in order:
        text, stops = self.sample(question.strip(), int(j))
        texts.append(text)
        finished.append(stops)
    return generation.Generations(texts, finished, [len(t) for t in texts])

  @staticmethod
  def sample(question: str, j: int) -> tuple[str, bool]:
    steps, answer = arith.solve(arith.parse(question))
    return [(arith.format_solution(steps, answer), True),
            (f"0+0={j}|{j}\n" + _wrong(answer), True),
            ("\n".join([*steps, _wrong(answer)]), True),
            (arith.format_solution(steps, answer), False),
            ("\n".join(steps), True)][j % 5]


def _fake_policy(step: int):
  def load(source, devices, workdir=""):
    del devices, workdir
    return workdir_lib.Policy(None, None, workdir_lib.char_codec(), source, "workdir", step)
  return load


@pytest.fixture
def fake(monkeypatch):
  solver = FakeSolver()
  monkeypatch.setattr(generation, "generate_texts", solver)
  # A char-vocabulary policy at training step 7 whose sampling is the fake's.
  monkeypatch.setattr(workdir_lib, "load_policy", _fake_policy(7))
  return solver


def _fake_run(path, **overrides):
  kwargs = {"task": TASK, "split": "train", "num_questions": 10, "num_samples": 10,
            "max_new_tokens": 40, "batch_size": 20, "questions_per_chunk": 4}
  kwargs.update(overrides)
  return data.make_revision_data(str(path), **kwargs)


# ----------------------------------------------------------------------------- the stage


def test_records_pair_each_correct_solution_with_hand_checkable_contexts(tmp_path, task, fake):
  summary = _fake_run(tmp_path)
  problems = task.select_in_turns("train", 10)
  assert {p.level for p in problems} == {1, 2}
  records = data.read_revision_data(str(tmp_path / "revision_data.jsonl"))
  assert [r["uid"] for r in records] == [p.uid for p in problems]
  ks = []
  for problem, record in zip(problems, records):
    assert record["prompt"] == task.prompt(problem) and record["answer"] == problem.answer
    assert record["level"] == problem.level and record["question"] == problem.question
    # Of 10 samples, kinds 0-4 twice each: 2 correct (kind 0), 4 incorrect (1, 2), 4 dropped.
    assert (record["num_sampled"], record["num_correct"], record["num_incorrect"]) == (10, 2, 4)
    steps, answer = arith.solve(arith.parse(problem.question))
    closest = "\n".join([*steps, _wrong(answer)])
    incorrect = collections.Counter([closest] * 2 + [f"0+0={j}|{j}\n" + _wrong(answer)
                                                     for j in (1, 6)])
    for example in record["examples"]:
      assert example["target"] == problem.solution and 0 <= example["k"] <= 4
      assert len(example["context"]) == min(example["k"], 4)
      # Drawn without replacement from this question's incorrect samples, closest last.
      assert not collections.Counter(example["context"]) - incorrect
      assert not example["context"] or example["context"][-1] == closest
      ks.append(example["k"])
  assert set(ks) == {0, 1, 2, 3, 4}  # 20 draws from Uniform{0..4}
  assert summary["questions"] == 10 and summary["examples"] == 20
  assert summary["solutions_sampled"] == 100 and summary["solutions_correct"] == 20
  # Character vocabulary: the longest prompt's tokens are its characters.
  assert summary["longest_inputs"] == max(
      len(context.revision_prompt(task, p, e["context"]))
      for p, r in zip(problems, records) for e in r["examples"])
  # One call per chunk of 4 questions; 20 rows per call at most: 2 questions of 10 samples.
  assert fake.calls == [(4, 10, 40, 2), (4, 10, 40, 2), (2, 10, 40, 2)]


def test_k_is_capped_by_the_incorrect_samples(tmp_path, task, fake):
  _fake_run(tmp_path, num_samples=5, num_questions=8)  # kinds 0-4 once: 1 right, 2 wrong
  for record in data.read_revision_data(str(tmp_path / "revision_data.jsonl")):
    assert (record["num_correct"], record["num_incorrect"]) == (1, 2)
    [example] = record["examples"]
    assert len(example["context"]) == min(example["k"], 2)


def test_rerun_after_a_cut_write_reproduces_the_file(tmp_path, task, fake):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _fake_run(straight, questions_per_chunk=3)
  written = (straight / "revision_data.jsonl").read_bytes()
  lines = written.splitlines(keepends=True)
  assert len(lines) == 10
  # Chunk 0 whole, chunk 1 (questions 3-5) cut in its third line, as kill -9 leaves it:
  # chunk 1 is recomputed, its missing question appended, then chunks 2 and 3.
  resumed.mkdir()
  (resumed / "revision_data.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:40])
  shutil.copy(straight / "revision_data.settings.json", resumed)
  _fake_run(resumed, questions_per_chunk=3)
  assert (resumed / "revision_data.jsonl").read_bytes() == written
  # A complete file is left alone, and nothing is sampled for it.
  calls = len(fake.calls)
  summary = _fake_run(resumed, questions_per_chunk=3)
  assert (resumed / "revision_data.jsonl").read_bytes() == written and len(fake.calls) == calls
  assert summary["tokens_this_run"] == 0 and summary["questions"] == 10
  # Another seed draws other samples and contexts.
  _fake_run(tmp_path / "seed1", questions_per_chunk=3, seed=1)
  assert (tmp_path / "seed1" / "revision_data.jsonl").read_bytes() != written


def test_resuming_with_other_settings_is_refused(tmp_path, task, fake, monkeypatch):
  _fake_run(tmp_path, num_questions=4)
  settings = json.loads((tmp_path / "revision_data.settings.json").read_text())
  assert settings["task"] == TASK and settings["policy"] == "" and settings["policy_step"] == 7
  assert settings["max_context"] == 4 and settings["temperature"] == 1.0
  with pytest.raises(UserError, match=r"temperature 1.0 -> 0.5.*data_file to a new name"):
    _fake_run(tmp_path, num_questions=4, temperature=0.5)
  with pytest.raises(UserError, match=r"max_context 4 -> 2"):
    _fake_run(tmp_path, num_questions=4, max_context=2)
  # More questions with the same settings extend the file.
  _fake_run(tmp_path, num_questions=6)
  assert len(data.read_revision_data(str(tmp_path / "revision_data.jsonl"))) == 6
  monkeypatch.setattr(workdir_lib, "load_policy", _fake_policy(8))  # trained further
  with pytest.raises(UserError, match=r"policy_step 7 -> 8"):
    _fake_run(tmp_path, num_questions=8)


@pytest.mark.parametrize("override, message", [
    ({"num_samples": 0}, r"num_samples=0 must be >= 1"),
    ({"questions_per_chunk": 0}, r"questions_per_chunk=0 must be >= 1"),
    ({"num_questions": -1}, r"num_questions=-1 must be >= 0"),
    ({"temperature": -1.0}, r"temperature=-1.0 must be >= 0"),
    ({"max_context": 5}, r"max_context=5 must be in \[0, 4\]"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, task, fake, override, message):
  with pytest.raises(UserError, match=message):
    _fake_run(tmp_path, **override)
  assert not fake.calls


# ----------------------------------------------------------------------------- the file


@pytest.fixture
def data_file(tmp_path, task, fake):
  _fake_run(tmp_path, num_questions=4)
  return tmp_path / "revision_data.jsonl"


def _rewrite(path, edit):
  records = [json.loads(line) for line in path.read_text().splitlines()]
  edit(records)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_revision_data_names_a_missing_file_and_a_cut_line(tmp_path, data_file):
  with pytest.raises(UserError, match="not found; run make_revision_data first"):
    data.read_revision_data(str(tmp_path / "nope.jsonl"))
  written = data_file.read_bytes()
  data_file.write_bytes(written[:-30])
  with pytest.raises(UserError, match=r"line 4 is cut mid-line.*rerun make_revision_data"):
    data.read_revision_data(str(data_file))


@pytest.mark.parametrize("edit, message", [
    (lambda rs: rs[1].pop("num_incorrect"), r"line 2: missing or non-int key 'num_incorrect'"),
    (lambda rs: rs[0].update(level=True), r"line 1: missing or non-int key 'level'"),
    (lambda rs: rs[0]["examples"].pop(), r"line 1: 1 examples, num_correct 2,.* disagree"),
    (lambda rs: rs[0]["examples"][0].update(k=-1, context=[]), r"at most k=-1 strings"),
    (lambda rs: rs[0]["examples"][0].update(k=1, context=["a", "b"]), r"at most k=1"),
    (lambda rs: rs[0]["examples"][0].update(context=[3]), r"example 0: context must be"),
    (lambda rs: rs[0]["examples"].__setitem__(0, "x"), r"example 0: expected a JSON object"),
    (lambda rs: rs.append(rs[0]), r"line 5: uid \S+ repeats line 1"),
])
def test_read_revision_data_rejects_malformed_records(data_file, edit, message):
  _rewrite(data_file, edit)
  with pytest.raises(UserError, match=message):
    data.read_revision_data(str(data_file))


# ----------------------------------------------------------------------------- seqio


def test_seqio_task_decodes_to_the_revision_prompts_and_targets(data_file, task):
  name = "test_revision_seqio"
  trained = data.register_revision_task(name, str(data_file), TASK, validation_percent=50)
  # The returned task is the arith task under the data's name, for `train(task=...)`.
  assert trained.name == name and task_lib.get(name) is trained and task.name == TASK
  assert trained.problems("train") == task.problems("train")
  records = data.read_revision_data(str(data_file))
  by_uid = {r["uid"]: r for r in records}
  reference = {p.uid: p.solution for p in task.problems("train")}
  got = collections.Counter()
  for split in ("train", "validation"):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                     shuffle=False)
    for ex in ds.as_numpy_iterator():
      record = by_uid[ex["uid"].decode()]
      assert labeling.split_of_uid(record["uid"], 50) == split
      problem = task_lib.Problem(uid=record["uid"], question=record["question"],
                                 answer=record["answer"], level=record["level"])
      inputs = CHAR_VOCAB.decode(ex["inputs"].tolist())
      assert ex["targets"].tolist()[-1] == vocab.EOS_ID and vocab.EOS_ID not in ex["inputs"]
      assert CHAR_VOCAB.decode(ex["targets"].tolist()) == reference[problem.uid]
      # inputs = the question line, then each context attempt closed by a "|" line.
      contexts = [e["context"] for e in record["examples"]
                  if context.revision_prompt(task, problem, e["context"]) == inputs]
      assert contexts and ex["attempts"] == len(contexts[0])
      assert inputs == problem.question + "\n" + "".join(a + "\n|\n" for a in contexts[0])
      got[(record["uid"], inputs)] += 1
  expected = collections.Counter(
      (r["uid"], context.revision_prompt(task, data._problem(r), e["context"]))
      for r in records for e in r["examples"])
  assert got == expected and len({uid for uid, _ in got}) == 4


def test_the_trainer_reads_batches_of_the_revision_task(data_file, task):
  name = data.register_revision_task("test_revision_batches", str(data_file), task,
                                     validation_percent=0).name
  batch = next(train_data.train_batches(name, batch_size=2, inputs_length=160,
                                        targets_length=48, seed=0))
  assert set(batch) == set(train_data.KEYS)
  assert batch["decoder_target_tokens"].shape == (2, 208)
  assert (batch["decoder_loss_weights"] > 0).any()


def test_registering_refuses_what_cannot_be_trained(data_file, task, tmp_path):
  with pytest.raises(UserError, match="the task's own name"):
    data.register_revision_task(TASK, str(data_file), task)
  with pytest.raises(UserError, match=r"validation_percent=101 must be in \[0, 100\]"):
    data.register_revision_task("test_revision_bad", str(data_file), task,
                                validation_percent=101)

  class NoVocabulary(arith_task.ArithTask):
    def vocabulary(self):
      return None

  with pytest.raises(UserError, match="has no vocabulary of its own"):
    data.register_revision_task("test_revision_bad", str(data_file), NoVocabulary())
  # A file made for another task is refused when read.
  other = arith_task.ArithTask(name="test_revision_other")
  data.register_revision_task("test_revision_other_data", str(data_file), other,
                              validation_percent=0)
  with pytest.raises(UserError, match=r"made for task 'test_revision_arith'"):
    list(seqio.get_mixture_or_task("test_revision_other_data").get_dataset(
        sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
  # An empty split names the fix.
  data.register_revision_task("test_revision_empty", str(data_file), task,
                              validation_percent=0)
  with pytest.raises(UserError, match=r"split 'validation' .* has no revision examples"):
    seqio.get_mixture_or_task("test_revision_empty").get_dataset(
        sequence_length=None, split="validation", shuffle=False)


# ----------------------------------------------------------------------------- a real policy


def test_a_random_tiny_policy_runs_end_to_end(tmp_path, task):
  """Random weights write garbage, mostly dropped; what is checked is the plumbing:
  every question gets its line, and the rerun samples nothing."""
  workdir = write_policy_workdir(tmp_path / "work")
  kwargs = {"task": task, "num_questions": 2, "num_samples": 2, "max_new_tokens": 8,
            "batch_size": 4, "questions_per_chunk": 2}  # one sampling call: one compile
  summary = data.make_revision_data(str(workdir), **kwargs)
  records = data.read_revision_data(str(workdir / "revision_data.jsonl"))
  assert [r["uid"] for r in records] == [p.uid for p in task.select_in_turns("train", 2)]
  assert all(r["num_sampled"] == 2 for r in records)
  assert summary["tokens_this_run"] > 0
  again = data.make_revision_data(str(workdir), **kwargs)
  assert again["tokens_this_run"] == 0 and again["questions"] == 2
