"""The embedded synthetic task: multi-step integer arithmetic, one operation per step.

A problem is a binary tree over `+ - *` with leaves in [0, max_operand]. The reference solution
reduces the leftmost node whose children are both numbers, one line per reduction:

    (17+25)*3-8          <- prompt (question + "\\n")
    17+25=42|42*3-8      <- "{a}{op}{b}={c}|{rest}"
    42*3=126|126-8
    126-8=118|118
    \\boxed{118}

Because every step is checkable, `step_correctness` gives ground-truth step labels against which a
PRM can be scored. Pure Python: no TF, no jax, so evaluators and tests can import it cheaply.
"""

import dataclasses
import hashlib
import random
import re
from typing import Optional, Sequence, Union

STEP_DELIMITER = "\n"
OPS = ("+", "-", "*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}

# A node is either a number or (op, left, right). Tuples keep trees hashable and comparable.
Expr = Union[int, tuple]


@dataclasses.dataclass(frozen=True)
class LevelSpec:
  """Difficulty of one level: number of operations (= solution steps) and largest leaf."""

  num_ops: int
  max_operand: int

  def __post_init__(self):
    if self.num_ops < 1 or self.max_operand < 0:
      raise ValueError(f"LevelSpec needs num_ops >= 1 and max_operand >= 0, got {self}")


# Level i (1-based) has i operations: the one knob to tune difficulty. Level 1 has only a few
# thousand distinct questions, so max_operand sets how many each split can hold: at 50 it is
# 5,331 train / 280 validation / 302 test (at 20: 1,005 / 54 / 54). generate_split raises when a
# request exceeds that.
DEFAULT_LEVELS = (
    LevelSpec(num_ops=1, max_operand=50),
    LevelSpec(num_ops=2, max_operand=50),
    LevelSpec(num_ops=3, max_operand=50),
    LevelSpec(num_ops=4, max_operand=50),
    LevelSpec(num_ops=5, max_operand=50),
)
DEFAULT_MAX_VALUE = 999  # bound on every intermediate value and the answer

# (split, percent of the sha256 buckets). Assignment depends only on the question string, so the
# splits are disjoint by construction and stable across seeds and sizes.
SPLIT_PERCENTS = (("train", 90), ("validation", 5), ("test", 5))

# generate_split gives up on a level after this many draws in a row (scaled by 100 / percent)
# without a new question: the level's question space is exhausted for that split.
_STALL_DRAWS = 2_000


@dataclasses.dataclass(frozen=True)
class ArithProblem:
  """One problem with its reference solution. `steps` excludes the final `\\boxed{}` line."""

  uid: str
  question: str
  steps: tuple[str, ...]
  answer: int
  level: int
  num_ops: int
  max_operand: int

  @property
  def prompt(self) -> str:
    return format_prompt(self.question)

  @property
  def solution(self) -> str:
    return format_solution(self.steps, self.answer)


def format_prompt(question: str) -> str:
  return question + "\n"


def format_solution(steps: Sequence[str], answer: int) -> str:
  """Step lines then `\\boxed{answer}`, joined by STEP_DELIMITER, no trailing newline."""
  return STEP_DELIMITER.join([*steps, f"\\boxed{{{answer}}}"])


# ----------------------------------------------------------------------------- expressions


def _apply(op: str, a: int, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  return a * b


def render(expr: Expr) -> str:
  """Infix string with the fewest parentheses that still parse back to the same tree.

  Operators are left-associative, `*` binds tighter. A right child of equal precedence keeps its
  parentheses even where the value would not change (`a+(b+c)`), because the step order, and so
  the reference solution, depends on the tree's shape.
  """
  if isinstance(expr, int):
    return str(expr)
  op, left, right = expr
  left_s, right_s = render(left), render(right)
  if isinstance(left, tuple) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
    left_s = f"({left_s})"
  if isinstance(right, tuple) and _PRECEDENCE[right[0]] <= _PRECEDENCE[op]:
    right_s = f"({right_s})"
  return f"{left_s}{op}{right_s}"


_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def parse(text: str) -> Expr:
  """Parses `+ - * ( )` over non-negative integers (recursive descent; never eval).

  Raises:
    ValueError: if `text` is not a well-formed expression.
  """
  tokens = []
  for number, char in _TOKEN.findall(text.strip()):
    if number:
      tokens.append(int(number))
    elif char in "+-*()":
      tokens.append(char)
    else:
      raise ValueError(f"unexpected character {char!r} in {text!r}")
  pos = 0

  def peek():
    return tokens[pos] if pos < len(tokens) else None

  def take():
    nonlocal pos
    tok = peek()
    pos += 1
    return tok

  def factor():
    tok = take()
    if isinstance(tok, int):
      return tok
    if tok == "(":
      inner = expr()
      if take() != ")":
        raise ValueError(f"unbalanced parentheses in {text!r}")
      return inner
    raise ValueError(f"expected a number or '(' in {text!r}")

  def term():
    node = factor()
    while peek() == "*":
      node = (take(), node, factor())
    return node

  def expr():
    node = term()
    while peek() in ("+", "-"):
      node = (take(), node, term())
    return node

  tree = expr()
  if pos != len(tokens):
    raise ValueError(f"trailing tokens in {text!r}")
  return tree


def evaluate(expr: Expr) -> int:
  if isinstance(expr, int):
    return expr
  op, left, right = expr
  return _apply(op, evaluate(left), evaluate(right))


def reduce_once(expr: tuple) -> tuple:
  """The reference step: reduces the leftmost node whose children are both numbers.

  Reducible nodes are disjoint, so "leftmost" by the operator's in-order position is the first one
  a left-first search meets. Returns ((a, op, b, c), reduced_expr).
  """
  op, left, right = expr
  if isinstance(left, int) and isinstance(right, int):
    c = _apply(op, left, right)
    return (left, op, right, c), c
  if isinstance(left, tuple):
    red, left = reduce_once(left)
  else:
    red, right = reduce_once(right)
  return red, (op, left, right)


def solve(expr: Expr) -> tuple[tuple[str, ...], int]:
  """Reference solution: (step lines, answer). A bare number needs no steps."""
  steps = []
  while isinstance(expr, tuple):
    (a, op, b, c), expr = reduce_once(expr)
    steps.append(f"{a}{op}{b}={c}|{render(expr)}")
  return tuple(steps), expr


# ----------------------------------------------------------------------------- generation


def _random_expr(rng: random.Random, num_ops: int, max_operand: int, max_value: int):
  """A random tree with `num_ops` operators, or None if some value leaves [0, max_value].

  Returns (expr, value). Bailing out at the first bad value is the same distribution as
  rejecting the finished tree, only cheaper.
  """
  if num_ops == 0:
    v = rng.randint(0, max_operand)
    return v, v
  num_left = rng.randrange(num_ops)
  left = _random_expr(rng, num_left, max_operand, max_value)
  if left is None:
    return None
  right = _random_expr(rng, num_ops - 1 - num_left, max_operand, max_value)
  if right is None:
    return None
  op = OPS[rng.randrange(3)]
  v = _apply(op, left[1], right[1])
  if v < 0 or v > max_value:
    return None
  return (op, left[0], right[0]), v


def _bucket(question: str) -> int:
  """Stable bucket in [0, 100) of a question string (not Python's salted hash())."""
  digest = hashlib.sha256(question.encode()).digest()
  return int.from_bytes(digest[:8], "big") % 100


def split_of(question: str, split_percents=SPLIT_PERCENTS) -> str:
  """Which split a question belongs to; depends only on the question string."""
  bucket, edge = _bucket(question), 0
  for name, percent in split_percents:
    edge += percent
    if bucket < edge:
      return name
  raise ValueError(f"split_percents {split_percents} must sum to 100")


def generate_split(split: str,
                   num_per_level: int,
                   levels: Sequence[LevelSpec] = DEFAULT_LEVELS,
                   seed: int = 0,
                   max_value: int = DEFAULT_MAX_VALUE,
                   split_percents=SPLIT_PERCENTS) -> list[ArithProblem]:
  """`num_per_level` unique problems per level for one split, ordered by level.

  Each level draws from its own stream seeded by (seed, level, spec) and keeps the draws whose
  question hashes into `split`. All splits therefore see the same stream, so they are disjoint by
  question, and a larger `num_per_level` returns a superset of a smaller one.

  Raises:
    ValueError: unknown split, or a level whose question space is too small for the request.
  """
  percents = dict(split_percents)
  if sum(percents.values()) != 100:
    raise ValueError(f"split_percents {split_percents} must sum to 100")
  if not percents.get(split):
    raise ValueError(f"unknown or empty split {split!r}; expected one of {sorted(percents)}")
  stall_limit = _STALL_DRAWS * 100 // percents[split]
  problems, seen = [], set()
  for level, spec in enumerate(levels, start=1):
    rng = random.Random(f"{seed}/{level}/{spec.num_ops}/{spec.max_operand}/{max_value}")
    found, stalled = 0, 0
    while found < num_per_level:
      if stalled > stall_limit:
        raise ValueError(
            f"level {level} ({spec}) yielded only {found} of {num_per_level} unique {split!r} "
            f"questions: its question space is too small; raise max_operand or num_ops for that "
            f"level, or lower num_per_level")
      stalled += 1
      drawn = _random_expr(rng, spec.num_ops, spec.max_operand, max_value)
      if drawn is None:
        continue
      expr, _ = drawn
      question = render(expr)
      if question in seen or split_of(question, split_percents) != split:
        continue
      seen.add(question)
      steps, answer = solve(expr)
      uid = "arith-" + hashlib.sha256(question.encode()).hexdigest()[:16]
      problems.append(ArithProblem(uid=uid, question=question, steps=steps, answer=answer,
                                   level=level, num_ops=spec.num_ops,
                                   max_operand=spec.max_operand))
      found, stalled = found + 1, 0
  return problems


# ----------------------------------------------------------------------------- grading

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_INT = re.compile(r"[0-9]+")
_STEP = re.compile(r"\s*([0-9]+)\s*([-+*])\s*([0-9]+)\s*=\s*([0-9]+)\s*\|(.+)")
_BOXED_LINE = re.compile(r"\s*\\boxed\{[^{}]*\}\s*")


def extract_answer(text: str) -> Optional[str]:
  """Content of the last `\\boxed{...}` in `text`, or None."""
  if not isinstance(text, str):
    return None
  found = _BOXED.findall(text)
  return found[-1] if found else None


def answer_key(answer: str):
  """What makes two extracted answers equal: integers by value ('007' == '7'), else the text."""
  text = answer.strip()
  return int(text) if text.isdigit() else text


def is_answer(answer: Optional[str], value: int) -> bool:
  """Whether an extracted answer is the integer `value` (digits only; "007" is 7)."""
  return answer is not None and bool(_INT.fullmatch(answer.strip())) and int(answer) == value


def grade(text: str, answer: int) -> bool:
  """Exact integer match of the last boxed answer. Never raises."""
  return is_answer(extract_answer(text), answer)


def split_steps(solution_text: str) -> list[str]:
  """Solution lines (steps and the boxed line), empty lines dropped."""
  return [line for line in solution_text.split(STEP_DELIMITER) if line.strip()]


def step_correctness(question: str, solution_text: str) -> list[bool]:
  """Ground-truth label of each line of a generated solution, aligned with `split_steps`.

  A step line `a op b = c | rest` is correct iff `a op b` is the reference order's next reduction
  of the true current expression, `c` its value and `rest` parses to the reduced tree (redundant
  parentheses and spaces are tolerated). A `\\boxed{}` line is correct iff it holds the true answer
  and every earlier line was correct. After the first wrong line every label is False.
  """
  state = parse(question)
  answer = evaluate(state)
  labels, ok = [], True
  for line in split_steps(solution_text):
    if ok:
      if _BOXED_LINE.fullmatch(line):
        ok = grade(line, answer)
      else:
        ok, state = _check_step(state, line)
    labels.append(ok)
  return labels


def _check_step(state: Expr, line: str) -> tuple:
  """(line is the correct next step from `state`, the state after it)."""
  match = _STEP.fullmatch(line)
  if match is None or not isinstance(state, tuple):
    return False, state
  a, op, b, c, rest = match.groups()
  (ra, rop, rb, rc), reduced = reduce_once(state)
  if (int(a), op, int(b), int(c)) != (ra, rop, rb, rc):
    return False, state
  try:
    return parse(rest) == reduced, reduced
  except ValueError:
    return False, state


def first_wrong_step(question: str, solution_text: str) -> Optional[int]:
  """Index (into `split_steps`) of the first incorrect line, or None if all are correct."""
  labels = step_correctness(question, solution_text)
  return labels.index(False) if False in labels else None
