"""Ancestral sampling with a KV cache: one prefill, then a `lax.while_loop` decode.

Prompts share a batch by left padding: pad slots get position id -1 and stay
invisible to attention, real tokens get positions 0..len-1, so every row decodes
its next token at the same cache slot but at its own position.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc.models.kv_cache import EMPTY_POSITION, KVCache
from ttc.models.transformer import Transformer


@flax.struct.dataclass
class SamplingState:
  step: jax.Array  # [] int32 tokens generated so far
  cache: KVCache
  next_logits_BxV: jax.Array  # float32 logits for the token about to be sampled
  next_position_B: jax.Array  # int32 position id of that token
  tokens_BxG: jax.Array  # int32 generated tokens, pad after a row's EOS
  logprobs_BxG: jax.Array  # float32 log-probability of each generated token (0 for pad)
  done_B: jax.Array  # bool row has emitted EOS
  lengths_B: jax.Array  # int32 tokens generated per row, EOS included
  rng: jax.Array


def left_pad(prompts: list[list[int]], length: int, pad_id: int = 0):
  """Returns ([B, length] int32 tokens, [B] int32 lengths); raises if a prompt is too long."""
  too_long = [len(p) for p in prompts if len(p) > length]
  if too_long:
    raise ValueError(f"prompt of {max(too_long)} tokens exceeds the prompt length {length}")
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    if prompt:
      tokens[row, length - len(prompt):] = prompt
  return tokens, np.array([len(p) for p in prompts], np.int32)


def _pick(logits_BxV, rng, temperature):
  """Samples at `temperature` (a traced scalar; 0 means greedy). Returns tokens, logprobs."""
  greedy = temperature <= 0
  scaled = logits_BxV / jnp.where(greedy, 1.0, temperature)
  sampled = jax.random.categorical(rng, scaled, axis=-1)
  token_B = jnp.where(greedy, jnp.argmax(logits_BxV, axis=-1), sampled).astype(jnp.int32)
  logprobs_BxV = jax.nn.log_softmax(scaled, axis=-1)
  return token_B, jnp.take_along_axis(logprobs_BxV, token_B[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "pad_id"))
def sample(model: Transformer, params, prompt_tokens_BxP, prompt_lengths_B, rng, temperature,
           *, max_new_tokens: int, eos_id: int, pad_id: int = 0):
  """Samples up to `max_new_tokens` per row, stopping each row at EOS.

  Args:
    prompt_tokens_BxP: int32 left-padded prompts (see `left_pad`).
    prompt_lengths_B: int32 real prompt lengths.
    temperature: float scalar array; 0 = greedy. An array, so changing it does not
      recompile.
  Returns:
    tokens [B, G] int32 (pad after EOS, EOS included), logprobs [B, G] float32,
    lengths [B] int32 generated tokens including EOS.
  """
  batch, prompt_len = prompt_tokens_BxP.shape
  pad_B = prompt_len - prompt_lengths_B
  slots_P = jnp.arange(prompt_len)
  positions_BxP = jnp.where(slots_P[None] >= pad_B[:, None], slots_P[None] - pad_B[:, None],
                            EMPTY_POSITION)
  cache = KVCache.init(model.config, batch, prompt_len + max_new_tokens)
  logits_BxPxV, cache = model.apply(params, prompt_tokens_BxP, positions_BxP, cache)

  state = SamplingState(
      step=jnp.zeros((), jnp.int32), cache=cache, next_logits_BxV=logits_BxPxV[:, -1],
      next_position_B=prompt_lengths_B.astype(jnp.int32),
      tokens_BxG=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      logprobs_BxG=jnp.zeros((batch, max_new_tokens), jnp.float32),
      done_B=jnp.zeros((batch,), bool), lengths_B=jnp.zeros((batch,), jnp.int32), rng=rng)

  def cond(s: SamplingState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

  def body(s: SamplingState):
    rng, key = jax.random.split(s.rng)
    token_B, logprob_B = _pick(s.next_logits_BxV, key, temperature)
    token_B = jnp.where(s.done_B, pad_id, token_B)
    logprob_B = jnp.where(s.done_B, 0.0, logprob_B)
    logits_Bx1xV, cache = model.apply(params, token_B[:, None], s.next_position_B[:, None],
                                      s.cache)
    return SamplingState(
        step=s.step + 1, cache=cache, next_logits_BxV=logits_Bx1xV[:, 0],
        next_position_B=s.next_position_B + 1,
        tokens_BxG=s.tokens_BxG.at[:, s.step].set(token_B),
        logprobs_BxG=s.logprobs_BxG.at[:, s.step].set(logprob_B),
        done_B=s.done_B | (token_B == eos_id), lengths_B=s.lengths_B + ~s.done_B, rng=rng)

  final = jax.lax.while_loop(cond, body, state)
  return final.tokens_BxG, final.logprobs_BxG, final.lengths_B
