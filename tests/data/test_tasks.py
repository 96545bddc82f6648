"""Tests for ttc/data/tasks.py: the registered seqio task and TF-free problem access."""

import pytest
import seqio

from ttc.data import arith
from ttc.data import tasks
from ttc.data import vocab


def _examples(name, split):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_dataset_is_tokenized_with_eos_on_targets_only():
  name = tasks.register_arith_task("test_arith_small", num_train_per_level=4,
                                   num_eval_per_level=2)
  examples = _examples(name, "validation")
  assert len(examples) == 2 * len(arith.DEFAULT_LEVELS)
  v = vocab.CharVocabulary()
  by_uid = {p.uid: p for p in tasks.problems_for(name, "validation")}
  for ex in examples:
    problem = by_uid[ex["uid"].decode()]
    assert ex["targets"][-1] == 1
    assert 1 not in ex["inputs"].tolist()
    assert v.decode(ex["inputs"].tolist()) == problem.prompt
    decoded = v.decode(ex["targets"].tolist())
    assert decoded == problem.solution
    assert decoded.endswith(f"\\boxed{{{ex['answer']}}}")
    assert arith.grade(decoded, int(ex["answer"]))
    assert ex["level"] == problem.level
    assert ex["question"].decode() == problem.question


def test_reregistering_replaces():
  tasks.register_arith_task("test_arith_rereg", num_train_per_level=1, num_eval_per_level=1)
  name = tasks.register_arith_task("test_arith_rereg", num_train_per_level=3,
                                   num_eval_per_level=1)
  assert len(_examples(name, "train")) == 3 * len(arith.DEFAULT_LEVELS)


def test_problems_for_is_cached_and_matches_generate_split():
  name = tasks.register_arith_task("test_arith_cache", num_train_per_level=5,
                                   num_eval_per_level=5, seed=7)
  first = tasks.problems_for(name, "test")
  assert first == arith.generate_split("test", 5, seed=7)
  assert tasks.problems_for(name, "test") == first
  assert tasks._cached_split.cache_info().hits >= 1


def test_levels_as_pairs_for_gin():
  name = tasks.register_arith_task("test_arith_pairs", num_train_per_level=2,
                                   num_eval_per_level=2, levels=[(1, 9), (2, 9)])
  problems = tasks.problems_for(name, "train")
  assert [(p.level, p.num_ops, p.max_operand) for p in problems] == [
      (1, 1, 9), (1, 1, 9), (2, 2, 9), (2, 2, 9)]


def test_empty_split_raises():
  name = tasks.register_arith_task("test_arith_empty", num_train_per_level=1,
                                   num_eval_per_level=0)
  task = seqio.get_mixture_or_task(name)
  with pytest.raises(ValueError, match=r"'test_arith_empty' split 'test' has no examples"):
    task.get_dataset(sequence_length=None, split="test", shuffle=False)
  with pytest.raises(ValueError, match="no examples"):
    tasks.problems_for(name, "validation")


def test_unknown_task_or_split_raises():
  with pytest.raises(ValueError, match="not registered"):
    tasks.problems_for("no_such_task", "train")
  name = tasks.register_arith_task("test_arith_split", num_train_per_level=1,
                                   num_eval_per_level=1)
  with pytest.raises(ValueError, match="no split"):
    tasks.problems_for(name, "dev")
