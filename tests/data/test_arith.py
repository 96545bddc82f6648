"""Tests for ttc/data/arith.py: rendering, reference steps, split generation, grading."""

import time

import pytest

from ttc.data import arith

EXAMPLE_Q = "(17+25)*3-8"
EXAMPLE_SOLUTION = "17+25=42|42*3-8\n42*3=126|126-8\n126-8=118|118\n\\boxed{118}"


def test_worked_example_exact():
  steps, answer = arith.solve(arith.parse(EXAMPLE_Q))
  assert steps == ("17+25=42|42*3-8", "42*3=126|126-8", "126-8=118|118")
  assert answer == 118
  assert arith.format_prompt(EXAMPLE_Q) == "(17+25)*3-8\n"
  assert arith.format_solution(steps, answer) == EXAMPLE_SOLUTION


@pytest.mark.parametrize("text, rendered", [
    ("1-(2-3)", "1-(2-3)"),
    ("(1-2)-3", "1-2-3"),
    ("(1+2)-3", "1+2-3"),
    ("1+(2+3)", "1+(2+3)"),  # kept: the tree (and so the step order) differs from 1+2+3
    ("1+(2*3)", "1+2*3"),
    ("(1*2)+3", "1*2+3"),
    ("(1+2)*3", "(1+2)*3"),
    ("1*(2-3)", "1*(2-3)"),
    ("(1*2)*3", "1*2*3"),
    ("1*(2*3)", "1*(2*3)"),
    ("((4))", "4"),
])
def test_render_minimal_parens(text, rendered):
  assert arith.render(arith.parse(text)) == rendered
  assert arith.parse(rendered) == arith.parse(text)


@pytest.mark.parametrize("bad", ["", "1+", "(1+2", "1+2)", "1/2", "-1+2", "1 2"])
def test_parse_rejects(bad):
  with pytest.raises(ValueError):
    arith.parse(bad)


def test_reduces_leftmost_ready_node():
  # 2*3 is the leftmost node with two number children, though 1+... starts further left.
  steps, answer = arith.solve(arith.parse("1+2*3+(4-1)"))
  assert steps == ("2*3=6|1+6+(4-1)", "1+6=7|7+(4-1)", "4-1=3|7+3", "7+3=10|10")
  assert answer == 10


def test_generate_split_deterministic_and_records_levels():
  a = arith.generate_split("validation", 30, seed=3)
  b = arith.generate_split("validation", 30, seed=3)
  assert a == b
  assert a != arith.generate_split("validation", 30, seed=4)
  assert len(a) == 30 * len(arith.DEFAULT_LEVELS)
  for p in a:
    spec = arith.DEFAULT_LEVELS[p.level - 1]
    assert (p.num_ops, p.max_operand) == (spec.num_ops, spec.max_operand)
    assert len(p.steps) == p.num_ops
    assert p.question.count("+") + p.question.count("-") + p.question.count("*") == p.num_ops
    assert arith.step_correctness(p.question, p.solution) == [True] * (p.num_ops + 1)
    assert arith.grade(p.solution, p.answer)
    assert 0 <= p.answer <= arith.DEFAULT_MAX_VALUE
  # A bigger request extends a smaller one rather than reshuffling it.
  assert arith.generate_split("validation", 40, seed=3)[:30] == a[:30]


def test_values_stay_in_range():
  for p in arith.generate_split("train", 200, seed=1):
    for step in p.steps:
      lhs, _ = step.split("|")
      assert 0 <= int(lhs.split("=")[1]) <= arith.DEFAULT_MAX_VALUE
    leaves = [int(t) for t in p.question.replace("(", " ").replace(")", " ").replace(
        "+", " ").replace("-", " ").replace("*", " ").split()]
    assert max(leaves) <= p.max_operand


def test_splits_disjoint_and_unique():
  splits = {s: arith.generate_split(s, 60) for s in ("train", "validation", "test")}
  questions = {s: [p.question for p in ps] for s, ps in splits.items()}
  for s, qs in questions.items():
    assert len(set(qs)) == len(qs), s
    assert all(arith.split_of(q) == s for q in qs)
  assert not set(questions["train"]) & set(questions["validation"])
  assert not set(questions["train"]) & set(questions["test"])
  assert not set(questions["validation"]) & set(questions["test"])


def test_generate_split_speed():
  start = time.perf_counter()
  problems = arith.generate_split("train", 4000)
  assert len(problems) == 20_000
  assert time.perf_counter() - start < 4.0  # budget is ~2 s; slack for loaded CI machines


def test_exhausted_level_raises_with_fix():
  # Level 1 with operands <= 5 has only ~90 distinct questions in total.
  with pytest.raises(ValueError, match=r"level 1 .*raise max_operand"):
    arith.generate_split("train", 500, levels=(arith.LevelSpec(1, 5),))


def test_unknown_split_and_bad_percents():
  with pytest.raises(ValueError, match="unknown"):
    arith.generate_split("dev", 1)
  with pytest.raises(ValueError, match="sum to 100"):
    arith.generate_split("train", 1, split_percents=(("train", 50),))


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{12}", "12"),
    ("a \\boxed{1} b \\boxed{ 7 }", " 7 "),
    ("no box here", None),
    ("\\boxed{", None),
])
def test_extract_answer(text, expected):
  assert arith.extract_answer(text) == expected


@pytest.mark.parametrize("text, ok", [
    ("\\boxed{118}", True),
    ("x\n\\boxed{ 118 }\n", True),
    ("\\boxed{117}", False),
    ("\\boxed{118.0}", False),
    ("\\boxed{+118}", False),
    ("\\boxed{1_18}", False),
    ("\\boxed{}", False),
    ("\\boxed{abc}", False),
    ("118", False),
    ("", False),
    ("\x00\\boxed{{{118", False),
    (None, False),
])
def test_grade(text, ok):
  assert arith.grade(text, 118) is ok


def test_split_steps_drops_empty_lines():
  assert arith.split_steps("a\n\n b\n\n") == ["a", " b"]


def test_step_correctness_correct_solution():
  assert arith.step_correctness(EXAMPLE_Q, EXAMPLE_SOLUTION) == [True] * 4
  assert arith.first_wrong_step(EXAMPLE_Q, EXAMPLE_SOLUTION) is None
  # Spaces and redundant parentheses in `rest` are the same tree, so still correct.
  spaced = "17 + 25 = 42 | (42*3)-8\n42*3=126|126-8\n126-8=118|118\n\\boxed{118}"
  assert arith.first_wrong_step(EXAMPLE_Q, spaced) is None


@pytest.mark.parametrize("solution, first_wrong", [
    # arithmetic error in step 1
    ("17+25=42|42*3-8\n42*3=125|125-8\n125-8=117|117\n\\boxed{117}", 1),
    # wrong order: does 3-8 style reduction out of turn (42*3 must come before 126-8)
    ("17+25=42|42*3-8\n3-8=0|42*0\n42*0=0|0\n\\boxed{0}", 1),
    # skips the leftmost ready node
    ("42*3=126|126-8\n126-8=118|118\n\\boxed{118}", 0),
    # right value, wrong rest
    ("17+25=42|42*3+8\n42*3=126|126+8\n126+8=134|134\n\\boxed{134}", 0),
    # rest that changes the tree shape
    ("17+25=42|42*(3-8)\n\\boxed{118}", 0),
    # all steps right, wrong boxed answer
    ("17+25=42|42*3-8\n42*3=126|126-8\n126-8=118|118\n\\boxed{119}", 3),
    # a step after the expression is already a number
    ("17+25=42|42*3-8\n42*3=126|126-8\n126-8=118|118\n118+0=118|118\n\\boxed{118}", 3),
    # garbage line
    ("17+25=42|42*3-8\nhello\n\\boxed{118}", 1),
    # unparsable rest
    ("17+25=42|42*3-\n\\boxed{118}", 0),
])
def test_first_wrong_step(solution, first_wrong):
  labels = arith.step_correctness(EXAMPLE_Q, solution)
  assert arith.first_wrong_step(EXAMPLE_Q, solution) == first_wrong
  assert labels == [i < first_wrong for i in range(len(arith.split_steps(solution)))]


def test_boxed_after_wrong_step_is_wrong():
  # The right answer cannot rescue a solution whose earlier step was wrong.
  solution = "17+25=43|43*3-8\n\\boxed{118}"
  assert arith.step_correctness(EXAMPLE_Q, solution) == [False, False]
