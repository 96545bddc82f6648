"""Tests of ttc.data.math.dataset: MathTask over MATH-500 and over user files."""

import json
import os

import gin
import pytest

from ttc.data import task as task_lib
from ttc.data.math import MathTask, dataset, math_task
from ttc.errors import UserError

MATH500 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                       "math500.jsonl")


@pytest.fixture(scope="module")
def task() -> MathTask:
  return MathTask()


def _row(uid: str, level: str = "Level 3", **extra) -> dict:
  row = {"problem": f"What is {uid}?", "solution": f"It is $\\boxed{{{len(uid)}}}$.",
         "answer": str(len(uid)), "subject": "Algebra", "level": level, "unique_id": uid}
  row.update(extra)
  return row


def _write(path, rows) -> str:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def test_default_path_is_shared_math500():
  assert os.path.samefile(dataset.DEFAULT_PATH, MATH500)


def test_splits_are_disjoint_cover_all_and_about_half(task):
  train, test = task.problems("train"), task.problems("test")
  train_ids, test_ids = {p.uid for p in train}, {p.uid for p in test}
  assert len(train_ids) == len(train) and len(test_ids) == len(test)  # no duplicates
  assert not train_ids & test_ids
  with open(MATH500, encoding="utf-8") as f:
    all_ids = {json.loads(line)["unique_id"] for line in f}
  assert train_ids | test_ids == all_ids and len(all_ids) == 500
  assert 200 <= len(train) <= 300 and 200 <= len(test) <= 300
  for split in (train, test):  # every level in both halves
    assert {p.level for p in split} == {1, 2, 3, 4, 5}


def test_splits_are_stable_and_keep_file_order(task):
  again = MathTask(path=MATH500)  # another instance, another spelling of the path
  for split in ("train", "test"):
    assert [p.uid for p in task.problems(split)] == [p.uid for p in again.problems(split)]
  with open(MATH500, encoding="utf-8") as f:
    order = [json.loads(line)["unique_id"] for line in f]
  positions = [order.index(p.uid) for p in task.problems("test")]
  assert positions == sorted(positions)
  # The split of a problem depends on its uid only, not on the file around it.
  assert dataset.hash_split("test/precalculus/807.json") == dataset.hash_split(
      "test/precalculus/807.json")
  assert {dataset.hash_split(p.uid) for p in task.problems("train")} == {"train"}


def test_problem_fields(task):
  by_uid = {p.uid: p for s in ("train", "test") for p in task.problems(s)}
  p = by_uid["test/precalculus/807.json"]
  assert p.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert p.level == 2
  assert p.question.startswith("Convert the point $(0,3)$")
  assert p.solution.endswith("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$")


def test_prompt_has_the_problem_and_asks_for_a_box(task):
  p = task.problems("test")[0]
  prompt = task.prompt(p)
  assert p.question in prompt
  assert "\\boxed{}" in prompt
  assert "step by step" in prompt and "blank line" in prompt
  assert task.chat and task.step_delimiter == "\n\n"


def test_reference_solutions_grade_correct(task):
  problems = task.problems("train")[:40]
  assert all(task.grade(p.solution, p) for p in problems)


def test_wrong_and_missing_answers_grade_wrong(task):
  p = task.problems("train")[0]
  assert not task.grade("So the answer is $\\boxed{12345678}$.", p)
  assert not task.grade("I do not know.", p)
  assert not task.is_correct(None, p)


def test_grade_accepts_other_spellings():
  p = task_lib.Problem(uid="u", question="q", answer="\\frac{14}{3}", level=1)
  task = MathTask()
  assert task.grade("Thus $x = \\boxed{\\dfrac{14}{3}}$.", p)
  assert task.grade("\\boxed{14/3}", p)
  assert not task.grade("\\boxed{4.67}", p)


def test_answer_ids_group_equal_answers(task):
  assert task.answer_ids(["\\frac12", "0.5", "1/3", None]) == [0, 0, 1, -1]
  assert task.answer_ids(["(1,2]", "[1,2)", "\\left(1, 2\\right]"]) == [0, 1, 0]
  assert task.answer_key("0.5") is None


def test_extract_answer_and_no_step_checker(task):
  assert task.extract_answer("a\n\nb \\boxed{7}\n\nso \\boxed{8}") == "8"
  assert task.extract_answer("no answer") is None
  assert not task.has_step_checker
  assert task.step_correctness(task.problems("test")[0], "x") is None
  assert task.split_steps("step 1\n\nstep 2\n\n\\boxed{3}") == ["step 1", "step 2", "\\boxed{3}"]


def test_unknown_split(task):
  with pytest.raises(UserError, match="has no split 'validation'"):
    task.problems("validation")


def test_registry_and_gin():
  got = task_lib.get("math500")
  assert isinstance(got, MathTask) and got.name == "math500"
  with gin.unlock_config():  # another test may have finalized the config
    gin.clear_config()
    try:
      gin.parse_config(f"math_task.name = 'math_gin'\nmath_task.path = '{MATH500}'")
      built = math_task()
    finally:
      gin.clear_config()
  assert task_lib.get("math_gin") is built and built.path == MATH500


def test_train_path_and_answer_from_solution(tmp_path, capsys):
  train = _write(tmp_path / "train.jsonl", [
      _row("a"), _row("bb", level="Level ?"),
      {k: v for k, v in _row("ccc", solution="So $\\boxed{\\frac{1}{2}}$.").items()
       if k != "answer"},
      _row("dddd", level="Level 5"),
  ])
  test = _write(tmp_path / "test.jsonl", [_row("e", level="Level 1"), _row("ff")])
  task = math_task(path=test, train_path=train, name="math_files")
  train_problems = task.problems("train")
  assert [p.uid for p in train_problems] == ["a", "ccc", "dddd"]  # file order, Level ? gone
  assert [p.level for p in train_problems] == [3, 3, 5]
  assert train_problems[1].answer == "\\frac{1}{2}"
  assert "skipped 1 problems" in capsys.readouterr().out
  assert [p.uid for p in task.problems("test")] == ["e", "ff"]  # all of `path`
  task.problems("train")
  assert "skipped" not in capsys.readouterr().out  # said once


@pytest.mark.parametrize("lines,match", [
    ([_row("a"), "{not json"], "line 2: not JSON"),
    ([_row("a"), _row("b"), {"problem": "p", "level": "Level 1"}],
     "line 3: missing key\\(s\\) solution, unique_id"),
    (["[1, 2]"], "line 1: a JSON list, not an object"),
    ([{k: v for k, v in _row("a", solution="no box").items() if k != "answer"}],
     "line 1: no \"answer\" key"),
])
def test_bad_lines(tmp_path, lines, match):
  path = _write(tmp_path / "bad.jsonl", lines)
  with pytest.raises(UserError, match=match) as error:
    MathTask(path=path).problems("test")
  assert path in str(error.value)


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(UserError, match="not found.*math_task.path"):
    MathTask(path=str(tmp_path / "nope.jsonl")).problems("train")
  binary = tmp_path / "binary.jsonl"
  binary.write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(UserError, match="cannot read MATH file"):
    MathTask(path=str(binary)).problems("train")


def test_empty_split(tmp_path):
  only = _write(tmp_path / "one.jsonl", [_row("a")])
  empty_split = "test" if dataset.hash_split("a") == "train" else "train"
  with pytest.raises(UserError, match=f"split '{empty_split}' has no problems"):
    MathTask(path=only).problems(empty_split)


def test_edited_file_is_read_again(tmp_path):
  path = tmp_path / "f.jsonl"
  _write(path, [_row("a"), _row("b")])
  task = MathTask(path=str(path), train_path=str(path))
  assert len(task.problems("test")) == 2
  _write(path, [_row("a"), _row("b"), _row("c")])
  assert len(task.problems("test")) == 3


@pytest.mark.parametrize("text, want", [
    ("Step 1.\n\nSo the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("The answer is: 12\n\nThe answer is 13.", "13"),
    ("We get 3 apples.\n\nIn total 1,000 or 7.5", "7.5"),
    ("no numbers here", None),
    ("", None),
])
def test_unboxed_answers_are_opt_in(text, want):
  from ttc.data.math import MathTask, extract_unboxed
  assert extract_unboxed(text) == want
  assert MathTask().extract_answer(text) is None  # off by default: \boxed{} only
  assert MathTask(unboxed_answers=True).extract_answer(text) == want
  assert MathTask(unboxed_answers=True).extract_answer(text + " \\boxed{9}") == "9"


def test_a_level_of_another_type_is_skipped_like_level_unknown(tmp_path, capsys):
  rows = [_row(u) for u in ("a", "bb", "ccc", "dddd", "eeeee", "ffffff")]
  rows[1]["level"] = ["Level 3"]  # unhashable: must not escape as a TypeError
  rows[2]["level"] = 3
  task = MathTask(path=_write(tmp_path / "levels.jsonl", rows))
  kept = task.problems("train") + task.problems("test")
  assert sorted(p.uid for p in kept) == ["a", "dddd", "eeeee", "ffffff"]
  assert "skipped 2 problems" in capsys.readouterr().out
