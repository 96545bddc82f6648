"""What a revision model sees: the question and its last few attempts (paper §6.1, §6.2).

The model is fine-tuned on contexts of 0 to `MAX_CONTEXT_ATTEMPTS` wrong attempts, so a
chain that has made more shows it only the last ones. This module is the one place
that cut happens; the text around the attempts is the task's (`Task.revision_prompt`).
"""

from collections.abc import Sequence

from ttc.data import task as task_lib

MAX_CONTEXT_ATTEMPTS = 4  # attempts in context during fine-tuning and at test time


def context_attempts(attempts: Sequence[str],
                     max_attempts: int = MAX_CONTEXT_ATTEMPTS) -> list[str]:
  """The last `max_attempts` of `attempts` (all if fewer), oldest first."""
  if max_attempts < 0:
    raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
  attempts = list(attempts)
  return attempts[max(0, len(attempts) - max_attempts):]  # [-0:] would keep them all


def revision_prompt(task: task_lib.Task, problem: task_lib.Problem, attempts: Sequence[str],
                    max_attempts: int = MAX_CONTEXT_ATTEMPTS) -> str:
  """The text the revision model continues after `attempts` (oldest first) at `problem`;
  with no attempts, the task's plain prompt."""
  return task.revision_prompt(problem, context_attempts(attempts, max_attempts))
