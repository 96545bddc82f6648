"""From verifier scores to one answer: step -> solution -> answer (paper §5.1, App. E).

Two reductions, both pure `jnp` functions usable inside jitted search programs and
under `vmap` over problems:

  * `solution_scores`: a solution's step scores [N, S] -> one score [N] by
    "last" (the paper's choice for its PRM), "min", "prod" or "mean".
  * `choose_answer`: N solutions' answers and scores -> the chosen row, by
    "weighted" best-of-N (sum the scores of solutions with the same final answer,
    pick the answer with the largest sum), "majority" (count, ignore scores) or
    "best" (plain best-of-N: the single highest score).

Answers are integer ids: equal ids mean equivalent answers (the caller decides
equivalence, e.g. `ttc.data.task.Task.answer_ids`); -1 marks "no answer" (an
unparsable sample), which is never chosen while any row has an answer.
"""

import jax.numpy as jnp
import numpy as np

NO_ANSWER = -1
STEP_AGGREGATIONS = ("last", "min", "prod", "mean")
ANSWER_RULES = ("weighted", "majority", "best")


def validate_step_scores(step_scores_NxS, num_steps_N) -> None:
  """Host-side check before aggregation; raises ValueError naming the first bad row.

  Scores must be finite and in [0, 1] on real steps; padding past num_steps_N is
  ignored. Zero-step rows are allowed (they score 0; see `solution_scores`).
  """
  scores = np.asarray(step_scores_NxS, np.float64)
  steps = np.asarray(num_steps_N)
  if scores.ndim != 2 or steps.shape != scores.shape[:1]:
    raise ValueError(f"step scores must be [N, S] with num_steps [N]; got {scores.shape} "
                     f"and {steps.shape}")
  if np.any(steps < 0) or np.any(steps > scores.shape[1]):
    raise ValueError(f"num_steps must be in [0, {scores.shape[1]}]; got {steps.tolist()}")
  real = np.arange(scores.shape[1])[None] < steps[:, None]
  bad = real & ~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
  if bad.any():
    row, step = map(int, np.argwhere(bad)[0])
    raise ValueError(f"solution {row} step {step} has score {scores[row, step]}: verifier "
                     "scores must be finite and in [0, 1]")


def solution_scores(step_scores_NxS, num_steps_N, how: str = "last"):
  """[N] float32 solution scores from per-step scores; steps past num_steps_N are padding.

  A solution with no steps scores 0 under every rule.
  """
  if how not in STEP_AGGREGATIONS:
    raise ValueError(f"unknown step aggregation {how!r}; use one of {STEP_AGGREGATIONS}")
  scores = jnp.asarray(step_scores_NxS, jnp.float32)
  steps = jnp.asarray(num_steps_N, jnp.int32)
  real = jnp.arange(scores.shape[1])[None] < steps[:, None]
  has_steps = steps > 0
  if how == "last":
    last = jnp.take_along_axis(scores, jnp.maximum(steps - 1, 0)[:, None], axis=1)[:, 0]
    out = last
  elif how == "min":
    out = jnp.min(jnp.where(real, scores, jnp.inf), axis=1)
  elif how == "prod":
    out = jnp.prod(jnp.where(real, scores, 1.0), axis=1)
  else:
    out = jnp.sum(jnp.where(real, scores, 0.0), axis=1) / jnp.maximum(steps, 1)
  return jnp.where(has_steps, out, 0.0)


def choose_answer(answer_ids_N, scores_N, how: str = "weighted"):
  """Index of the chosen solution among N, as an int32 scalar.

  weighted: the answer whose solutions' scores sum highest; majority: the most
  frequent answer; best: the highest-scoring solution. Ties go to the lowest index.
  The returned row carries the chosen answer (for weighted/majority: the first
  row with that answer). Rows with NO_ANSWER lose to any row with an answer.
  """
  if how not in ANSWER_RULES:
    raise ValueError(f"unknown answer rule {how!r}; use one of {ANSWER_RULES}")
  ids = jnp.asarray(answer_ids_N, jnp.int32)
  scores = jnp.asarray(scores_N, jnp.float32)
  answered = ids != NO_ANSWER
  if how == "best":
    value = scores
  else:
    weight = scores if how == "weighted" else jnp.ones_like(scores)
    same_NxN = (ids[:, None] == ids[None, :]) & answered[None, :]
    value = same_NxN.astype(jnp.float32) @ weight
  # Unanswered rows rank below every answered row, whatever their value.
  value = jnp.where(answered, value, -jnp.inf)
  return jnp.argmax(value).astype(jnp.int32)
