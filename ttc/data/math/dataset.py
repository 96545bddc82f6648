"""MATH problems behind the `Task` interface: `MathTask` and its gin configurable `math_task`.

Reads JSONL in the MATH schema (`problem`, `solution`, `answer` (optional), `level`
"Level 1".."Level 5", `unique_id`): by default MATH-500 from `../shared/data/`, or any
file of that schema, e.g. the full MATH release converted to it.

Splits: without `train_path`, the one file is split by a hash of `unique_id` into
"train" (about half, for PRM labelling and verifier training) and "test" (the rest, for
evaluation), the same on every machine; with `train_path`, "train" is that file and
"test" is all of `path`.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Optional

import gin

from ttc.data import task as task_lib
from ttc.data.math.grading import extract_boxed, extract_unboxed, is_equiv
from ttc.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DEFAULT_PATH = os.path.join(REPO_ROOT, "..", "shared", "data", "math500.jsonl")
SPLITS = ("train", "test")
LEVELS = {f"Level {n}": n for n in range(1, 6)}

PROMPT = ("Solve the following math problem step by step. Separate the steps with a blank "
          "line, and put the final answer in \\boxed{{}}.\n\n{question}")


def hash_split(uid: str) -> str:
  """"train" or "test" for a problem of a single-file task: the parity of the sha256 of
  its uid, so the split is the same on every machine and in any file order."""
  return "train" if hashlib.sha256(uid.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def _parse_line(line: str, where: str) -> Optional[task_lib.Problem]:
  """The problem on one JSONL line, or None for a level outside 1..5."""
  fix = "each line must be one JSON object with problem, solution, level and unique_id"
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: not JSON ({e.msg}); {fix}") from e
  if not isinstance(row, dict):
    raise UserError(f"{where}: a JSON {type(row).__name__}, not an object; {fix}")
  missing = [k for k in ("problem", "solution", "level", "unique_id") if k not in row]
  if missing:
    raise UserError(f"{where}: missing key(s) {', '.join(missing)}; {fix}")
  if not isinstance(row["level"], str) or row["level"] not in LEVELS:
    return None
  answer = row.get("answer")
  if answer is None:
    answer = extract_boxed(str(row["solution"]))
    if answer is None:
      raise UserError(f"{where}: no \"answer\" key and no \\boxed{{}} answer in the "
                      "solution; add an \"answer\" field")
  return task_lib.Problem(uid=str(row["unique_id"]), question=str(row["problem"]),
                          answer=str(answer), level=LEVELS[row["level"]],
                          solution=str(row["solution"]))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple:
  del mtime_ns, size  # part of the cache key only: an edited file is read again
  problems, skipped = [], 0
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        problem = _parse_line(line, f"{path} line {number}")
        if problem is None:
          skipped += 1
        else:
          problems.append(problem)
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read MATH file {path} ({e}); pass math_task.path / "
                    "train_path of a readable JSONL file") from e
  if skipped:  # the full MATH train set has a few "Level ?" problems
    print(f"{path}: skipped {skipped} problems whose level is not Level 1..5")
  return tuple(problems)


def load_problems(path: str) -> list[task_lib.Problem]:
  """The problems of the JSONL file `path`, in file order; UserError if unreadable."""
  path = os.path.normpath(path)
  try:
    stat = os.stat(path)
  except OSError as e:
    raise UserError(f"MATH file {path} not found ({e.strerror}); set math_task.path to a "
                    "JSONL file of the MATH schema (see shared/data/README.md)") from e
  return list(_load_cached(path, stat.st_mtime_ns, stat.st_size))


@dataclasses.dataclass(frozen=True)
class MathTask(task_lib.Task):
  """MATH competition problems for an instruct model; graded by `is_equiv`.

  path: the JSONL file ("" = MATH-500 in ../shared/data). train_path: a separate
  "train" file, or "" to split `path` in two by `hash_split`.
  unboxed_answers: when a solution has no `\\boxed{}`, take its answer from "the
    answer is X" or its last line's last number (`extract_unboxed`); off by default.
  """

  name: str = "math500"
  path: str = ""
  train_path: str = ""
  step_delimiter: str = "\n\n"
  chat: bool = True
  splits: tuple = SPLITS
  unboxed_answers: bool = False

  def problems(self, split: str) -> list[task_lib.Problem]:
    if split not in SPLITS:
      raise UserError(f"task {self.name!r} has no split {split!r}; expected one of {SPLITS}")
    path = self.path or DEFAULT_PATH
    if self.train_path:
      problems = load_problems(self.train_path if split == "train" else path)
    else:
      problems = [p for p in load_problems(path) if hash_split(p.uid) == split]
    if not problems:
      raise UserError(f"task {self.name!r} split {split!r} has no problems (file "
                      f"{self.train_path if split == 'train' and self.train_path else path})")
    return problems

  def prompt(self, problem: task_lib.Problem) -> str:
    return PROMPT.format(question=problem.question)

  def extract_answer(self, text: str) -> Optional[str]:
    boxed = extract_boxed(text)
    if boxed is None and self.unboxed_answers:
      return extract_unboxed(text)
    return boxed

  def is_correct(self, answer: Optional[str], problem: task_lib.Problem) -> bool:
    return answer is not None and is_equiv(answer, problem.answer)

  def same_answer(self, a: str, b: str) -> bool:
    return is_equiv(a, b)

  def answer_key(self, answer: str) -> None:
    # Equal answers can have different spellings (`0.5`, `\frac12`): `answer_ids`
    # compares them pairwise with `same_answer`.
    del answer
    return None


@gin.configurable
def math_task(path: str = "", train_path: str = "", name: str = "math500",
              unboxed_answers: bool = False) -> MathTask:
  """Registers (or replaces) the MATH task `name`; see `MathTask`. Files are read on the
  first `problems()` call."""
  return task_lib.register(MathTask(name=name, path=path, train_path=train_path,
                                    unboxed_answers=unboxed_answers))


task_lib.register_factory("math500", math_task)
