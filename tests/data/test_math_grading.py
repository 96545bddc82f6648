"""Tests of ttc.data.math.grading: boxed-answer extraction and answer equivalence.

Pairs are (pred, ref); refs are real MATH-500 answers where the case allows.
"""

import json
import os
import random
import signal
import sys
import threading
import time

import pytest

from ttc.data.math import extract_boxed, grading, is_equiv, normalize

MATH500 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                       "math500.jsonl")


def _math500_answers() -> list[str]:
  with open(MATH500, encoding="utf-8") as f:
    return [json.loads(line)["answer"] for line in f]


# ----------------------------------------------------------------------------- extract_boxed

@pytest.mark.parametrize("text,expected", [
    ("so $\\boxed{5}$.", "5"),
    ("first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last one
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{1\\pm\\sqrt{5},-2\\}}", "\\{1\\pm\\sqrt{5},-2\\}"),  # escaped braces
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\fbox{42}", "42"),
    ("The answer is $\\boxed 5$.", "5"),
    ("The answer is \\boxed 17.", "17"),
    ("\\boxed {  x+1 }", "x+1"),
    ("\\boxed{\\boxed{7}}", "7"),
])
def test_extract_boxed(text, expected):
  assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", [
    "no box here", "", "\\boxed{1", "\\boxed{\\frac{1}{2}", "\\boxed{}", "\\boxed{  }",
    "\\boxedfoo{3}", "\\boxed", "\\boxed{1} and then \\boxed{2", None, 5,
])
def test_extract_boxed_none(text):
  assert extract_boxed(text) is None


def test_extract_boxed_of_math500_solutions():
  with open(MATH500, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  for row in rows[:100]:
    boxed = extract_boxed(row["solution"])
    assert boxed is not None, row["unique_id"]
    assert is_equiv(boxed, row["answer"]), (row["unique_id"], boxed, row["answer"])


# ----------------------------------------------------------------------------- is_equiv

EQUAL = [
    # fractions and decimals
    ("\\frac12", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{17}{50}", "\\dfrac{17}{50}"),
    ("0.34", "\\dfrac{17}{50}"),
    ("\\frac{4}{3}", "\\frac43"),
    ("\\frac{5}{9}", "\\frac 59"),
    ("1.8", "1\\frac{4}{5}"),  # a mixed number
    ("0.0000672", ".0000672"),
    ("1.250", "1.25"),
    ("5.0", "5"),
    ("-\\frac{35}{9}", "\\frac{-35}{9}"),
    # tuples, intervals, sets, matrices
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(6, 31, -1)", "(6,31,-1)"),
    ("(3, 4]", "(3,4]"),
    ("(\\frac35,\\frac83]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]"),
    ("[-2,7]", "x \\in [-2,7]"),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("\\{2,1\\}", "\\{1,2\\}"),
    ("\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}"),
    ("3,7,5", "3, 5, 7"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
     "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"),
    # roots, pi, expressions
    ("\\sqrt2", "\\sqrt{2}"),
    ("11\\sqrt{2}", "11\\sqrt2"),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}"),
    ("\\pi", "\\pi"),
    ("2\\pi+18", "18+2\\pi"),
    ("-6+3x+x^3", "x^3+3x-6"),
    ("\\frac{11}{20}+\\frac{9a}{20}", "\\frac{11+9a}{20}"),
    # units, degrees, text, money, thousands, percent
    ("30", "30^\\circ"),
    ("30^{\\circ}", "30^\\circ"),
    ("10", "10\\text{ cm}"),
    ("864", "864 \\mbox{ inches}^2"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
    ("5.4", "5.4 \\text{ cents}"),
    ("Evelyn", "\\text{Evelyn}"),
    ("(C)", "\\text{(C)}"),
    ("1000", "1,000"),
    ("10080", "10,\\!080"),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
    ("32348", "\\$32,\\!348"),
    ("\\$18.90", "18.9"),
    ("15\\%", "0.15"),
    # an assignment around the value
    ("x=3", "3"),
    ("k = \\frac{14}{3}", "\\frac{14}{3}"),
]

NOT_EQUAL = [
    ("[1,2)", "(1,2]"),  # intervals: ends matter
    ("(1,2)", "[1,2]"),
    ("(-1,6)", "(-1,6]"),
    ("2\\pi", "6.28"),  # 6.28 is only close to 2 pi
    ("6.28", "2\\pi"),
    ("3.14", "\\pi"),
    ("0.333", "\\frac13"),
    ("0.577", "\\frac{\\sqrt{3}}{3}"),
    ("\\frac{1}{3}", "\\frac{1}{2}"),
    ("\\frac45", "1\\frac{4}{5}"),
    ("-\\frac{\\pi}{6}", "\\frac{\\pi}{6}"),
    ("-0.15", "0.15"),
    ("15", "0.15"),
    ("585", "58,500"),
    ("100", "1,000"),
    ("(1,2)", "(2,1)"),  # tuples: order matters
    ("(6,31,1)", "(6,31,-1)"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("\\begin{pmatrix}2\\\\1\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix}1 & 2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\sqrt{3}", "\\sqrt{2}"),
    ("2\\sqrt{5}", "5\\sqrt{2}"),
    ("x^3+3x+6", "x^3+3x-6"),
    ("31", "30^\\circ"),
    ("11", "10\\text{ cm}"),
    ("\\text{odd}", "\\text{even}"),
    ("\\text{(B)}", "\\text{(C)}"),
    ("Navin", "\\text{Evelyn}"),
    ("(0,9)\\cup(9,37)", "(0,9) \\cup (9,36)"),
    ("", "0"),
    ("   ", ""),
    ("=6b", "6"),  # a number inside junk is not the answer
]


@pytest.mark.parametrize("pred,ref", EQUAL)
def test_equal(pred, ref):
  assert is_equiv(pred, ref) is True


@pytest.mark.parametrize("pred,ref", NOT_EQUAL)
def test_not_equal(pred, ref):
  assert is_equiv(pred, ref) is False


def test_every_math500_answer_equals_itself_and_not_its_neighbour():
  answers = _math500_answers()
  for a in answers:
    assert is_equiv(a, a), a
  distinct = [(a, b) for a, b in zip(answers, answers[1:]) if normalize(a) != normalize(b)]
  wrong = [(a, b) for a, b in distinct[:100] if is_equiv(a, b)]
  assert not wrong


@pytest.mark.parametrize("pred,ref", [(None, "1"), ("1", None), (1, 1), (b"1", "1"),
                                      (["1"], "1"), ({}, {})])
def test_non_strings_are_not_equal(pred, ref):
  assert is_equiv(pred, ref) is False


@pytest.mark.parametrize("text,expected", [
    ("\\dfrac12", "\\frac{1}{2}"),
    ("\\left( 3, \\tfrac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\sqrt3+\\frac1{2}", "\\sqrt{3}+\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("10,\\!080", "10080"),
    ("1{,}000", "1000"),
    ("\\$5.00", "5"),
    ("30^{\\circ}", "30"),
    ("10\\text{ cm}", "10"),
    ("\\text{(C)}", "(C)"),
    ("x = 5.", "5"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
])
def test_normalize(text, expected):
  assert normalize(text) == expected


# ----------------------------------------------------------------------------- time limits

def test_too_big_answers_are_quick_and_not_equal():
  start = time.monotonic()
  assert is_equiv("9^{9^{9^9}}", "1") is False
  assert is_equiv("9^{9^{9^9}}", "9^{9^{9^9}}") is True  # the same string still is
  assert is_equiv("10000000!", "1") is False
  assert time.monotonic() - start < 1.0


def test_slow_comparison_is_cut_off(monkeypatch):
  # Equal, but sympy needs ~0.1 s to see it (more on a busy machine): cut off at 0.01 s
  # it counts as not equal, without a restart; with the normal limit it is equal.
  pair = ("(1+x)^{99}", "(1+x)^{98}\\cdot(1+x)")
  worker = grading._Worker()
  try:
    assert worker.verify("1", "1") is True  # started
    process = worker.proc
    monkeypatch.setattr(grading, "SOFT_LIMIT_S", 0.01)
    start = time.monotonic()
    assert worker.verify(*pair) is False
    assert time.monotonic() - start < 0.01 + grading.HARD_GRACE_S
    assert worker.proc is process and process.poll() is None  # still the same worker
    monkeypatch.undo()
    assert worker.verify(*pair) is True
  finally:
    worker._stop()


def _fake_worker(tmp_path, body: str) -> str:
  path = tmp_path / "worker.py"
  path.write_text("import sys, time\n" + body)
  return str(path)


def test_stuck_worker_is_killed_and_restarted(tmp_path, monkeypatch):
  # A worker that says ready and then never answers: the signal-proof case.
  monkeypatch.setattr(grading, "_WORKER_PATH", _fake_worker(
      tmp_path, "print('ready', flush=True)\nfor line in sys.stdin:\n  time.sleep(3600)\n"))
  monkeypatch.setattr(grading, "SOFT_LIMIT_S", 0.1)
  monkeypatch.setattr(grading, "HARD_GRACE_S", 0.2)
  worker = grading._Worker()
  start = time.monotonic()
  assert worker.verify("1", "1") is False
  assert time.monotonic() - start < 5
  assert worker.proc is None  # killed
  assert worker.verify("2", "2") is False  # a new one started, and killed again
  assert not worker.unavailable


def test_missing_math_verify_falls_back_to_strings(tmp_path, monkeypatch):
  monkeypatch.setattr(grading, "_WORKER_PATH", _fake_worker(
      tmp_path, "print('unavailable: ModuleNotFoundError', flush=True)\n"))
  worker = grading._Worker()
  monkeypatch.setattr(grading, "_worker", worker)
  assert worker.verify("1", "1") is False
  assert worker.unavailable.startswith("unavailable")
  # `__wrapped__`: the function below the cache, so that this test's answers stay out.
  assert grading.cached_equiv.__wrapped__("\\dfrac12", "0.5") is True  # the string layer
  assert grading.cached_equiv.__wrapped__("\\{2,1\\}", "\\{1,2\\}") is False  # needs sympy


def test_works_off_the_main_thread_and_keeps_the_callers_alarm():
  fired = []
  previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
  signal.setitimer(signal.ITIMER_REAL, 30.0)
  try:
    results = []
    thread = threading.Thread(target=lambda: results.append(
        is_equiv("\\{3,4\\}", "\\{4,3\\}")))
    thread.start()
    thread.join(30)
    assert results == [True]
    assert is_equiv("\\{5,4\\}", "\\{4,5\\}") is True  # and on the main thread
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # the caller's timer still runs
    assert not fired
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_results_are_cached_and_repeatable():
  grading.cached_equiv.cache_clear()
  first = [is_equiv("\\{1,2\\}", "\\{2,1\\}"), is_equiv("[1,2)", "(1,2]")]
  info = grading.cached_equiv.cache_info()
  second = [is_equiv("\\{1,2\\}", "\\{2,1\\}"), is_equiv("[1,2)", "(1,2]")]
  assert first == second == [True, False]
  assert grading.cached_equiv.cache_info().hits == info.hits + 2


# ----------------------------------------------------------------------------- fuzz

COMMANDS = [
    "\\frac", "\\dfrac", "\\sqrt", "\\left(", "\\right)", "\\left[", "\\right]", "\\{", "\\}",
    "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\", "&", "\\boxed{", "\\fbox", "\\text{",
    "\\mbox{ cm}", "\\infty", "\\pi", "\\cup", "\\le", "\\neq", "\\pm", "\\cdot", "\\times",
    "\\int", "\\sum_{n=1}^\\infty", "\\lim_{x\\to 0}", "\\log", "\\sin", "^\\circ", "\\%",
    "\\$", "\\!", "\\,", "\\binom", "\\overline", "\\mathbb{R}", "\\in", "=", "!", "\\xyzzy",
    "\\",
]
HUGE = ["9^{9^{9^9}}", "10^{10^{10}}", "2^{2^{2^{2^{2}}}}", "(1+x)^{999}", "100000000!",
        "10^{100000}", "x^{99999999}", "\\binom{1000000000}{500000000}",
        "9999999999999999999^{99}"]
ALPHABET = "0123456789+-*/^_{}()[],.=<>|!\\ abcxyzABC\n$&'\"~`?:;@#%πé√∞"
MAX_FUZZ_CHARS = 200_000  # "very long" without Python loops over megabytes


def mutate(text: str, rng: random.Random) -> str:
  """1-4 random edits of `text`: delete/insert/swap characters, insert LaTeX commands,
  runs of unbalanced brackets, huge numbers, or repeat the whole string."""
  for _ in range(rng.randint(1, 4)):
    op, i = rng.random(), rng.randint(0, len(text))
    if op < 0.2:
      text = text[:i] + text[i + 1:]
    elif op < 0.4:
      text = text[:i] + rng.choice(ALPHABET) + text[i:]
    elif op < 0.5 and len(text) > 1:
      i = min(i, len(text) - 2)
      text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
    elif op < 0.75:
      text = text[:i] + rng.choice(COMMANDS) + text[i:]
    elif op < 0.85:
      text = text[:i] + rng.choice("{}{{}}(([]") * rng.randint(1, 30) + text[i:]
    elif op < 0.95:
      text = text[:i] + rng.choice(HUGE) + text[i:]
    else:
      text = ((text + rng.choice(ALPHABET)) * rng.randint(50, 3000))[:MAX_FUZZ_CHARS]
  return text


def _fuzz(num_strings: int, seed: int) -> float:
  answers = _math500_answers()
  rng = random.Random(seed)
  start = time.monotonic()
  slowest = 0.0
  for k in range(num_strings):
    ref = rng.choice(answers)
    pred = mutate(ref, rng)
    call = time.monotonic()
    result = is_equiv(pred, ref) if k % 2 else is_equiv(ref, pred)
    assert isinstance(result, bool), (pred[:200], ref)
    boxed = extract_boxed(pred)
    assert boxed is None or isinstance(boxed, str)
    boxed = extract_boxed(f"\\boxed{{{pred}}}")
    assert boxed is None or isinstance(boxed, str)
    if ("\\boxed" not in pred and "\\fbox" not in pred and grading.braces_balanced(pred)
        and grading.braces_balanced(f"{{{pred}}}")):  # and no `\` escapes the last brace
      assert boxed == (pred.strip() or None), pred[:200]
    slowest = max(slowest, time.monotonic() - call)
  # One call is bounded by the limits (plus starting the worker once).
  assert slowest < grading.SOFT_LIMIT_S + grading.HARD_GRACE_S + grading.START_LIMIT_S
  return time.monotonic() - start


def test_fuzz_never_raises_or_hangs():
  seconds = _fuzz(1_500, seed=0)
  print(f"fuzz: 1,500 strings in {seconds:.1f} s")
  assert seconds < 300


@pytest.mark.slow
def test_fuzz_10000_never_raises_or_hangs():
  seconds = _fuzz(10_000, seed=1)
  print(f"fuzz: 10,000 strings in {seconds:.1f} s")
  assert seconds < 1800


def test_no_heavy_imports():
  # Importing the task must stay cheap: sympy / math-verify live in the worker.
  code = ("import sys, ttc.data.math; "
          "print(any(m in sys.modules for m in ('sympy', 'math_verify', 'jax', 'tensorflow')))")
  import subprocess
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.join(os.path.dirname(__file__), "..", ".."), check=True)
  assert out.stdout.strip() == "False"
