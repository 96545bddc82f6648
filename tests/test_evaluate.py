"""Tests for the evaluate stage's scoring: pass@k and majority vote over a task's answers."""

import itertools

import pytest

from ttc.data import task as task_lib
from ttc.evaluate import majority_correct
from ttc.stats import pass_at_k


@pytest.mark.parametrize("n, c, k", [(16, 0, 1), (16, 3, 1), (16, 3, 16), (8, 2, 4), (5, 5, 2)])
def test_pass_at_k_equals_brute_force_over_subsets(n, c, k):
  outcomes = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
  assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_needs_k_samples():
  with pytest.raises(ValueError):
    pass_at_k(4, 1, 16)


class _NumberTask(task_lib.Task):
  """Answers are numbers; '2' and '2.0' are the same answer only through same_answer."""

  name = "numbers"

  def problems(self, split):
    return []

  def prompt(self, problem):
    return problem.question

  def extract_answer(self, text):
    return text or None

  def is_correct(self, answer, problem):
    return answer is not None and self.same_answer(answer, problem.answer)

  def same_answer(self, a, b):
    return float(a) == float(b)

  def answer_key(self, answer):
    return None


PROBLEM = task_lib.Problem(uid="p", question="1+1", answer="2", level=1)


@pytest.mark.parametrize("answers, want", [
    (["2", "2.0", "3", "3"], True),  # a tie goes to the answer of the first row
    (["3", "2", "2.0", "3"], False),  # the same tie, 3 first
    (["3", "2", "2.0", "2.00"], True),  # 2 three times through same_answer
    ([None, None, "2"], True),  # unanswered samples never win
    ([None, None], False),
])
def test_majority_vote_groups_answers_with_the_task(answers, want):
  assert majority_correct(_NumberTask(), PROBLEM, answers) is want
