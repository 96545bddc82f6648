"""A perfect process verifier for the embedded task, to tell search from verifier errors.

`OracleCallbacks` stands in for the PRM in `tree_search.search`: a step scores 1
if every line of the solution so far is right (`arith.step_correctness`, which
also requires the boxed answer to be the true one) and 0 otherwise. With it,
search is limited only by the policy, so a method that does worse with the learned
PRM than with the oracle is being misled by the PRM (over-optimisation), not
broken. The check runs on the host through `jax.pure_callback`: slow, for
diagnosis only.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc.data import arith, vocab
from ttc.decoding import steps
from ttc.search import tree_search


@flax.struct.dataclass
class OracleState:
  prompt_BxP: jax.Array  # int32 each row's (left-padded) prompt
  tokens_BxW: jax.Array  # int32 the row's solution so far
  length_B: jax.Array
  score_B: jax.Array


def _question(prompt_ids) -> str:
  """The question of a prompt (`tasks.encode_prompt`); pad and start ids decode to nothing."""
  return vocab.CharVocabulary().decode(prompt_ids).strip()


def _host_scores(prompt_BxP, tokens_BxW, length_B) -> np.ndarray:
  # Plain numpy first: indexing the callback's arrays would dispatch jax ops, which
  # fail inside a program on an accelerator (they live on the host CPU device).
  prompt_BxP, tokens_BxW, length_B = map(np.asarray, (prompt_BxP, tokens_BxW, length_B))
  char_vocab = vocab.CharVocabulary()
  out = np.zeros(len(length_B), np.float32)
  for b, length in enumerate(length_B):
    text = char_vocab.decode(tokens_BxW[b, :length].tolist())
    labels = arith.step_correctness(_question(prompt_BxP[b].tolist()), text)
    out[b] = float(bool(labels) and all(labels))
  return out


@dataclasses.dataclass(frozen=True)
class OracleCallbacks:
  """The PRM callbacks of `ttc.search.callbacks`, scored by the task's ground truth.

  max_tokens: the longest solution it keeps (tokens past it are not checked).
  """

  max_tokens: int = 256

  def start(self, params, prompts_QxP, lengths_Q, num_rows, num_slots):
    del params, lengths_Q, num_slots
    batch = prompts_QxP.shape[0] * num_rows
    return OracleState(prompt_BxP=jnp.repeat(prompts_QxP, num_rows, axis=0),
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
    scores_B = jax.pure_callback(_host_scores, jax.ShapeDtypeStruct(length_B.shape, jnp.float32),
                                 state.prompt_BxP, tokens_BxW, length_B)
    score_B = jnp.where(lengths_B > 0, scores_B, state.score_B)
    return score_B, state.replace(tokens_BxW=tokens_BxW, length_B=length_B, score_B=score_B)

  def overflowed(self, state):
    return jnp.any(state.length_B >= self.max_tokens)

  def take_rows(self, state, parent_QxN):
    rows_B = steps.flat_rows(parent_QxN, state.length_B.shape[0] // parent_QxN.shape[0])
    return jax.tree.map(lambda x: jnp.take(x, rows_B, axis=0), state)
