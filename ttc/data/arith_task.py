"""The embedded arithmetic task behind the `Task` interface, and its seqio SFT task.

`register_arith_task` (gin) builds an `ArithTask`, registers it by name (`ttc.data.task`)
and registers a seqio Task of the same name over its problems, which policy training
reads. Problems are generated lazily and cached.
"""

import dataclasses
import functools
from typing import Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from ttc.data import arith, task as task_lib, vocab
from ttc.errors import UserError

SPLITS = ("train", "validation", "test")
# Ends each earlier attempt in a revision prompt: a line no solution line can be (a step
# is "a+b=c|rest", the last line "\\boxed{..}"), made of the character vocabulary.
ATTEMPT_END = "\n|\n"


@functools.lru_cache(maxsize=32)
def _cached_split(split: str, num_per_level: int, levels: tuple, seed: int,
                  max_value: int) -> tuple:
  if num_per_level == 0:
    return ()
  return tuple(arith.generate_split(split, num_per_level, levels, seed, max_value))


def _as_level(level: Union[arith.LevelSpec, Sequence[int]]) -> arith.LevelSpec:
  # gin cannot build dataclasses inline, so `levels = [(1, 50), (2, 50)]` is accepted too.
  return level if isinstance(level, arith.LevelSpec) else arith.LevelSpec(*level)


def _as_problem(p: arith.ArithProblem) -> task_lib.Problem:
  return task_lib.Problem(uid=p.uid, question=p.question, answer=str(p.answer), level=p.level,
                          solution=p.solution)


@dataclasses.dataclass(frozen=True)
class ArithTask(task_lib.Task):
  """Integer expressions solved one operation per line (`ttc.data.arith`).

  num_train_per_level / num_eval_per_level: problems per level in "train" and in
  each of "validation" and "test".
  """

  name: str = "arith_sft"
  num_train_per_level: int = 2000
  num_eval_per_level: int = 100
  levels: tuple = arith.DEFAULT_LEVELS
  seed: int = 0
  max_value: int = arith.DEFAULT_MAX_VALUE
  step_delimiter: str = arith.STEP_DELIMITER
  chat: bool = False

  def arith_problems(self, split: str) -> list[arith.ArithProblem]:
    """The split's generated problems (with their operation counts and operand bound)."""
    if split not in SPLITS:
      raise UserError(f"task {self.name!r} has no split {split!r}; expected one of {SPLITS}")
    knob = "num_train_per_level" if split == "train" else "num_eval_per_level"
    num_per_level = getattr(self, knob)
    try:
      problems = _cached_split(split, num_per_level, self.levels, self.seed, self.max_value)
    except ValueError as e:  # a level's question space is too small
      raise UserError(str(e)) from e
    if not problems:
      raise UserError(f"task {self.name!r} split {split!r} has no examples ({knob}="
                      f"{num_per_level}); set {knob} > 0 in register_arith_task")
    return list(problems)

  def problems(self, split: str) -> list[task_lib.Problem]:
    return [_as_problem(p) for p in self.arith_problems(split)]

  def prompt(self, problem: task_lib.Problem) -> str:
    return arith.format_prompt(problem.question)

  def extract_answer(self, text: str) -> Optional[str]:
    return arith.extract_answer(text)

  def is_correct(self, answer: Optional[str], problem: task_lib.Problem) -> bool:
    return arith.is_answer(answer, int(problem.answer))

  def answer_key(self, answer: str):
    return arith.answer_key(answer)

  @property
  def has_step_checker(self) -> bool:
    return True

  def step_correctness(self, problem: task_lib.Problem, text: str) -> list[bool]:
    return arith.step_correctness(problem.question, text)

  def vocabulary(self):
    return vocab.CharVocabulary()

  def revision_prompt(self, problem: task_lib.Problem, attempts: Sequence[str]) -> str:
    """The question line, then each attempt (stripped) followed by a line "|":

        (17+25)*3-8
        17+25=42|42*3-8
        ...
        \\boxed{119}
        |
        <the new attempt the model writes>

    Only characters of `vocab.ALPHABET`, so the character vocabulary reads it whole.
    """
    return self.prompt(problem) + "".join(a.strip() + ATTEMPT_END for a in attempts)


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
                        max_value: int = arith.DEFAULT_MAX_VALUE) -> ArithTask:
  """Registers (or replaces) the arithmetic task `name`, for stages and for seqio.

  Problems are generated lazily, on the first request, and cached. Defaults give
  10,000 train and 500 validation / 500 test problems over 5 levels.
  """
  if num_train_per_level < 0 or num_eval_per_level < 0:
    raise UserError("register_arith_task: num_train_per_level and num_eval_per_level must be "
                    ">= 0")
  task = ArithTask(name=name, num_train_per_level=num_train_per_level,
                   num_eval_per_level=num_eval_per_level,
                   levels=tuple(_as_level(level) for level in levels), seed=seed,
                   max_value=max_value)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    return _to_dataset(task.arith_problems(split))

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=vocab.output_features(),
  )
  return task_lib.register(task)


task_lib.register_factory("arith_sft", register_arith_task)
