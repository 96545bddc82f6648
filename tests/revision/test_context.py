"""Tests for ttc/revision/context.py: which attempts a revision model sees."""

import pytest

from ttc.data import arith_task, vocab
from ttc.data import task as task_lib
from ttc.revision import context


def test_the_last_four_attempts_are_kept_in_order():
  attempts = [f"a{i}" for i in range(7)]
  assert context.MAX_CONTEXT_ATTEMPTS == 4
  assert context.context_attempts(attempts) == ["a3", "a4", "a5", "a6"]
  assert context.context_attempts(attempts[:3]) == ["a0", "a1", "a2"]
  assert context.context_attempts(attempts, max_attempts=1) == ["a6"]
  assert context.context_attempts(attempts, max_attempts=0) == []  # not attempts[-0:]
  assert context.context_attempts(()) == []
  with pytest.raises(ValueError, match="max_attempts"):
    context.context_attempts(attempts, max_attempts=-1)


def test_arith_revision_prompt_shows_the_last_four_in_the_character_alphabet():
  task = arith_task.ArithTask()
  problem = task_lib.Problem(uid="u", question="(1+2)*3", answer="9", level=2)
  attempts = [f"1+2=3|3*3\n3*3={n}|{n}\n\\boxed{{{n}}}\n" for n in range(5, 11)]
  text = context.revision_prompt(task, problem, attempts)
  # The question line, then the last four attempts (5 and 6 dropped), each closed by "|".
  assert text == "(1+2)*3\n" + "".join(
      f"1+2=3|3*3\n3*3={n}|{n}\n\\boxed{{{n}}}\n|\n" for n in range(7, 11))
  assert vocab.UNK_ID not in vocab.CharVocabulary().encode(text)
  assert context.revision_prompt(task, problem, []) == task.prompt(problem)


def test_default_revision_prompt_numbers_the_kept_attempts():
  class Plain(task_lib.Task):
    name = "plain"

    def problems(self, split):
      return []

    def prompt(self, problem):
      return f"Solve: {problem.question}"

    def extract_answer(self, text):
      return None

    def is_correct(self, answer, problem):
      return False

  problem = task_lib.Problem(uid="u", question="1+1", answer="2", level=1)
  text = context.revision_prompt(Plain(), problem, ["x0", " x1\n", "x2", "x3", "x4"])
  # x0 dropped; the kept four numbered 1..4 and stripped of surrounding whitespace.
  assert text == ("Solve: 1+1\n\nEarlier attempts at this problem, oldest first; they may be "
                  "wrong:\n\nAttempt 1:\nx1\n\nAttempt 2:\nx2\n\nAttempt 3:\nx3\n\n"
                  "Attempt 4:\nx4\n\nWrite a new solution that corrects them.")
  assert context.revision_prompt(Plain(), problem, []) == "Solve: 1+1"
