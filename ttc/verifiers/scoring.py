"""Scoring with a reward model: whole sequences at once, or step by step with a KV cache.

Two ways to get the same numbers:

  * `score_sequences` / `score_solutions`: one forward pass over prompt + solution,
    scores read at given token indices (labelled data, best-of-N over finished
    samples).
  * `start` / `score_step` / `take_rows`: the incremental form that search uses.
    The reward model keeps its own KV cache per row (trajectory), laid out exactly
    like the policy's `ttc.decoding.steps.DecodeState`: prompts once in a shared
    `PrefixCache`, each row's tokens in its own suffix `KVCache`. Scoring a new step
    runs only that step's tokens, and rows fork and reorder with `take_rows` using
    the same parent indices as the policy's `steps.take_rows`.

Scores are probabilities in [0, 1]: sigmoid of the model's value logit at a token.
`token_logprobs` reads a policy the same way (`score_solutions(..., per_token=...)`):
each token's log-probability given the ones before it, the policy's own confidence in
a step (`evaluate_verifiers` ranks siblings by it).
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc.decoding import sampling, steps
from ttc.models.kv_cache import EMPTY_POSITION, KVCache, PrefixCache
from ttc.verifiers.reward_model import RewardModel


@functools.partial(jax.jit, static_argnames=("model",))
def score_sequences(model: RewardModel, params, tokens_BxL, lengths_B):
  """[B, L] float32 score after every token of right-padded sequences (0 on padding)."""
  slots_L = jnp.arange(tokens_BxL.shape[1])
  real_BxL = slots_L[None] < lengths_B[:, None]
  positions_BxL = jnp.where(real_BxL, slots_L[None], EMPTY_POSITION)
  logits_BxL, _ = model.apply(params, tokens_BxL, positions_BxL)
  return jnp.where(real_BxL, jax.nn.sigmoid(logits_BxL), 0.0)


@functools.partial(jax.jit, static_argnames=("model",))
def token_logprobs(model, params, tokens_BxL, lengths_B):
  """[B, L] float32 log-probability of each token of right-padded sequences given the
  tokens before it, under a policy (`Transformer`); 0 at the first token and on padding."""
  slots_L = jnp.arange(tokens_BxL.shape[1])
  real_BxL = slots_L[None] < lengths_B[:, None]
  positions_BxL = jnp.where(real_BxL, slots_L[None], EMPTY_POSITION)
  logits_BxLxV, _ = model.apply(params, tokens_BxL, positions_BxL)
  # Normalised in float32, gathered at the token that came next.
  logprobs_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  next_BxL = jnp.take_along_axis(logprobs_BxLxV, tokens_BxL[:, 1:, None], axis=-1)[..., 0]
  return jnp.where(real_BxL, jnp.pad(next_BxL, ((0, 0), (1, 0))), 0.0)


def score_solutions(model, params, sequences: list[list[int]], read_at: list[list[int]], *,
                    batch_size: int = 64, min_length: int = 16,
                    per_token=score_sequences) -> list[list[float]]:
  """Scores of each sequence at its `read_at` token indices (e.g. its step ends).

  per_token: the jitted (model, params, tokens_BxL, lengths_B) -> [B, L] it reads:
    `score_sequences` for a reward model, `token_logprobs` for a policy.
  Sequences are batched `batch_size` at a time in order of length (less padding),
  right-padded to a power-of-two length, so a whole split compiles a handful of
  programs. Results come back in the input order.
  """
  if len(sequences) != len(read_at):
    raise ValueError(f"{len(sequences)} sequences but {len(read_at)} read_at lists")
  for i, (seq, indices) in enumerate(zip(sequences, read_at)):
    if any(not 0 <= j < len(seq) for j in indices):
      raise ValueError(f"sequence {i} of {len(seq)} tokens has read_at indices {indices} "
                       "outside it")
  order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
  out = [None] * len(sequences)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    length = sampling.bucket(max(len(sequences[i]) for i in rows), min_length)
    tokens = np.zeros((batch_size, length), np.int32)
    lengths = np.zeros((batch_size,), np.int32)
    for row, i in enumerate(rows):
      tokens[row, :len(sequences[i])] = sequences[i]
      lengths[row] = len(sequences[i])
    scores = np.asarray(per_token(model, params, tokens, lengths))
    for row, i in enumerate(rows):
      out[i] = scores[row, read_at[i]].tolist()
  return out


@flax.struct.dataclass
class ScoreState:
  """The reward model's view of B = Q * N rows (prompt-major), mid-solution.

  prefix: the Q prompts' keys, stored once.
  cache: each row's own keys; `cache.end` slots used. Rows of all prompts write in
    lockstep at `cache.end`, which a step advances by its longest row rounded up to
    whole chunks; `take_rows` packs it back to the longest row.
  next_position_B: int32 position id of each row's next token.
  score_B: float32 score after each row's latest token (0 before its first step).
  tokens_scored: [] int32 real tokens run through the model so far: each prompt
    once, then every step's tokens once. Whole-prefix rescoring would instead grow
    with the running sum of the prefix lengths.
  positions_computed: [] int32 token positions computed, padding included
    (B x chunk per loop iteration): the compute actually spent.
  overflowed: [] bool some step did not fit in the cache's slots (its tail was
    not scored, in every row the step cut). Since the slots are shared, one row can
    cut another's step: size `max_tokens` so that the longest row after the last
    `take_rows` plus every step scored since, each rounded up to chunks, fits (as
    `ttc.search.tree_search.SearchConfig.prm_slots_needed` does); then it cannot.
  """

  prefix: PrefixCache
  cache: KVCache
  next_position_B: jax.Array
  score_B: jax.Array
  tokens_scored: jax.Array
  positions_computed: jax.Array
  overflowed: jax.Array

  @property
  def rows_per_prompt(self) -> int:
    return self.score_B.shape[0] // self.prefix.num_prompts


@functools.partial(jax.jit, static_argnames=("model", "num_rows", "max_tokens"))
def start(model: RewardModel, params, prompt_tokens_QxP, prompt_lengths_Q, *, num_rows: int,
          max_tokens: int) -> ScoreState:
  """Runs Q left-padded prompts once; each gets `num_rows` rows of `max_tokens` slots
  (see `ScoreState.overflowed` for how many)."""
  num_prompts, prompt_len = prompt_tokens_QxP.shape
  _, prompt_cache = sampling.prefill(model, params, prompt_tokens_QxP, prompt_lengths_Q,
                                     prompt_len)
  batch = num_prompts * num_rows
  return ScoreState(
      prefix=PrefixCache.from_cache(prompt_cache),
      cache=KVCache.init(model.config, batch, max_tokens),
      next_position_B=jnp.repeat(prompt_lengths_Q.astype(jnp.int32), num_rows, axis=0),
      score_B=jnp.zeros((batch,), jnp.float32),
      tokens_scored=jnp.sum(prompt_lengths_Q).astype(jnp.int32),
      positions_computed=jnp.int32(num_prompts * prompt_len),
      overflowed=jnp.zeros((), bool))


# Tokens per PRM call while scoring a step: one home for the default, which search
# sizes its PRM cache slots by (`SearchConfig.prm_chunk`).
DEFAULT_CHUNK = 8


@functools.partial(jax.jit, static_argnames=("model", "chunk"), donate_argnames=("state",))
def score_step(model: RewardModel, params, state: ScoreState, tokens_BxG, lengths_B, *,
               chunk: int = DEFAULT_CHUNK) -> ScoreState:
  """Appends each row's new step (its first lengths_B tokens of tokens_BxG) and scores it.

  The tokens run through the model `chunk` at a time (one [B, chunk] call per
  iteration of a while loop that stops after the longest row), so the cost follows
  the step's real length, not G. A row with length 0 (finished, or not extended)
  keeps its score; its slots are written as invisible padding.
  `state` is donated. Returns the new state; `state.score_B` is the step's score.
  """
  batch, width = tokens_BxG.shape
  width_padded = -(-width // chunk) * chunk
  tokens_BxW = jnp.pad(tokens_BxG.astype(jnp.int32), ((0, 0), (0, width_padded - width)))
  lengths_B = lengths_B.astype(jnp.int32)
  longest = jnp.max(lengths_B)
  num_slots = state.cache.num_slots
  prefix = state.prefix

  def cond(carry):
    offset, cache, _ = carry
    return (offset < longest) & (cache.end + chunk <= num_slots)

  def body(carry):
    offset, cache, score_B = carry
    offsets_C = offset + jnp.arange(chunk)
    real_BxC = offsets_C[None] < lengths_B[:, None]
    positions_BxC = jnp.where(real_BxC, state.next_position_B[:, None] + offsets_C[None],
                              EMPTY_POSITION)
    tokens_BxC = jax.lax.dynamic_slice_in_dim(tokens_BxW, offset, chunk, axis=1)
    logits_BxC, cache = model.apply(params, tokens_BxC, positions_BxC, cache, prefix=prefix)
    is_last_BxC = offsets_C[None] == (lengths_B - 1)[:, None]
    last_score_B = jnp.sum(jnp.where(is_last_BxC, jax.nn.sigmoid(logits_BxC), 0.0), axis=1)
    score_B = jnp.where(jnp.any(is_last_BxC, axis=1), last_score_B, score_B)
    return offset + chunk, cache, score_B

  offset, cache, score_B = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), state.cache, state.score_B))
  scored_B = jnp.minimum(lengths_B, offset)
  return ScoreState(
      prefix=prefix, cache=cache, next_position_B=state.next_position_B + scored_B,
      score_B=score_B, tokens_scored=state.tokens_scored + jnp.sum(scored_B),
      positions_computed=state.positions_computed + batch * offset,
      overflowed=state.overflowed | (offset < longest))


@jax.jit
def take_rows(state: ScoreState, parent_QxN) -> ScoreState:
  """Row (q, n) of the result is row (q, parent_QxN[q, n]): as `steps.take_rows`."""
  rows_B = steps.flat_rows(parent_QxN, state.rows_per_prompt)
  return state.replace(cache=state.cache.take_rows(rows_B),
                       next_position_B=jnp.take(state.next_position_B, rows_B, axis=0),
                       score_B=jnp.take(state.score_B, rows_B, axis=0))
