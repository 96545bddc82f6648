"""Tests for ttc/data/arith_task.py: the arithmetic task behind the Task interface, and its
seqio SFT task."""

import pytest
import seqio

from ttc.data import arith
from ttc.data import arith_task
from ttc.data import task as task_lib
from ttc.data import vocab
from ttc.errors import UserError


def _examples(name, split):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_dataset_is_tokenized_with_eos_on_targets_only():
  task = arith_task.register_arith_task("test_arith_small", num_train_per_level=4,
                                        num_eval_per_level=2)
  examples = _examples(task.name, "validation")
  assert len(examples) == 2 * len(arith.DEFAULT_LEVELS)
  v = vocab.CharVocabulary()
  by_uid = {p.uid: p for p in task.problems("validation")}
  for ex in examples:
    problem = by_uid[ex["uid"].decode()]
    assert ex["targets"][-1] == 1
    assert 1 not in ex["inputs"].tolist()
    assert v.decode(ex["inputs"].tolist()) == task.prompt(problem)
    decoded = v.decode(ex["targets"].tolist())
    assert decoded == problem.solution
    assert decoded.endswith(f"\\boxed{{{ex['answer']}}}")
    assert task.grade(decoded, problem) and str(ex["answer"]) == problem.answer
    assert ex["level"] == problem.level
    assert ex["question"].decode() == problem.question


def test_reregistering_replaces():
  arith_task.register_arith_task("test_arith_rereg", num_train_per_level=1,
                                 num_eval_per_level=1)
  task = arith_task.register_arith_task("test_arith_rereg", num_train_per_level=3,
                                        num_eval_per_level=1)
  assert len(_examples(task.name, "train")) == 3 * len(arith.DEFAULT_LEVELS)
  assert task_lib.get("test_arith_rereg") is task


def test_problems_are_cached_and_match_generate_split():
  task = arith_task.register_arith_task("test_arith_cache", num_train_per_level=5,
                                        num_eval_per_level=5, seed=7)
  first = task.arith_problems("test")
  assert first == arith.generate_split("test", 5, seed=7)
  assert task.arith_problems("test") == first
  assert arith_task._cached_split.cache_info().hits >= 1
  assert [(p.uid, p.question, p.answer, p.level, p.solution) for p in task.problems("test")] == [
      (p.uid, p.question, str(p.answer), p.level, p.solution) for p in first]


def test_levels_as_pairs_for_gin():
  task = arith_task.register_arith_task("test_arith_pairs", num_train_per_level=2,
                                        num_eval_per_level=2, levels=[(1, 9), (2, 9)])
  problems = task.arith_problems("train")
  assert [(p.level, p.num_ops, p.max_operand) for p in problems] == [
      (1, 1, 9), (1, 1, 9), (2, 2, 9), (2, 2, 9)]


def test_empty_split_raises():
  task = arith_task.register_arith_task("test_arith_empty", num_train_per_level=1,
                                        num_eval_per_level=0)
  with pytest.raises(UserError, match=r"'test_arith_empty' split 'test' has no examples"):
    _examples(task.name, "test")
  with pytest.raises(UserError, match="no examples"):
    task.problems("validation")


def test_unknown_task_or_split_raises():
  with pytest.raises(UserError, match="unknown task"):
    task_lib.get("no_such_task")
  task = arith_task.register_arith_task("test_arith_split", num_train_per_level=1,
                                        num_eval_per_level=1)
  with pytest.raises(UserError, match="no split"):
    task.problems("dev")


def test_interface_answers_steps_and_checker():
  task = arith_task.register_arith_task("test_arith_iface", num_train_per_level=1,
                                        num_eval_per_level=1)
  problem = task.problems("test")[-1]  # the last level: several steps
  text = problem.solution
  assert task.prompt(problem) == problem.question + "\n"
  assert task.extract_answer(text) == problem.answer
  assert task.is_correct("00" + problem.answer, problem)  # integers by value
  assert not task.is_correct(str(int(problem.answer) + 1), problem)
  assert not task.is_correct(None, problem)
  assert task.answer_ids(["7", "007", None, "8"]) == [0, 0, -1, 1]
  assert task.split_steps(text) == arith.split_steps(text)
  assert task.has_step_checker and all(task.step_correctness(problem, text))
  wrong = text.replace("=", "=1", 1)
  assert task.step_correctness(problem, wrong)[0] is False
  # Character offsets of the step ends are the token indices of the char vocabulary.
  ends = task.step_end_offsets(text)
  ids = vocab.CharVocabulary().encode(text) + [vocab.EOS_ID]
  newline = vocab.CharVocabulary().encode("\n")[0]
  assert [ids[e] for e in ends] == [newline] * (len(ends) - 1) + [vocab.EOS_ID]
  assert task.vocabulary() == vocab.CharVocabulary()


def test_revision_prompt_closes_each_attempt_with_a_bar_line():
  task = arith_task.ArithTask()
  problem = task_lib.Problem(uid="u", question="2*3+1", answer="7", level=2)
  attempts = ["2*3=6|6+1\n6+1=8|8\n\\boxed{8}\n", "\\boxed{5}"]
  text = task.revision_prompt(problem, attempts)
  assert text == "2*3+1\n2*3=6|6+1\n6+1=8|8\n\\boxed{8}\n|\n\\boxed{5}\n|\n"
  assert "|" not in arith.split_steps(attempts[0])  # no solution line is a bare "|"
  assert vocab.UNK_ID not in vocab.CharVocabulary().encode(text)
  assert task.revision_prompt(problem, []) == task.prompt(problem)


def test_the_default_task_is_reachable_by_name():
  assert task_lib.get("arith_sft").name == "arith_sft"


def test_encode_prompt_starts_with_the_decoder_start_id():
  ids = vocab.encode_prompt("1+2\n")
  assert ids[0] == vocab.DECODER_START_ID and vocab.CharVocabulary().decode(ids) == "1+2\n"
