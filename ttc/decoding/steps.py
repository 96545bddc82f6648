"""Step-level decoding: the building blocks that search composes.

A solution is a sequence of reasoning steps, each ended by a delimiter (one token,
or two in a row: see `sampling.StopRule`). Search
(beam, lookahead, DVTS) alternates two moves over B = Q * N rows (N rows per prompt,
prompt-major), and this module provides exactly those:

  * `continue_until_step`: every unfinished row samples until it ends a step or its
    solution (by the `StopRule`), or runs out of tokens; finished rows stay put.
  * `take_rows`: row b of the new state is row `parent` of the same prompt, which
    forks a row M ways (repeat its index) and reorders beams (any permutation).

The prompts' keys live once in a shared `PrefixCache`; each row owns a suffix
`KVCache` for its solution. `take_rows` only moves suffix rows, so rows never
change prompt: parents are indices *within* a prompt.

A row's budget is its own: it may write `max_tokens` tokens in all, so a step
takes at most min(max_step_tokens, max_tokens - the row's tokens so far), whatever
its neighbours (other rows, other prompts) have written. The cache is shared
physically, though: all rows write in lockstep at `cache.end`, which advances by
the longest row of each step. So the physical slots never cut a row short when

    cache.end + max_step_tokens <= num_slots   before every step,

e.g. `take_rows` after each step (it packs the slots: `end` becomes the longest
row, at most `max_tokens`) and num_slots >= max_tokens + max_step_tokens; j steps
without packing in between need j * max_step_tokens on top of max_tokens. Should
a caller size the slots smaller, a step is cut at the last slot (memory stays
safe) and the rows it cut are finished: the rows are then no longer independent.

    state = steps.start(model, params, prompts_QxP, lengths_Q, num_rows=N, max_tokens=512,
                        num_slots=512 + 32)
    stops = codec.stop_rule(task.chat, task.step_delimiter)  # or sampling.StopRule(...)
    step, state = steps.continue_until_step(model, params, state, key, sampler,
                                            max_step_tokens=32, stops=stops)
    state = steps.take_rows(state, parent_QxN)
"""

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from ttc.decoding import samplers, sampling
from ttc.models.kv_cache import KVCache, PrefixCache
from ttc.models.transformer import Transformer


@flax.struct.dataclass
class DecodeState:
  """Rows mid-solution. B = Q * N rows, prompt-major; S = suffix slots.

  prefix: the Q prompts' shared keys ([Q, P] slots).
  cache: each row's own keys ([B, S] slots); `cache.end` slots are used.
  next_logits_BxV: float32 logits of each row's next token.
  next_position_B: int32 position id of each row's next token.
  finished_B: bool the row ended its solution (an end id: EOS, end of turn) or
    reached `max_tokens`.
  length_B: int32 tokens the row has written (its solution so far).
  max_tokens: static int, the most tokens a row may write (its own cap, <= S).
  """

  prefix: PrefixCache
  cache: KVCache
  next_logits_BxV: jax.Array
  next_position_B: jax.Array
  finished_B: jax.Array
  length_B: jax.Array
  max_tokens: int = flax.struct.field(pytree_node=False)

  @property
  def num_prompts(self) -> int:
    return self.prefix.num_prompts

  @property
  def rows_per_prompt(self) -> int:
    return self.finished_B.shape[0] // self.num_prompts


@functools.partial(jax.jit, static_argnames=("model", "num_rows", "max_tokens", "num_slots"))
def start(model: Transformer, params, prompt_tokens_QxP, prompt_lengths_Q, *, num_rows: int,
          max_tokens: int, num_slots: Optional[int] = None) -> DecodeState:
  """Prefills Q left-padded prompts once; each gets `num_rows` rows.

  max_tokens: the most tokens a row writes in all (its cap).
  num_slots: physical suffix slots per row (default max_tokens); see the module
    docstring for how many keep rows independent of each other.
  """
  num_slots = max_tokens if num_slots is None else num_slots
  if num_slots < max_tokens:
    raise ValueError(f"num_slots={num_slots} cannot hold a row of max_tokens={max_tokens}")
  first_logits_QxV, prompt_cache = sampling.prefill(model, params, prompt_tokens_QxP,
                                                    prompt_lengths_Q, prompt_tokens_QxP.shape[1])
  batch = prompt_tokens_QxP.shape[0] * num_rows
  return DecodeState(
      prefix=PrefixCache.from_cache(prompt_cache),
      cache=KVCache.init(model.config, batch, num_slots),
      next_logits_BxV=jnp.repeat(first_logits_QxV, num_rows, axis=0),
      next_position_B=jnp.repeat(prompt_lengths_Q.astype(jnp.int32), num_rows, axis=0),
      finished_B=jnp.zeros((batch,), bool), length_B=jnp.zeros((batch,), jnp.int32),
      max_tokens=max_tokens)


@functools.partial(
    jax.jit, donate_argnames=("state",),
    static_argnames=("model", "max_step_tokens", "stops", "pad_id"))
def continue_until_step(model: Transformer, params, state: DecodeState, rng, sampler, *,
                        max_step_tokens: int, stops: sampling.StopRule,
                        pad_id: int = 0) -> tuple[sampling.Samples, DecodeState]:
  """Every unfinished row generates one step: up to a step end of `stops` (its
  step ids or pairs), an end id (EOS, end of turn), `max_step_tokens` tokens, or its
  `state.max_tokens` cap. A pair of tokens ends a step only if this call wrote both.

  `state` is donated: its cache is updated in place, so do not reuse it.
  Returns (the step's tokens as `Samples` with G = max_step_tokens; finished rows
  get length 0 and stop reason 0), and the state after the step.
  A row is finished after an end id (stop reason `StopReason.EOS`) or once it holds
  `max_tokens` tokens (or when slots sized below the module docstring's rule cut its
  step); a step that ends by hitting `max_step_tokens` leaves the row unfinished
  (mid-step).
  """
  sampler = samplers.as_sampler(sampler)
  own_budget_B = jnp.where(state.finished_B, 0,
                           jnp.minimum(max_step_tokens, state.max_tokens - state.length_B))
  # The shared write slot binds only when the slots are sized below the module
  # docstring's rule; then the step is cut here rather than overwrite the last slot.
  budget_B = jnp.minimum(own_budget_B, state.cache.num_slots - state.cache.end)
  prefix = state.prefix
  params = sampling.with_packed_weights(model, params, state.finished_B.shape[0])

  def step(token_B, position_B, cache):
    logits_Bx1xV, cache = model.apply(params, token_B[:, None], position_B[:, None], cache,
                                      prefix=prefix)
    return logits_Bx1xV[:, 0], cache

  samples, cont = sampling.decode(step, state.cache, state.next_logits_BxV,
                                  state.next_position_B, rng, sampler, max_step_tokens, stops,
                                  pad_id, budget_B)
  reason_B = jnp.where(state.finished_B, 0, samples.stop_reason_B)
  length_B = state.length_B + samples.lengths_B
  # Stopped by the shared slots before its own budget (undersized slots only).
  cut_B = (budget_B < own_budget_B) & (reason_B == sampling.StopReason.MAX_NEW_TOKENS)
  finished_B = (state.finished_B | (reason_B == sampling.StopReason.EOS)
                | (length_B >= state.max_tokens) | cut_B)
  samples = samples.replace(stop_reason_B=reason_B)
  return samples, state.replace(cache=cont.cache, next_logits_BxV=cont.next_logits_BxV,
                                next_position_B=cont.next_position_B, finished_B=finished_B,
                                length_B=length_B)


def flat_rows(parent_QxN, rows_per_prompt: int):
  """[Q * N'] int32 batch rows of within-prompt parents: row (q, n) <- q * N + parent[q, n]."""
  num_prompts, new_rows = parent_QxN.shape
  return (jnp.arange(num_prompts)[:, None] * rows_per_prompt
          + parent_QxN.astype(jnp.int32)).reshape(num_prompts * new_rows)


@jax.jit
def take_rows(state: DecodeState, parent_QxN) -> DecodeState:
  """Row (q, n) of the result is row (q, parent_QxN[q, n]) of `state`.

  parent_QxN: int32 [Q, N'] indices within each prompt's N rows; N' may differ from
  N (e.g. keep N / M beams, then fork each M ways with `jnp.repeat`).
  """
  rows_B = flat_rows(parent_QxN, state.rows_per_prompt)
  take = lambda x: jnp.take(x, rows_B, axis=0)
  return state.replace(cache=state.cache.take_rows(rows_B),
                       next_logits_BxV=take(state.next_logits_BxV),
                       next_position_B=take(state.next_position_B),
                       finished_B=take(state.finished_B), length_B=take(state.length_B))
