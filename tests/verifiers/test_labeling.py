"""Tests for ttc/verifiers/labeling.py: Monte-Carlo PRM step labels, their file, their task.

Most tests replace the policy by `FakePolicy`, whose rollouts win a known number of times,
so every label can be worked out by hand. Two tests use a real tiny policy trained for a
few seconds (in a subprocess, on one CPU device): one in process on the 8-device mesh, one
that kills a labelling run with SIGKILL mid-write and checks the rerun's file equals a
straight run's.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio

from ttc import workdir as workdir_lib
from ttc.data import arith, arith_task, vocab
from ttc.decoding import sampling
from ttc.errors import UserError
from ttc.verifiers import labeling
from tests.kill_mid_write import KILL_AT_SECOND_WRITE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEVELS = [(1, 9), (2, 9)]
TASK = "test_labeling_arith"
# The quickstart with a smaller policy on two easy levels: 150 steps make it well formed but
# often wrong on the test split, so labels come in both kinds.
POLICY_FLAGS = [
    "--gin_file=configs/arith/quickstart.gin",
    f"--gin.register_arith_task.levels={LEVELS}",
    "--gin.register_arith_task.num_train_per_level=50",
    "--gin.register_arith_task.num_eval_per_level=5",
    "--gin.ModelConfig.embed_dim=64", "--gin.ModelConfig.mlp_dim=128",
    "--gin.ModelConfig.num_layers=2", "--gin.ModelConfig.head_dim=16",
]


def _cli(workdir, *flags, check=True):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI runs on one device
  return subprocess.run([sys.executable, "-m", "ttc.main", *POLICY_FLAGS, *flags,
                         f"--gin.WORKDIR='{workdir}'"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=check)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("policy")
  _cli(workdir, "--gin.run.stages=[@train]", "--gin.train.num_steps=150",
       "--gin.train.batch_size=16", "--gin.train.targets_length=48",
       "--gin.train.checkpoint_every=150", "--gin.train.log_every=50",
       "--gin.make_optimizer.learning_rate=1e-2")
  return workdir


@pytest.fixture(scope="module")
def task():
  return arith_task.register_arith_task(TASK, num_train_per_level=50, num_eval_per_level=5,
                                        levels=LEVELS)


class NoStepChecker(arith_task.ArithTask):
  """The arithmetic task as a task without a ground-truth step checker (as MATH is)."""

  @property
  def has_step_checker(self):
    return False

  def step_correctness(self, problem, text):
    raise AssertionError("a stage asked a task without a step checker for step labels")


def no_step_checker_task(name="test_no_step_checker"):
  return NoStepChecker(name=name, num_train_per_level=50, num_eval_per_level=5,
                       levels=tuple(arith.LevelSpec(*level) for level in LEVELS))


# ----------------------------------------------------------------------------- step ends


@pytest.mark.parametrize("text, ends", [
    ("1+2=3|3\n\\boxed{3}", [7, 17]),
    ("1+2=3|3\n\\boxed{3}\n", [7, 17]),  # trailing delimiter: the last step ends at it
    ("\n1+2=3|3\n\n  \n\\boxed{3}", [8, 22]),  # empty and blank lines are no steps
    ("\\boxed{7}", [9]),
    ("", []),
    ("\n\n", []),
])
def test_step_end_offsets(text, ends):
  task = arith_task.ArithTask()
  assert task.step_end_offsets(text) == ends
  # Character vocabulary: token indices are character indices.
  assert labeling.step_end_tokens(task, workdir_lib.char_codec(), text) == ends
  assert len(ends) == len(arith.split_steps(text))
  tokens = vocab.CharVocabulary().encode(text) + [vocab.EOS_ID]
  newline = vocab.CharVocabulary().encode("\n")[0]
  for end, step in zip(ends, arith.split_steps(text)):
    assert tokens[end] in (newline, vocab.EOS_ID)
    assert text[:end].endswith(step)


@pytest.mark.parametrize("text, ends", [
    ("12+30=42|42\n\\boxed{42}", [6, 11]),  # the last step ends on the EOS
    ("12+30=42|42\n\\boxed{42}\n", [6, 10]),  # "}\n" is one token, before the EOS
])
def test_step_end_tokens_of_a_bpe_like_codec(text, ends):
  """Numbers with a newline after them, `\\boxed` and "}\\n" are one token each: a step
  ends on the token that holds its delimiter."""
  def pieces(t):
    return re.findall(r"\d+\n?|\\boxed|\}\n?|.", t, re.DOTALL)

  ids = {}
  codec = workdir_lib.Codec(encode_prompt=None, decode=None, eos_id=1,
                        encode=lambda t: [ids.setdefault(p, len(ids)) for p in pieces(t)])
  assert labeling.step_end_tokens(arith_task.ArithTask(), codec, text) == ends
  tokens = pieces(text) + ["<eos>"]
  assert len(tokens) == 12
  assert [tokens[e] for e in ends] == ["42\n", "}\n" if text.endswith("\n") else "<eos>"]


# ----------------------------------------------------------------------------- a fake policy


def _wins(question: str, steps_done: int, num_rollouts: int) -> int:
  """How many of the rollouts after `steps_done` right steps reach the right answer."""
  return (len(question) + 2 * steps_done) % (num_rollouts + 1)


class FakePolicy:
  """Stands in for `sampling.sample_prompts` with outcomes known by construction.

  From a bare prompt, sample kind j % 5: 0 the reference solution; 1 a wrong first step
  and a wrong answer; 2 the reference steps and a wrong answer; 3 the reference solution
  that never stops (no EOS within the budget: dropped); 4 no \\boxed (dropped). From a step
  prefix whose steps are all right, exactly `_wins` rows finish the reference solution; of
  the rest, even rows box a wrong answer and odd rows box the right one but never stop,
  which must count as a failure too. After a wrong step every row boxes a wrong answer.
  Which rows get which outcome is a permutation drawn from the rng, so, as with the real
  sampler, results depend on the rng.
  """

  def __init__(self):
    self.calls = []  # (prompts, num_samples, max_new_tokens) per call

  def __call__(self, model, params, prompts, rng, sampler, *, num_samples, max_new_tokens,
               eos_id, **unused):
    del model, params, sampler, unused
    self.calls.append((len(prompts), num_samples, max_new_tokens))
    char_vocab = vocab.CharVocabulary()
    rows = []
    for i, prompt in enumerate(prompts):
      assert prompt[0] == vocab.DECODER_START_ID
      question, _, prefix = char_vocab.decode(prompt[1:]).partition("\n")
      assert prefix == "" or prefix.endswith("\n"), "a prefix includes its delimiter"
      order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, i), num_samples))
      rows += [self._continue(question, prefix, int(j), num_samples) for j in order]
    tokens = np.zeros((len(rows), max_new_tokens), np.int32)
    lengths, reasons = [], []
    for r, (text, stops) in enumerate(rows):
      ids = (char_vocab.encode(text) + [eos_id] * stops)[:max_new_tokens]
      tokens[r, :len(ids)] = ids
      lengths.append(len(ids))
      reasons.append(sampling.StopReason.EOS if stops and ids[-1] == eos_id
                     else sampling.StopReason.MAX_NEW_TOKENS)
    return sampling.Samples(tokens_BxG=tokens, logprobs_BxG=np.zeros(tokens.shape, np.float32),
                            lengths_B=np.asarray(lengths, np.int32),
                            stop_reason_B=np.asarray(reasons, np.int32))

  @staticmethod
  def _continue(question, prefix, j, n):
    """(continuation text, stops with EOS)."""
    steps, answer = arith.solve(arith.parse(question))
    wrong = f"\\boxed{{{answer + 1}}}"
    if not prefix:
      return [(arith.format_solution(steps, answer), True),
              ("0+0=1|1\n" + wrong, True),
              ("\n".join(steps) + "\n" + wrong, True),
              (arith.format_solution(steps, answer) + "\n" + "1" * 1000, False),
              ("\n".join(steps), True)][j % 5]
    done = arith.split_steps(prefix)
    if not all(arith.step_correctness(question, prefix)):
      return wrong, True
    rest = arith.format_solution(steps[len(done):], answer)
    if j < _wins(question, len(done), n):
      return rest, True
    return (wrong, True) if j % 2 == 0 else (rest + "\n" + "1" * 1000, False)


@pytest.fixture
def fake(monkeypatch):
  policy = FakePolicy()
  monkeypatch.setattr(sampling, "sample_prompts", policy)
  # A char-vocabulary policy at training step 7 whose sampling is the fake's.
  monkeypatch.setattr(workdir_lib, "load_policy", lambda source, devices, workdir="": workdir_lib.Policy(
      None, None, workdir_lib.char_codec(), source, "workdir", 7))
  return policy


def _fake_run(path, **overrides):
  kwargs = dict(task=TASK, split="train", num_questions=10, num_solutions=5,
                num_rollouts=4, max_new_tokens=40, batch_size=8, questions_per_chunk=4)
  kwargs.update(overrides)
  return labeling.label_prm(str(path), **kwargs)


def _lines(path):
  return [json.loads(line) for line in open(path)]


def _levels_in_turn(problems):
  """The order label_prm takes questions in: the i-th of every level, for i = 0, 1, ..."""
  rank = {}
  for p in problems:
    rank[p.uid] = sum(q.level == p.level for q in problems[:problems.index(p)])
  return sorted(problems, key=lambda p: (rank[p.uid], p.level))


# ----------------------------------------------------------------------------- labels


def test_labels_equal_the_hand_worked_rollout_outcomes(tmp_path, task, fake):
  summary = _fake_run(tmp_path)
  problems = _levels_in_turn(task.arith_problems("train"))[:10]
  assert len({p.level for p in problems}) > 1  # a prefix of the split spans its levels
  records = labeling.read_labels(os.path.join(tmp_path, "prm_labels.jsonl"))
  assert [r["uid"] for r in records] == [p.uid for p in problems]
  for problem, record in zip(problems, records):
    assert record["num_sampled"] == 5 and record["answer"] == str(problem.answer)
    assert record["prompt"] == problem.prompt and record["level"] == problem.level
    # Kinds 3 (no EOS, though boxed right) and 4 (no \boxed) are dropped; 0, 1, 2 kept.
    steps = list(problem.steps)
    assert sorted(s["text"] for s in record["samples"]) == sorted([
        problem.solution, f"0+0=1|1\n\\boxed{{{problem.answer + 1}}}",
        "\n".join(steps + [f"\\boxed{{{problem.answer + 1}}}"])])
    for sample in record["samples"]:
      true = arith.step_correctness(problem.question, sample["text"])
      expected = [_wins(problem.question, i + 1, 4) / 4 if all(true[:i + 1]) else 0.0
                  for i in range(len(true) - 1)]
      assert sample["soft"] == expected + [float(sample["correct"])]
      assert sample["correct"] == (sample["text"] == problem.solution)
      assert sample["true"] == true
      assert sample["hard"] == [s > 0 for s in sample["soft"]]
      # Character vocabulary: token indices of the step ends are character indices.
      assert sample["step_ends"] == task.step_end_offsets(sample["text"])
  # Kinds 0 and 2 share their step prefixes, which are rolled out once: level + 1 prefixes.
  assert summary["rollouts_this_run"] == sum(p.level + 1 for p in problems) * 4
  assert summary["solutions_sampled"] == 50 and summary["solutions_kept"] == 30
  prompts_per_call = {(n, s) for n, s, _ in fake.calls}
  assert all(n <= max(1, 8 // s) for n, s in prompts_per_call)
  assert {s for _, s in prompts_per_call} == {4, 5}
  assert {g for _, _, g in fake.calls} == {40}


def test_rerun_after_a_cut_write_reproduces_the_file(tmp_path, task, fake):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _fake_run(straight, questions_per_chunk=3)
  data = (straight / "prm_labels.jsonl").read_bytes()
  lines = data.splitlines(keepends=True)
  assert len(lines) == 10
  # Chunk 0 whole, chunk 1 (questions 3-5) cut in its third line: chunk 1 is recomputed
  # and only its missing question appended, then chunks 2 and 3 follow.
  resumed.mkdir()
  (resumed / "prm_labels.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:40])
  shutil.copy(straight / "prm_labels.settings.json", resumed)
  _fake_run(resumed, questions_per_chunk=3)
  assert (resumed / "prm_labels.jsonl").read_bytes() == data
  # A complete file is left alone, and nothing is sampled for it.
  calls = len(fake.calls)
  summary = _fake_run(resumed, questions_per_chunk=3)
  assert (resumed / "prm_labels.jsonl").read_bytes() == data and len(fake.calls) == calls
  assert summary["rollouts_this_run"] == 0 and summary["questions"] == 10


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path, task, fake):
  _fake_run(tmp_path, num_questions=4)
  path = tmp_path / "prm_labels.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text(lines[0] + "{garbage\n" + "".join(lines[2:]))
  with pytest.raises(UserError, match=r"prm_labels.jsonl line 2 .*fix or delete that line"):
    _fake_run(tmp_path, num_questions=4)


def test_resuming_with_other_settings_is_an_error(tmp_path, task, fake, monkeypatch):
  _fake_run(tmp_path, num_questions=4)
  settings = json.loads((tmp_path / "prm_labels.settings.json").read_text())
  assert settings["task"] == TASK and settings["policy"] == ""  # "": the work dir's own
  assert settings["policy_kind"] == "workdir" and settings["policy_step"] == 7
  with pytest.raises(UserError, match=r"num_rollouts 4 -> 8"):
    _fake_run(tmp_path, num_questions=4, num_rollouts=8)
  with pytest.raises(UserError, match=r"task 'test_labeling_arith' -> 'test_no_step_checker'"):
    _fake_run(tmp_path, num_questions=4, task=no_step_checker_task())
  # Labelling more questions with the same settings extends the file.
  _fake_run(tmp_path, num_questions=6)
  assert len(_lines(tmp_path / "prm_labels.jsonl")) == 6
  # A policy trained further is another policy.
  monkeypatch.setattr(workdir_lib, "load_policy", lambda source, devices, workdir="": workdir_lib.Policy(
      None, None, workdir_lib.char_codec(), source, "workdir", 8))
  with pytest.raises(UserError, match=r"policy_step 7 -> 8"):
    _fake_run(tmp_path, num_questions=8)


def test_a_task_without_step_checker_labels_true_as_null(tmp_path, task, fake):
  """Everything but `true` is as with the checker; `true` is null, -1 per step in seqio."""
  _fake_run(tmp_path / "checked", num_questions=4)
  _fake_run(tmp_path / "unchecked", num_questions=4, task=no_step_checker_task())
  checked = labeling.read_labels(str(tmp_path / "checked" / "prm_labels.jsonl"))
  unchecked = labeling.read_labels(str(tmp_path / "unchecked" / "prm_labels.jsonl"))
  samples = [s for r in unchecked for s in r["samples"]]
  assert samples and all(s["true"] is None for s in samples)
  for record in checked:
    for sample in record["samples"]:
      assert isinstance(sample.pop("true"), list)
  for record in unchecked:
    for sample in record["samples"]:
      sample.pop("true")
  assert unchecked == checked
  name = labeling.register_prm_labels_task(
      "test_prm_labels_unchecked", str(tmp_path / "unchecked" / "prm_labels.jsonl"),
      validation_percent=0)
  examples = list(seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
  assert len(examples) == len(samples)
  assert all(ex["true"].tolist() == [-1] * len(ex["soft"]) for ex in examples)


# ----------------------------------------------------------------------------- read_labels


@pytest.fixture
def labels_file(tmp_path, task, fake):
  _fake_run(tmp_path, num_questions=4)
  return tmp_path / "prm_labels.jsonl"


def test_read_labels_missing_file(tmp_path):
  with pytest.raises(UserError, match="not found; run label_prm first"):
    labeling.read_labels(str(tmp_path / "nope.jsonl"))


def test_read_labels_names_the_cut_line(labels_file):
  data = labels_file.read_bytes()
  labels_file.write_bytes(data[:len(data) - 30])  # kill -9 in the middle of line 4
  with pytest.raises(UserError, match=r"line 4 is cut mid-line.*rerun label_prm"):
    labeling.read_labels(str(labels_file))


def _rewrite_first_sample(path, edit):
  lines = _lines(path)
  edit(next(r for r in lines if r["samples"])["samples"][0])
  path.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(soft=s["soft"] + [0.5]), "label lengths"),
    (lambda s: s["soft"].__setitem__(0, 1.5), "not a finite number in"),
    (lambda s: s["soft"].__setitem__(0, math.nan), "not a finite number in"),
    (lambda s: s.pop("true"), "key 'true'"),
    (lambda s: s["hard"].__setitem__(0, 1), "booleans"),
    (lambda s: s.update(step_ends=s["step_ends"][::-1]), "not increasing token indices"),
    (lambda s: s.update(true=[]), "label lengths"),
])
def test_read_labels_rejects_inconsistent_samples(labels_file, edit, message):
  _rewrite_first_sample(labels_file, edit)
  with pytest.raises(UserError, match=message + r".*rerun label_prm"):
    labeling.read_labels(str(labels_file))


def test_read_labels_reads_integer_answers_of_older_files(labels_file):
  lines = _lines(labels_file)
  for record in lines:
    record["answer"] = int(record["answer"])
  labels_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
  assert [r["answer"] for r in labeling.read_labels(str(labels_file))] == [
      r["answer"] for r in lines]
  lines[0]["answer"] = True
  labels_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
  with pytest.raises(UserError, match=r"line 1: missing or non-str key 'answer'"):
    labeling.read_labels(str(labels_file))


def test_read_labels_rejects_missing_keys_and_repeats(labels_file):
  lines = labels_file.read_text().splitlines(keepends=True)
  record = json.loads(lines[2])
  del record["uid"]
  labels_file.write_text(lines[0] + lines[1] + json.dumps(record) + "\n")
  with pytest.raises(UserError, match=r"line 3: missing or non-str key 'uid'"):
    labeling.read_labels(str(labels_file))
  labels_file.write_text(lines[0] + lines[1] + lines[0])
  with pytest.raises(UserError, match=r"line 3: uid .* repeats line 1"):
    labeling.read_labels(str(labels_file))


# ----------------------------------------------------------------------------- seqio task


def test_seqio_task_yields_one_example_per_sample_split_by_uid(labels_file, tmp_path):
  name = labeling.register_prm_labels_task("test_prm_labels", str(labels_file),
                                           validation_percent=50)
  records = labeling.read_labels(str(labels_file))
  by_split = {}
  char_vocab = vocab.CharVocabulary()
  for split in ("train", "validation"):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                     shuffle=False)
    by_split[split] = list(ds.as_numpy_iterator())
  expected = [(r, s) for r in records for s in r["samples"]]
  got = by_split["train"] + by_split["validation"]
  assert len(got) == len(expected) and all(by_split.values())
  uids = {split: {ex["uid"].decode() for ex in exs} for split, exs in by_split.items()}
  assert not uids["train"] & uids["validation"]
  assert uids["train"] | uids["validation"] == {r["uid"] for r in records if r["samples"]}
  expected_by_text = {(r["uid"], s["text"]): (r, s) for r, s in expected}
  for split, examples in by_split.items():
    for ex in examples:
      uid = ex["uid"].decode()
      assert labeling.split_of_uid(uid, 50) == split
      record, sample = expected_by_text[(uid, char_vocab.decode(ex["targets"].tolist()))]
      assert ex["targets"].tolist() == char_vocab.encode(sample["text"]) + [vocab.EOS_ID]
      assert ex["inputs"].tolist() == char_vocab.encode(record["prompt"])
      assert ex["step_ends"].dtype == np.int32 and ex["soft"].dtype == np.float32
      assert ex["step_ends"].tolist() == sample["step_ends"]
      np.testing.assert_allclose(ex["soft"], sample["soft"])
      assert ex["hard"].tolist() == list(map(int, sample["hard"]))
      assert ex["true"].tolist() == list(map(int, sample["true"]))
      assert ex["correct"] == int(sample["correct"]) and ex["level"] == record["level"]
      # Every step end is a delimiter or the EOS of the targets.
      assert set(ex["targets"][ex["step_ends"]].tolist()) <= {
          char_vocab.encode("\n")[0], vocab.EOS_ID}


def test_split_of_uid_is_stable_and_proportional():
  uids = [f"arith-{i:016x}" for i in range(2000)]
  held_out = [u for u in uids if labeling.split_of_uid(u, 10) == "validation"]
  assert 140 < len(held_out) < 260
  assert labeling.split_of_uid("arith-0", 0) == "train"
  assert labeling.split_of_uid("arith-0", 100) == "validation"
  with pytest.raises(ValueError, match="validation_percent"):
    labeling.register_prm_labels_task("test_prm_bad", "x.jsonl", validation_percent=101)


# ----------------------------------------------------------------------------- a real policy


def test_real_policy_labels_are_consistent(policy_dir, task, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(policy_dir, workdir)
  summary = labeling.label_prm(str(workdir), task=task, split="test", num_solutions=4,
                               num_rollouts=4, max_new_tokens=40, batch_size=16,
                               questions_per_chunk=4)
  records = labeling.read_labels(str(workdir / "prm_labels.jsonl"))
  problems = _levels_in_turn(task.arith_problems("test"))
  assert [r["uid"] for r in records] == [p.uid for p in problems]
  samples = [s for r in records for s in r["samples"]]
  assert summary["solutions_kept"] == len(samples) > 0
  right, wrong = [], []
  for record in records:
    for s in record["samples"]:
      assert arith.extract_answer(s["text"]) is not None
      assert s["correct"] == arith.grade(s["text"], int(record["answer"]))
      assert s["soft"][-1] == float(s["correct"])
      assert all(x * 4 == round(x * 4) for x in s["soft"])
      assert s["hard"] == [x > 0 for x in s["soft"]]
      assert s["true"] == arith.step_correctness(record["question"], s["text"])
      for soft, true in zip(s["soft"][:-1], s["true"][:-1]):
        (right if true else wrong).append(soft)
  # Monte-Carlo values track the ground truth: right steps lead to right answers more often.
  assert right and wrong and np.mean(right) > np.mean(wrong)


def test_kill_9_mid_write_then_rerun_equals_a_straight_run(policy_dir, tmp_path):
  label = ["--gin.run.stages=[@label_prm]", "--gin.label_prm.task=%TASK",
           "--gin.label_prm.split='test'", "--gin.label_prm.num_questions=4",
           "--gin.label_prm.num_solutions=4", "--gin.label_prm.num_rollouts=4",
           "--gin.label_prm.max_new_tokens=40", "--gin.label_prm.questions_per_chunk=2",
           # One prompt per call: fewer shapes to compile.
           "--gin.label_prm.batch_size=4"]
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  for workdir in (straight, resumed):
    shutil.copytree(policy_dir, workdir)
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  killed = subprocess.Popen([sys.executable, "-c", KILL_AT_SECOND_WRITE, *POLICY_FLAGS,
                             *label, f"--gin.WORKDIR='{resumed}'"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _cli(straight, *label)  # meanwhile, on the other core
  _, stderr = killed.communicate(timeout=300)
  assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
  cut = (resumed / "prm_labels.jsonl").read_bytes()
  assert cut.count(b"\n") == 3 and not cut.endswith(b"\n")

  result = _cli(resumed, *label)
  assert "dropped 20 bytes" in result.stdout
  want = (straight / "prm_labels.jsonl").read_text()
  got = (resumed / "prm_labels.jsonl").read_text()
  uids = [json.loads(line)["uid"] for line in got.splitlines()]
  assert len(uids) == len(set(uids)) == 4
  assert set(got.splitlines()) == set(want.splitlines())
  assert got == want  # same order too: chunk by chunk, question order within a chunk
