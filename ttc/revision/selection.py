"""From C revision chains of L attempts to one answer (paper §6.2).

Every rule takes answer ids [C, L] (equal ids: the same answer, `NO_ANSWER` = -1 where
an attempt has none; `Task.answer_ids` makes them) and returns the chosen attempt as
(chain, position), int32 scalars. Pure `jnp`: usable under jit and `vmap` over problems.

  * `hierarchical`: the paper's "select the best answer within each chain, then across
    chains". Within a chain, weighted best-of-N picks the chain's answer; the chain
    then enters the vote across chains as ONE sample: its best-scored attempt at that
    answer, with that attempt's score as weight. So a weight stays a verifier score in
    [0, 1] whatever L is, and a chain that repeats one answer over many revisions
    (revisions are correlated) casts one vote, not L; summing the chain's weights instead
    would make it close to `flat_weighted`. Across chains, weighted best-of-N again.
  * `flat_weighted`: weighted best-of-N over all C·L attempts, chains ignored.
  * `majority`: the most frequent answer over all C·L attempts, scores ignored.

Ties go to the lower chain, then the lower position. An answered attempt always beats
an unanswered one; with no answer anywhere the choice is (0, 0).
"""

import jax
import jax.numpy as jnp

from ttc.verifiers import aggregation

NO_ANSWER = aggregation.NO_ANSWER
RULES = ("hierarchical", "flat_weighted", "majority")


def _ids_and_scores(answer_ids_CxL, scores_CxL):
  ids = jnp.asarray(answer_ids_CxL, jnp.int32)
  scores = jnp.zeros(ids.shape, jnp.float32) if scores_CxL is None else jnp.asarray(
      scores_CxL, jnp.float32)
  if ids.ndim != 2 or scores.shape != ids.shape:
    raise ValueError(f"answer ids and scores must both be [chains, attempts]; got {ids.shape} "
                     f"and {scores.shape}")
  return ids, scores


def _unflatten(index, num_attempts: int):
  return (index // num_attempts).astype(jnp.int32), (index % num_attempts).astype(jnp.int32)


def hierarchical(answer_ids_CxL, scores_CxL):
  """(chain, position): weighted best-of-N within each chain, then across the chains'
  winners, each weighted by its best score at its answer (module docstring)."""
  ids, scores = _ids_and_scores(answer_ids_CxL, scores_CxL)
  # Any attempt of the chain's winning answer carries it; the best-scored one represents it.
  first_C = jax.vmap(lambda i, s: aggregation.choose_answer(i, s, "weighted"))(ids, scores)
  answer_C = jnp.take_along_axis(ids, first_C[:, None], axis=1)[:, 0]
  carries_CxL = (ids == answer_C[:, None]) & (ids != NO_ANSWER)
  position_C = jnp.argmax(jnp.where(carries_CxL, scores, -jnp.inf), axis=1)
  weight_C = jnp.take_along_axis(scores, position_C[:, None], axis=1)[:, 0]
  chain = aggregation.choose_answer(answer_C, weight_C, "weighted")
  return chain, position_C[chain].astype(jnp.int32)


def flat_weighted(answer_ids_CxL, scores_CxL):
  """(chain, position) of the first attempt of the answer whose C·L scores sum highest."""
  ids, scores = _ids_and_scores(answer_ids_CxL, scores_CxL)
  index = aggregation.choose_answer(ids.reshape(-1), scores.reshape(-1), "weighted")
  return _unflatten(index, ids.shape[1])


def majority(answer_ids_CxL):
  """(chain, position) of the first attempt of the most frequent answer over all C·L."""
  ids, scores = _ids_and_scores(answer_ids_CxL, None)
  index = aggregation.choose_answer(ids.reshape(-1), scores.reshape(-1), "majority")
  return _unflatten(index, ids.shape[1])


def choose(answer_ids_CxL, scores_CxL, how: str = "hierarchical"):
  """(chain, position) by the rule `how`, one of `RULES` (scores unused by majority)."""
  if how not in RULES:
    raise ValueError(f"unknown revision selection {how!r}; use one of {RULES}")
  if how == "majority":
    return majority(answer_ids_CxL)
  return (hierarchical if how == "hierarchical" else flat_weighted)(answer_ids_CxL, scores_CxL)
