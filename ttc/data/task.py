"""The task interface: the one seam between a problem set and every stage.

A stage (evaluate, label_prm, train_prm / train_orm, evaluate_verifiers, search_sweep,
the oracle verifier, the benchmarks) receives a `Task` and asks it, never a concrete
task module, for:

  * `problems(split)`: the split's problems, each with a difficulty `level`;
  * `prompt(problem)`: the text the policy continues (`chat`: wrapped as one user turn
    in the checkpoint's chat template, for instruct models);
  * `step_delimiter`: the text that ends a reasoning step;
  * `extract_answer(text)` / `is_correct(answer, problem)` / `grade(text, problem)`;
  * `answer_ids(answers)`: which extracted answers are the same answer (for voting);
  * `step_correctness(problem, text)`: a ground-truth step checker, or None where the
    task has none (`has_step_checker`);
  * `revision_prompt(problem, attempts)`: the prompt a revision model continues, with
    earlier attempts in context (paper §6; `ttc.revision.context` keeps the last four);
  * `vocabulary()`: the vocabulary a policy trained from scratch on it uses (arith's
    characters), or None where the policy brings its own tokenizer (MATH on an
    open checkpoint).

Token ids are not the task's business: the policy's checkpoint encodes the prompt
(`ttc.workdir.Codec`), so one task runs on a tiny ttc policy and on SmolLM2 alike.

Tasks are registered by name (`register`, `get`), and gin builds them with the
configurables of their modules (`register_arith_task`, `math_task`).
"""

import abc
import dataclasses
import importlib
from typing import Callable, Hashable, Optional, Sequence, Union

from ttc.errors import UserError

NO_ANSWER = -1  # answer id of a sample without an extractable answer


@dataclasses.dataclass(frozen=True)
class Problem:
  """One question. `answer` is the reference final answer as text; `solution` the
  reference worked solution ("" when the task has none); `level` its difficulty
  (1 = easiest)."""

  uid: str
  question: str
  answer: str
  level: int
  solution: str = ""


class Task(abc.ABC):
  """What stages know about a problem set; see the module docstring.

  Subclasses set `name`, `step_delimiter` and `chat`, and implement the abstract
  methods. Everything else has a default that suits most tasks.
  """

  name: str
  step_delimiter: str = "\n"
  chat: bool = False
  splits: tuple[str, ...] = ("train", "validation", "test")

  @abc.abstractmethod
  def problems(self, split: str) -> list[Problem]:
    """The problems of `split`, in a fixed order; UserError for an unknown/empty split."""

  @abc.abstractmethod
  def prompt(self, problem: Problem) -> str:
    """The text the policy continues with a solution."""

  @abc.abstractmethod
  def extract_answer(self, text: str) -> Optional[str]:
    """The final answer written in a solution `text`, or None. Never raises."""

  @abc.abstractmethod
  def is_correct(self, answer: Optional[str], problem: Problem) -> bool:
    """Whether an extracted answer equals the problem's reference. Never raises."""

  def grade(self, text: str, problem: Problem) -> bool:
    """Whether a whole solution's final answer is right."""
    return self.is_correct(self.extract_answer(text), problem)

  def same_answer(self, a: str, b: str) -> bool:
    """Whether two extracted answers are the same answer (default: same text)."""
    return a.strip() == b.strip()

  def answer_key(self, answer: str) -> Optional[Hashable]:
    """A hashable key with equal keys for equal answers, or None where equality needs
    `same_answer` (then `answer_ids` compares answers pairwise)."""
    return answer.strip()

  def answer_ids(self, answers: Sequence[Optional[str]]) -> list[int]:
    """Small integer ids, equal for the same answer, NO_ANSWER (-1) for None.

    Ids number distinct answers in order of first appearance.
    """
    ids, keys, representatives = [], {}, []
    for answer in answers:
      if answer is None:
        ids.append(NO_ANSWER)
        continue
      key = self.answer_key(answer)
      if key is not None:
        ids.append(keys.setdefault(key, len(keys)))
        continue
      for i, rep in enumerate(representatives):  # one comparison per distinct answer
        if self.same_answer(answer, rep):
          ids.append(i)
          break
      else:
        ids.append(len(representatives))
        representatives.append(answer)
    return ids

  def split_steps(self, text: str) -> list[str]:
    """The solution's steps (the final-answer step included), empty ones dropped."""
    return [s for s in text.split(self.step_delimiter) if s.strip()]

  def step_end_offsets(self, text: str) -> list[int]:
    """For each step of `split_steps(text)`, the character index that ends it: the last
    character of the delimiter after it, or len(text) for a last step without one (the
    place of the EOS token that follows a solution)."""
    ends, offset, delimiter = [], 0, self.step_delimiter
    pieces = text.split(delimiter)
    for i, piece in enumerate(pieces):
      if piece.strip():
        last = i == len(pieces) - 1
        ends.append(offset + len(piece) + (0 if last else len(delimiter) - 1))
      offset += len(piece) + len(delimiter)
    return ends

  @property
  def has_step_checker(self) -> bool:
    return False

  def step_correctness(self, problem: Problem, text: str) -> Optional[list[bool]]:
    """Ground truth of each step of `split_steps(text)`, or None without a checker."""
    del problem, text
    return None

  def vocabulary(self):
    """The seqio vocabulary of a policy trained from scratch on this task, or None."""
    return None

  def revision_prompt(self, problem: Problem, attempts: Sequence[str]) -> str:
    """The text a revision model continues with a new attempt (paper §6.1).

    attempts: earlier solutions, oldest first, all of them shown (callers keep the last
    `ttc.revision.context.MAX_CONTEXT_ATTEMPTS`). No attempts: the plain `prompt`.
    This default suits a BPE tokenizer and an instruct model (with `chat` the whole
    text is one user turn): numbered attempts, stripped of surrounding whitespace,
    between a header and a closing instruction. Override it where the vocabulary is
    small (arith's characters).
    """
    if not attempts:
      return self.prompt(problem)
    shown = "".join(f"\n\nAttempt {i}:\n{a.strip()}" for i, a in enumerate(attempts, 1))
    return (f"{self.prompt(problem)}\n\nEarlier attempts at this problem, oldest first; "
            f"they may be wrong:{shown}\n\nWrite a new solution that corrects them.")

  def select_in_turns(self, split: str, num_questions: int = 0) -> list[Problem]:
    """The split's problems with levels taken in turn (the first of each level, then
    the second, ...), so any prefix covers every level; the first `num_questions`
    of them (0 = all)."""
    by_level: dict[int, list[Problem]] = {}
    for p in self.problems(split):
      by_level.setdefault(p.level, []).append(p)
    queues = list(by_level.values())
    in_turns = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return in_turns[:num_questions] if num_questions else in_turns

  def select(self, split: str, max_per_level: int = 0) -> list[Problem]:
    """The split's problems, the first `max_per_level` of each level (0 = all)."""
    problems = self.problems(split)
    if not max_per_level:
      return problems
    counts: dict[int, int] = {}
    out = []
    for p in problems:
      counts[p.level] = counts.get(p.level, 0) + 1
      if counts[p.level] <= max_per_level:
        out.append(p)
    return out


# ----------------------------------------------------------------------------- registry

# Modules whose import registers a task: its gin configurable and a factory by name.
BUILTIN_TASK_MODULES = ("ttc.data.arith_task", "ttc.data.math")

_REGISTRY: dict[str, Task] = {}
_FACTORIES: dict[str, Callable[[], Task]] = {}


def import_builtin_tasks() -> None:
  """Imports the built-in task modules, so gin files can name their configurables."""
  for module in BUILTIN_TASK_MODULES:
    importlib.import_module(module)


def register(task: Task) -> Task:
  """Makes `task` reachable by `get(task.name)` (replacing one of the same name)."""
  _REGISTRY[task.name] = task
  return task


def register_factory(name: str, factory: Callable[[], Task]) -> None:
  """Builds the task called `name` with `factory()` the first time `get(name)` asks."""
  _FACTORIES[name] = factory


def get(task: Union[str, Task]) -> Task:
  """The task itself, or the registered task of that name; UserError if unknown."""
  if isinstance(task, Task):
    return task
  if isinstance(task, str):
    if task not in _REGISTRY and task not in _FACTORIES:
      import_builtin_tasks()
    if task not in _REGISTRY and task in _FACTORIES:
      register(_FACTORIES[task]())
    if task in _REGISTRY:
      return _REGISTRY[task]
  known = sorted(set(_REGISTRY) | set(_FACTORIES))
  raise UserError(f"unknown task {task!r}; registered tasks: {known} (bind the stage's task "
                  "to a task configurable, e.g. @register_arith_task() or @math_task())")
