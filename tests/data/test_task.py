"""Tests for ttc/data/task.py: the Task defaults every task inherits, and the registry."""

import pytest

from ttc.data import task as task_lib
from ttc.errors import UserError


class _Blank(task_lib.Task):
  """Steps end at a blank line; answers after 'answer:'; problems per level 1..3."""

  name = "blank_lines"
  step_delimiter = "\n\n"

  def problems(self, split):
    if split != "test":
      raise UserError(f"no split {split}")
    return [task_lib.Problem(uid=f"u{i}", question=f"q{i}", answer=str(i), level=1 + i % 3)
            for i in range(9)]

  def prompt(self, problem):
    return problem.question

  def extract_answer(self, text):
    head, sep, tail = text.rpartition("answer:")
    return tail.strip() if sep else None

  def is_correct(self, answer, problem):
    return answer == problem.answer


@pytest.mark.parametrize("text", [
    "a\n\nbb\n\nanswer: 3",
    "a\n\nbb\n\nanswer: 3\n\n",
    "\n\na\n\n\n\nbb",
    "one step only",
    "",
])
def test_step_end_offsets_point_at_the_last_delimiter_character(text):
  task = _Blank()
  steps, ends = task.split_steps(text), task.step_end_offsets(text)
  assert len(steps) == len(ends)
  start = 0
  for step, end in zip(steps, ends):
    # Each step's text lies before its end, and the end is the delimiter's last
    # character or the end of the text (where the EOS token goes).
    assert step in text[start:end + 1]
    assert end == len(text) or text[end - 1:end + 1] == "\n\n"
    start = end + 1


def test_single_character_delimiter_ends_at_the_newline():
  task = _Blank()
  object.__setattr__(task, "step_delimiter", "\n")
  assert task.step_end_offsets("ab\ncd\n\\boxed{1}") == [2, 5, 15]
  assert task.step_end_offsets("ab\n\ncd\n") == [2, 6]


def test_grade_and_answer_ids():
  task = _Blank()
  problem = task.problems("test")[3]
  assert task.grade("x\n\nanswer: 3", problem)
  assert not task.grade("x\n\nanswer: 4", problem) and not task.grade("no answer", problem)
  assert task.answer_ids(["3", " 3", None, "4", "3"]) == [0, 0, -1, 1, 0]


def test_pairwise_answer_ids_when_there_is_no_key():
  class Mod10(_Blank):
    def answer_key(self, answer):
      return None

    def same_answer(self, a, b):
      return int(a) % 10 == int(b) % 10

  assert Mod10().answer_ids(["1", "11", "2", None, "21", "12"]) == [0, 0, 1, -1, 0, 1]


def test_select_takes_the_first_of_each_level():
  picked = _Blank().select("test", max_per_level=2)
  assert [p.uid for p in picked] == ["u0", "u1", "u2", "u3", "u4", "u5"]
  assert len(_Blank().select("test")) == 9


def test_select_in_turns_takes_one_of_each_level_in_turn():
  # Levels of u0..u8: 1 2 3 1 2 3 1 2 3; a prefix covers every level.
  assert [p.uid for p in _Blank().select_in_turns("test", 4)] == ["u0", "u1", "u2", "u3"]

  class Uneven(_Blank):
    def problems(self, split):
      return [task_lib.Problem(uid=f"u{i}", question="q", answer="0", level=level)
              for i, level in enumerate([2, 2, 2, 1, 3])]

  assert [p.uid for p in Uneven().select_in_turns("test")] == ["u0", "u3", "u4", "u1", "u2"]
  assert len(Uneven().select_in_turns("test", 0)) == 5


def test_default_revision_prompt_shows_every_attempt_it_is_given():
  task, problem = _Blank(), _Blank().problems("test")[0]
  assert task.revision_prompt(problem, []) == task.prompt(problem)
  text = task.revision_prompt(problem, [f"try {i}\n" for i in range(6)])
  assert text.startswith(task.prompt(problem) + "\n\n")
  # Truncation to the last four is ttc.revision.context's, not the task's.
  positions = [text.index(f"Attempt {i + 1}:\ntry {i}\n\n") for i in range(6)]
  assert positions == sorted(positions)


def test_default_has_no_step_checker():
  task = _Blank()
  assert not task.has_step_checker and task.step_correctness(None, "x") is None
  assert task.vocabulary() is None


def test_registry():
  task = task_lib.register(_Blank())
  assert task_lib.get("blank_lines") is task and task_lib.get(task) is task
  built = []
  task_lib.register_factory("blank_lazy", lambda: built.append(1) or _Named("blank_lazy"))
  assert not built
  assert task_lib.get("blank_lazy").name == "blank_lazy" and built == [1]
  assert task_lib.get("blank_lazy").name == "blank_lazy" and built == [1]  # built once
  with pytest.raises(UserError, match="unknown task 'nope'"):
    task_lib.get("nope")


class _Named(_Blank):
  def __init__(self, name):
    self.name = name


def test_only_the_arith_task_module_and_the_registry_name_arith():
  """Stages reach the embedded task through the Task interface, never by importing it."""
  import os
  import re
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "ttc")
  naming = set()
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        if re.search(r"data import arith|data\.arith", open(path).read()):
          naming.add(os.path.relpath(path, root))
  assert naming == {os.path.join("data", "task.py"), os.path.join("data", "arith_task.py")}
