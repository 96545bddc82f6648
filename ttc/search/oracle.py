"""A perfect process verifier, to tell search errors from verifier errors.

`OracleCallbacks` stands in for the PRM in `tree_search.search`: a step scores 1
if every step of the solution so far is right (`Task.step_correctness`, which for
the arithmetic task also requires the boxed answer to be the true one) and 0
otherwise. With it, search is limited only by the policy, so a method that does
worse with the learned PRM than with the oracle is being misled by the PRM
(over-optimisation), not broken. Only tasks with a step checker
(`Task.has_step_checker`) have an oracle.

The check runs on the host through `jax.pure_callback`: slow, for diagnosis only.
A row's problem is found on the host by its prompt's token ids, in a table of the
sweep's problems that the (static, hashable) callbacks carry; so one oracle serves
every batch of a sweep and the search compiles once per shape.
"""

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc import workdir
from ttc.data import task as task_lib
from ttc.decoding import steps
from ttc.errors import UserError
from ttc.search import tree_search


@flax.struct.dataclass
class OracleState:
  prompt_BxP: jax.Array  # int32 each row's (left-padded) prompt
  prompt_length_B: jax.Array  # int32 real tokens at the right end of prompt_BxP
  tokens_BxW: jax.Array  # int32 the row's solution so far
  length_B: jax.Array
  score_B: jax.Array


@dataclasses.dataclass(frozen=True)
class OracleCallbacks:
  """The verifier callbacks of `ttc.search.callbacks`, scored by the task's ground truth.

  task: has a step checker. codec: the policy's (`ttc.workdir.Codec`): decodes solutions.
  problems: (prompt ids, problem) pairs, every prompt the search will be given
    (`for_problems` builds them).
  max_tokens: the longest solution it keeps (tokens past it are not checked).
  """

  task: task_lib.Task
  codec: workdir.Codec
  problems: tuple[tuple[tuple[int, ...], task_lib.Problem], ...]
  max_tokens: int = 256

  def __post_init__(self):
    # The host-side lookup table; not a field, so equality and hashing ignore it.
    table = {}
    for ids, problem in self.problems:
      if table.setdefault(ids, problem).answer != problem.answer:
        raise UserError(f"problems {table[ids].uid} and {problem.uid} of task "
                        f"{self.task.name!r} have the same prompt but other answers")
    object.__setattr__(self, "_by_prompt", table)

  @classmethod
  def for_problems(cls, task: task_lib.Task, codec, problems: Sequence[task_lib.Problem],
                   max_tokens: int = 256) -> "OracleCallbacks":
    """The oracle of `problems`, prompted as `codec.encode_prompt(task.prompt(p), task.chat)`."""
    if not task.has_step_checker:
      raise UserError(f"task {task.name!r} has no step checker, so no oracle verifier; use "
                      "verifier='prm'")
    return cls(task, codec, tuple((tuple(codec.encode_prompt(task.prompt(p), task.chat)), p)
                                  for p in problems), max_tokens)

  def _host_scores(self, prompt_BxP, prompt_length_B, tokens_BxW, length_B,
                   new_B) -> np.ndarray:
    # Plain numpy first: indexing the callback's arrays would dispatch jax ops, which
    # fail inside a program on an accelerator (they live on the host CPU device).
    prompt_BxP, prompt_length_B, tokens_BxW, length_B, new_B = map(
        np.asarray, (prompt_BxP, prompt_length_B, tokens_BxW, length_B, new_B))
    width = prompt_BxP.shape[1]
    out = np.zeros(len(length_B), np.float32)
    for b in np.flatnonzero(new_B):  # rows without a new step keep their score
      key = tuple(prompt_BxP[b, width - prompt_length_B[b]:].tolist())
      problem = self._by_prompt.get(key)
      if problem is None:
        raise ValueError(f"oracle: row {b}'s prompt is not one of its {len(self.problems)} "
                         "problems; build it with OracleCallbacks.for_problems")
      text = self.codec.decode(tokens_BxW[b, :length_B[b]].tolist())
      labels = self.task.step_correctness(problem, text)
      out[b] = float(bool(labels) and all(labels))
    return out

  def start(self, params, prompts_QxP, lengths_Q, num_rows, num_slots):
    del params, num_slots
    batch = prompts_QxP.shape[0] * num_rows
    return OracleState(prompt_BxP=jnp.repeat(prompts_QxP, num_rows, axis=0),
                       prompt_length_B=jnp.repeat(lengths_Q.astype(jnp.int32), num_rows),
                       tokens_BxW=jnp.zeros((batch, self.max_tokens), jnp.int32),
                       length_B=jnp.zeros((batch,), jnp.int32),
                       score_B=jnp.zeros((batch,), jnp.float32))

  def score(self, params, state, tokens_BxG, lengths_B):
    del params
    # Padded by one step so a write never clamps; what passes max_tokens is cut.
    padded_BxW = jnp.pad(state.tokens_BxW, ((0, 0), (0, tokens_BxG.shape[1])))
    tokens_BxW = tree_search.append_tokens(padded_BxW, tokens_BxG.astype(jnp.int32),
                                           state.length_B, lengths_B > 0)[:, :self.max_tokens]
    length_B = jnp.minimum(state.length_B + lengths_B, self.max_tokens)
    scores_B = jax.pure_callback(self._host_scores,
                                 jax.ShapeDtypeStruct(length_B.shape, jnp.float32),
                                 state.prompt_BxP, state.prompt_length_B, tokens_BxW, length_B,
                                 lengths_B > 0)
    score_B = jnp.where(lengths_B > 0, scores_B, state.score_B)
    return score_B, state.replace(tokens_BxW=tokens_BxW, length_B=length_B, score_B=score_B)

  def overflowed(self, state):
    return jnp.any(state.length_B >= self.max_tokens)

  def take_rows(self, state, parent_QxN):
    rows_B = steps.flat_rows(parent_QxN, state.length_B.shape[0] // parent_QxN.shape[0])
    return jax.tree.map(lambda x: jnp.take(x, rows_B, axis=0), state)
