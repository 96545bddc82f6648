"""Final answers of MATH solutions: extraction (`extract_boxed`) and grading (`is_equiv`).

`is_equiv(pred, ref)` says whether a predicted final answer equals the reference:

  1. a normalised string comparison (Hendrycks et al.'s MATH normalisation, extended:
     spacing, `\\left`/`\\right`, `\\dfrac`, `\\frac12`, degrees, `\\text{}` units, `\\$`,
     `%`, thousands separators, `a/b`, `x = ...`), plus exact rational comparison of plain
     numbers (`0.5` = `\\frac{1}{2}` = `1/2`); cheap and deterministic, so it goes first;
  2. otherwise math-verify (sympy): intervals, sets, tuples, matrices, expressions.

Time limit. math-verify's own timeouts use `signal.alarm`: whole seconds, per parse and
per candidate pair (one call can take many seconds), only in the main thread (it raises
elsewhere), and they replace any SIGALRM handler of the caller while they run. And no
signal interrupts a thread stuck in one long C call. So math-verify runs in one child
process (`_verify_worker.py`) with its own timeouts off: there an interval timer bounds
each comparison to SOFT_LIMIT_S, and here the parent kills and later restarts the child
if no answer comes within SOFT_LIMIT_S + HARD_GRACE_S. This works from any thread and
leaves the caller's signals alone. A comparison that runs out of time, or that
math-verify cannot do (not installed, parse error, crash), counts as not equal.

Determinism: every step is deterministic except where a comparison meets the time limit,
which a loaded machine reaches sooner (pairs of MATH-500 answers take 17 ms on average
and 0.5 s at most on a busy 2-core machine); answers that are too long, too big
(`9^{9^9}`) or not LaTeX (unbalanced braces) skip math-verify to keep such cases rare.
Results are cached per (pred, ref): one process answers a pair one way.
"""

import atexit
import fractions
import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from typing import Optional

SOFT_LIMIT_S = 2.0  # math-verify time per comparison (parse both + compare); 4x margin
HARD_GRACE_S = 4.0  # extra wait before the worker counts as stuck and is killed
START_LIMIT_S = 60.0  # importing sympy on a busy 2-core machine can take seconds
MAX_START_FAILURES = 3  # then math-verify stays off for this process
MAX_VERIFY_CHARS = 300  # MATH-500 answers have <= 53 characters
MAX_RATIONAL_DIGITS = 40  # longer numbers are compared as strings only
MAX_NORMALIZE_CHARS = 2000  # longer "answers" are compared verbatim (keeps regexes fast)

_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_verify_worker.py")

# ----------------------------------------------------------------------------- extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


_ANSWER_IS = re.compile(r"answer is[:\s]*\$*\s*([^\n$]{1,60}?)\s*\$*\s*(?:\.\s|\.$|\n|$)",
                        re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def extract_unboxed(text: str) -> Optional[str]:
  """An answer from a solution without `\\boxed{}`: the last "answer is X", else the last
  number of the last non-empty line. For small models that rarely box their answer
  (SmolLM2-135M boxed 0 of 100 greedy MATH-500 solutions); None if neither is there."""
  if not isinstance(text, str):
    return None
  found = _ANSWER_IS.findall(text)
  if found:
    return found[-1].strip().rstrip(".") or None
  lines = [line for line in text.splitlines() if line.strip()]
  numbers = _NUMBER.findall(lines[-1]) if lines else []
  return numbers[-1] if numbers else None


def extract_boxed(text: str) -> Optional[str]:
  """The content of the last `\\boxed{...}` / `\\fbox{...}` in `text`, stripped.

  Nested braces are matched (escaped `\\{`, `\\}` do not count); `\\boxed 5` without
  braces gives the next space-free token (up to `$`, a final `.` or `,` dropped). None
  when there is none, when the last one is unbalanced, or when it is empty. Never raises.
  """
  if not isinstance(text, str):
    return None
  last = None
  for last in _BOX_COMMAND.finditer(text):
    pass
  if last is None:
    return None
  i, n = last.end(), len(text)
  while i < n and text[i].isspace():
    i += 1
  if i < n and text[i] == "{":
    depth, start = 0, i + 1
    while i < n:
      c = text[i]
      if c == "\\":
        i += 2  # `\{`, `\}` and `\\` are single tokens
        continue
      if c == "{":
        depth += 1
      elif c == "}":
        depth -= 1
        if depth == 0:
          return text[start:i].strip() or None
      i += 1
    return None  # unbalanced
  if i == last.end():
    return None  # `\boxed` followed by neither a space nor a brace
  token = re.match(r"[^\s$]*", text[i:]).group().rstrip(".,")
  return token or None


# ----------------------------------------------------------------------------- normalisation

# `\\` (a matrix row break) is matched first so that its second backslash and a
# following space are not read as the spacing command `\ `.
_SPACING = re.compile(r"(\\\\)|\\[,;:! ]|\\(?:quad|qquad|displaystyle)(?![A-Za-z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z])|°")
_UNIT_SUFFIX = re.compile(
    r"^(.+?)\s*\\(?:text|textbf|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z ]*\}(?:\^\{?[23]\}?)?$")
_TEXT = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\s*\{([^{}]*)\}")
_SQRT_BARE = re.compile(r"\\sqrt\s*([^\s{\[\\])")
_FRAC_ARG = r"(\{[^{}]*\}|[^\s{}\\])"
_FRAC_BARE = re.compile(r"\\frac" + _FRAC_ARG + _FRAC_ARG)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SLASH = re.compile(r"(-?)(\d+)/(\d+)")
_INTEGER_POINT_ZERO = re.compile(r"(-?\d+)\.0+")
_DECIMAL = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_FRAC_NUMBERS = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")


def _brace(arg: str) -> str:
  return arg if arg.startswith("{") else "{" + arg + "}"


def normalize(answer: str) -> str:
  """A canonical spelling of a final answer, for string comparison.

  Follows the MATH paper's `strip_string` (Hendrycks et al., 2021), so `\\dfrac12`,
  `\\frac{1}{2}` and `1/2` all become `\\frac{1}{2}`. Every regex is linear in the length.
  """
  s = answer.strip().replace("\n", "")
  s = _SPACING.sub(lambda m: m.group(1) or " ", s)
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = _LEFT_RIGHT.sub("", s)
  s = _DEGREES.sub("", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.strip().rstrip(".").strip()
  unit = _UNIT_SUFFIX.match(s)
  if unit:  # `10\text{ cm}`: the number is the answer; a lone `\text{(C)}` is kept
    s = unit.group(1)
  s = _TEXT.sub(r"\1", s)
  if s.count("=") == 1:  # `x = 5`, `k=5`: the value is the answer
    lhs, rhs = s.split("=")
    if len(lhs.strip()) <= 2:
      s = rhs
  s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
  s = s.replace(" ", "").replace("{,}", ",")
  for _ in range(4):  # nested `\frac1{\frac12}` needs one pass per level
    fixed = _FRAC_BARE.sub(lambda m: "\\frac" + _brace(m.group(1)) + _brace(m.group(2)), s)
    if fixed == s:
      break
    s = fixed
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  if s.startswith("."):
    s = "0" + s
  s = s.replace("{.", "{0.")
  point_zero = _INTEGER_POINT_ZERO.fullmatch(s)
  if point_zero:
    s = point_zero.group(1)
  slash = _SLASH.fullmatch(s)
  if slash:
    s = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
  return s


def _as_rational(normalized: str) -> Optional[fractions.Fraction]:
  """The exact value of a plain number or `\\frac{a}{b}` of numbers, else None."""
  if len(normalized) > 2 * MAX_RATIONAL_DIGITS + 12:
    return None
  try:
    if _DECIMAL.fullmatch(normalized):
      return fractions.Fraction(normalized)
    frac = _FRAC_NUMBERS.fullmatch(normalized)
    if frac:
      value = fractions.Fraction(frac.group(2)) / fractions.Fraction(frac.group(3))
      return -value if frac.group(1) else value
  except (ValueError, ZeroDivisionError):
    pass
  return None


def strings_equiv(pred: str, ref: str) -> bool:
  """Step 1 of `is_equiv`: equal after `normalize`, or the same rational number."""
  if max(len(pred), len(ref)) > MAX_NORMALIZE_CHARS:
    return pred.strip() == ref.strip() != ""
  a, b = normalize(pred), normalize(ref)
  if a == b:
    return bool(a)
  x, y = _as_rational(a), _as_rational(b)
  return x is not None and x == y


# ----------------------------------------------------------------------------- math-verify

# Answers whose exact value sympy cannot reach within any time limit (`9^{9^9}`,
# `2^{10000}`, `(1+x)^{999}` expanded, `\binom{10^9}{5 \cdot 10^8}`, `10000000!`):
# compared as strings only, so they cost microseconds instead of SOFT_LIMIT_S.
_TOO_BIG = re.compile(r"\^\s*\{[^{}]*(?:\^|!|\d{5})|\^\s*\d{5}|\)\s*\^\s*\{?\s*\d{3}"
                      r"|\d{7}\s*!|\\binom\s*\{?\s*\d{7}")


def braces_balanced(text: str) -> bool:
  """Whether the `{` and `}` of `text` pair up (escaped `\\{`, `\\}` not counted)."""
  depth, i, n = 0, 0, len(text)
  while i < n:
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth < 0:
        return False
    i += 1
  return depth == 0


def _may_verify(answer: str) -> bool:
  """Whether math-verify should see `answer`. Not when it is too long or too big, nor
  when its braces do not pair up: such text is not LaTeX, math-verify would read some
  part of it, and `extract_boxed` never returns it."""
  return (len(answer) <= MAX_VERIFY_CHARS and braces_balanced(answer)
          and not _TOO_BIG.search(answer))


class _Worker:
  """The one math-verify child process of this process; see the module docstring."""

  def __init__(self):
    self.lock = threading.Lock()
    self.proc: Optional[subprocess.Popen] = None
    self.pid = 0  # of the process that started `proc`: a forked child starts its own
    self.start_failures = 0
    self.unavailable = ""  # why math-verify is off for good

  def _stop(self):
    proc, self.proc = self.proc, None
    if proc is not None and self.pid == os.getpid():
      try:
        proc.kill()
        proc.wait(timeout=5)
      except Exception:  # pylint: disable=broad-except
        pass

  def _readline(self, limit_s: float) -> str:
    """The next line of the child's output within `limit_s`, or "" (timeout or EOF)."""
    ready, _, _ = select.select([self.proc.stdout], [], [], limit_s)
    return self.proc.stdout.readline().strip() if ready else ""

  def _start(self) -> bool:
    try:
      self.proc = subprocess.Popen(
          [sys.executable, _WORKER_PATH], stdin=subprocess.PIPE,
          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
          start_new_session=True)  # a Ctrl-C for the caller is not one for the worker
      self.pid = os.getpid()
      hello = self._readline(START_LIMIT_S)
    except Exception as e:  # pylint: disable=broad-except
      hello = f"unavailable: {e}"
    if hello == "ready":
      self.start_failures = 0
      return True
    self._stop()
    self.start_failures += 1
    if hello.startswith("unavailable"):
      self.unavailable = hello
    elif self.start_failures >= MAX_START_FAILURES:
      self.unavailable = f"unavailable: the worker did not start {MAX_START_FAILURES} times"
    if self.unavailable:
      logging.warning("ttc.data.math: math-verify is off (%s); answers are compared as "
                      "normalised strings only. Install it: pip install -r requirements.txt",
                      self.unavailable)
    return False

  def verify(self, pred: str, ref: str) -> bool:
    """math-verify's verdict on `pred` against `ref`; False on timeout or any failure."""
    with self.lock:
      if self.unavailable:
        return False
      if self.proc is None or self.pid != os.getpid() or self.proc.poll() is not None:
        self.proc = None
        if not self._start():
          return False
      try:
        self.proc.stdin.write(json.dumps([pred, ref, SOFT_LIMIT_S]) + "\n")
        self.proc.stdin.flush()
        answer = self._readline(SOFT_LIMIT_S + HARD_GRACE_S)
      except Exception:  # pylint: disable=broad-except
        answer = ""
      if answer not in ("0", "1", "t", "e"):  # stuck or dead: the next call restarts it
        self._stop()
      return answer == "1"


_worker = _Worker()
atexit.register(_worker._stop)  # pylint: disable=protected-access


def is_equiv(pred: str, ref: str) -> bool:
  """Whether the predicted final answer `pred` equals the reference `ref` (both LaTeX
  snippets, e.g. from `extract_boxed`). Never raises (False for non-strings); at most
  about SOFT_LIMIT_S + HARD_GRACE_S seconds, plus START_LIMIT_S once to start the worker.
  Not symmetric in corner cases (math-verify's `x = 3` vs `3`), like math-verify."""
  if not isinstance(pred, str) or not isinstance(ref, str):
    return False
  return cached_equiv(pred, ref)


@functools.lru_cache(maxsize=1 << 16)
def cached_equiv(pred: str, ref: str) -> bool:
  """`is_equiv` of two strings. Cached: voting compares the same pairs again and again."""
  try:
    if strings_equiv(pred, ref):
      return True
    if not pred.strip() or not _may_verify(pred) or not _may_verify(ref):
      return False
    return _worker.verify(pred, ref)
  except Exception:  # pylint: disable=broad-except
    logging.exception("ttc.data.math: is_equiv failed; counted as not equal")
    return False
