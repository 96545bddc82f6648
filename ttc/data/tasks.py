"""seqio registration of the arithmetic task, plus TF-free access to its problems for evaluators."""

import dataclasses
import functools
from typing import Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from ttc.data import arith
from ttc.data import vocab

SPLITS = ("train", "validation", "test")
# seqio's decoder-only feature converters shift targets right and put id 0 first, so
# the model was trained to read every example after a leading 0; generation must too.
DECODER_START_ID = 0


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
  num_train_per_level: int
  num_eval_per_level: int  # for validation and test alike
  levels: tuple
  seed: int
  max_value: int


_TASK_SPECS = {}  # task name -> _TaskSpec, filled by register_arith_task


def output_features() -> dict:
  """`inputs` is the prompt (no EOS: generation continues it); `targets` ends in EOS."""
  char_vocab = vocab.CharVocabulary()
  return {
      "inputs": seqio.Feature(char_vocab, add_eos=False),
      "targets": seqio.Feature(char_vocab, add_eos=True),
  }


@functools.lru_cache(maxsize=32)
def _cached_split(split: str, num_per_level: int, levels: tuple, seed: int,
                  max_value: int) -> tuple:
  if num_per_level == 0:
    return ()
  return tuple(arith.generate_split(split, num_per_level, levels, seed, max_value))


def _as_level(level: Union[arith.LevelSpec, Sequence[int]]) -> arith.LevelSpec:
  # gin cannot build dataclasses inline, so `levels = [(1, 50), (2, 50)]` is accepted too.
  return level if isinstance(level, arith.LevelSpec) else arith.LevelSpec(*level)


def problems_for(task_name: str, split: str) -> list[arith.ArithProblem]:
  """The problems (with levels) behind one split of a registered task, without building TF data.

  Raises:
    ValueError: unknown task or split, or a split configured with zero examples.
  """
  if task_name not in _TASK_SPECS:
    raise ValueError(f"task {task_name!r} is not registered; call register_arith_task first "
                     f"(registered: {sorted(_TASK_SPECS)})")
  if split not in SPLITS:
    raise ValueError(f"task {task_name!r} has no split {split!r}; expected one of {SPLITS}")
  spec = _TASK_SPECS[task_name]
  knob = "num_train_per_level" if split == "train" else "num_eval_per_level"
  num_per_level = getattr(spec, knob)
  problems = _cached_split(split, num_per_level, spec.levels, spec.seed, spec.max_value)
  if not problems:
    raise ValueError(f"task {task_name!r} split {split!r} has no examples ({knob}="
                     f"{num_per_level}); set {knob} > 0 in register_arith_task")
  return list(problems)


def encode_prompt(prompt: str) -> list:
  """Token ids to feed the policy for `prompt`, exactly as training presented it."""
  return [DECODER_START_ID] + vocab.CharVocabulary().encode(prompt)


def _to_dataset(problems: Sequence[arith.ArithProblem]) -> tf.data.Dataset:
  """One example per problem: string `inputs`/`targets`/`uid`/`question`, int64 `answer`/`level`."""
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [p.prompt for p in problems],
      "targets": [p.solution for p in problems],
      "uid": [p.uid for p in problems],
      "question": [p.question for p in problems],
      "answer": np.array([p.answer for p in problems], np.int64),
      "level": np.array([p.level for p in problems], np.int64),
  })


@gin.configurable
def register_arith_task(name: str = "arith_sft",
                        num_train_per_level: int = 2000,
                        num_eval_per_level: int = 100,
                        levels: Sequence = arith.DEFAULT_LEVELS,
                        seed: int = 0,
                        max_value: int = arith.DEFAULT_MAX_VALUE) -> str:
  """Registers (or replaces) the SFT task over `arith` problems; returns its name.

  Problems are generated lazily, on the first dataset or `problems_for` request, and cached.
  Defaults give 10,000 train and 500 validation / 500 test problems over 5 levels.
  """
  if num_train_per_level < 0 or num_eval_per_level < 0:
    raise ValueError("num_train_per_level and num_eval_per_level must be >= 0")
  _TASK_SPECS[name] = _TaskSpec(num_train_per_level, num_eval_per_level,
                                tuple(_as_level(level) for level in levels), seed, max_value)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    return _to_dataset(problems_for(name, split))

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(),
  )
  return name
