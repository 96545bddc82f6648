"""Ancestral sampling with a KV cache: one prefill, then a `lax.while_loop` decode.

Prompts share a batch by left padding: pad slots get position id -1 and stay
invisible to attention, real tokens get positions 0..len-1, so every row decodes
its next token at the same cache slot but at its own position.

Two entry points share one decode loop (`decode`), which reaches the model only
through a `step(tokens_B, positions_B, cache) -> (logits_BxV, cache)` callback:
  * `sample`: one row per prompt, one cache of P + G slots per row.
  * `sample_n`: N rows per prompt. The prompts are prefilled once into a shared
    `PrefixCache` of P slots per prompt; each row owns only a G-slot suffix cache,
    so N samples of a P-token prompt cost P + N * G cache positions, not N * (P + G).
"""

import enum
import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc.decoding import samplers
from ttc.kernels import packed_matmul
from ttc.models.kv_cache import EMPTY_POSITION, KVCache, PrefixCache
from ttc.models.transformer import PACKED, Transformer


class StopReason(enum.IntEnum):
  """Why a row stopped (values of `Samples.stop_reason_B`)."""

  EOS = 1  # emitted `eos_id` (kept as its last token)
  STOP_TOKEN = 2  # emitted one of `stop_ids`, e.g. a reasoning-step delimiter (kept)
  MAX_NEW_TOKENS = 3  # ran out of its token budget


@flax.struct.dataclass
class Samples:
  """Output of `sample` / `sample_n`; G = max_new_tokens.

  tokens_BxG: int32 generated tokens, the stop token included, pad_id after it.
  logprobs_BxG: float32 log-probability of each token under the sampler (0 for pad).
  lengths_B: int32 tokens generated per row, the stop token included.
  stop_reason_B: int32 `StopReason` of each row.
  """

  tokens_BxG: jax.Array
  logprobs_BxG: jax.Array
  lengths_B: jax.Array
  stop_reason_B: jax.Array


@flax.struct.dataclass
class SamplingState:
  step: jax.Array  # [] int32 tokens generated so far
  cache: KVCache
  next_logits_BxV: jax.Array  # float32 logits for the token about to be sampled
  next_position_B: jax.Array  # int32 position id of that token
  tokens_BxG: jax.Array  # int32 generated tokens, pad after a row stops
  logprobs_BxG: jax.Array  # float32 log-probability of each generated token (0 for pad)
  done_B: jax.Array  # bool row has stopped
  lengths_B: jax.Array  # int32 tokens generated per row, stop token included
  stop_reason_B: jax.Array  # int32 StopReason, 0 while running
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


def prefill(model: Transformer, params, prompt_tokens_BxP, prompt_lengths_B, num_slots: int):
  """Runs left-padded prompts through the model once.

  model: a `Transformer`, or any module with its `hidden_states` / `logits` methods
    (the reward model, whose "logits" are [B, T] values).
  Returns ([B, V] float32 logits for each row's first new token ([B] for a reward
  model), a KVCache of `num_slots` >= P slots with the prompts in slots [0, P)).
  """
  batch, prompt_len = prompt_tokens_BxP.shape
  pad_B = prompt_len - prompt_lengths_B
  slots_P = jnp.arange(prompt_len)
  positions_BxP = jnp.where(slots_P[None] >= pad_B[:, None], slots_P[None] - pad_B[:, None],
                            EMPTY_POSITION)
  cache = KVCache.init(model.config, batch, num_slots)
  x_BxPxD, cache = model.apply(params, prompt_tokens_BxP, positions_BxP, cache,
                               method="hidden_states")
  # Left padding puts every row's last prompt token in the last slot. Only its logits
  # are needed: [B, P, V] of them would be 13 GB for 128 prompts of 512 tokens of
  # SmolLM2 (V = 49,152), and XLA does not move the slice before the projection.
  logits_Bx1xV = model.apply(params, x_BxPxD[:, -1:], method="logits")
  return logits_Bx1xV[:, 0], cache


def packs_weights(config, rows: int) -> bool:
  """Whether decoding `rows` rows of a `config` model packs its weights (see below).

  One row reads the weights at memory speed either way, so it keeps XLA's matmul;
  so does any other backend, a mesh, or a non-float32 model.
  """
  return rows > 1 and packed_matmul.usable(config.activation_dtype, config.weight_dtype)


def with_packed_weights(model: Transformer, variables, rows: int):
  """`variables` plus the PACKED collection where `packs_weights(model.config, rows)`.

  XLA:CPU repacks every weight on every matmul; packed once here, the decode steps
  of this call stream them instead (`ttc.kernels.packed_matmul`; 1.3x faster
  matmuls at 64 rows). The packing costs one copy of the weights per call, and the
  same again in memory while the call runs. Variables that already hold the
  collection are returned as they are: a program that decodes in a loop (search)
  packs once before it, since XLA does not move the packing out of the loop.
  """
  if PACKED in variables or not packs_weights(model.config, rows):
    return variables
  _, packed = model.apply(variables, method=Transformer.pack_weights, mutable=[PACKED])
  return {**variables, **packed}


StepFn = Callable[[jax.Array, jax.Array, KVCache], tuple[jax.Array, KVCache]]


@flax.struct.dataclass
class Continuation:
  """Where each row of a finished decode loop stands, to continue it later.

  next_logits_BxV: float32 logits for the row's next token (after its stop token).
  next_position_B: int32 position id that token will get.
  """

  cache: KVCache
  next_logits_BxV: jax.Array
  next_position_B: jax.Array


def decode(step: StepFn, cache: KVCache, first_logits_BxV, first_position_B, rng,
           sampler: samplers.Sampler, max_new_tokens: int, eos_id: int,
           stop_ids: tuple[int, ...], pad_id: int, max_new_tokens_B) -> tuple[Samples, Continuation]:
  """The decode loop: sample, record, stop rows, feed the token back; exits once all rows stop.

  A row's stop token is still fed to the model, so its cache and next logits are
  ready for a later continuation. After that the row idles: its slots are written
  with position -1 (invisible to attention) and its logits and position are kept.
  All rows share the write slot, so the cache advances by the longest row's count.
  """
  batch = first_logits_BxV.shape[0]
  budget_B = jnp.full((batch,), max_new_tokens, jnp.int32)
  if max_new_tokens_B is not None:
    budget_B = jnp.minimum(budget_B, max_new_tokens_B.astype(jnp.int32))
  stop_ids_S = jnp.asarray(tuple(stop_ids) or (-1,), jnp.int32)  # -1 matches no token
  state = SamplingState(
      step=jnp.zeros((), jnp.int32), cache=cache, next_logits_BxV=first_logits_BxV,
      next_position_B=first_position_B.astype(jnp.int32),
      tokens_BxG=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      logprobs_BxG=jnp.zeros((batch, max_new_tokens), jnp.float32),
      done_B=budget_B <= 0, lengths_B=jnp.zeros((batch,), jnp.int32),
      stop_reason_B=jnp.where(budget_B <= 0, StopReason.MAX_NEW_TOKENS, 0).astype(jnp.int32),
      rng=rng)

  def cond(s: SamplingState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

  def body(s: SamplingState):
    rng, key = jax.random.split(s.rng)
    active_B = ~s.done_B
    token_B, logprob_B = sampler(s.next_logits_BxV, key)
    token_B = jnp.where(active_B, token_B, pad_id)
    logprob_B = jnp.where(active_B, logprob_B, 0.0)
    lengths_B = s.lengths_B + active_B
    reason_B = jnp.where(jnp.any(token_B[:, None] == stop_ids_S, axis=-1),
                         StopReason.STOP_TOKEN, 0)
    reason_B = jnp.where(token_B == eos_id, StopReason.EOS, reason_B)
    reason_B = jnp.where((reason_B == 0) & (lengths_B >= budget_B), StopReason.MAX_NEW_TOKENS,
                         reason_B)
    reason_B = jnp.where(active_B, reason_B, s.stop_reason_B).astype(jnp.int32)
    fed_position_B = jnp.where(active_B, s.next_position_B, EMPTY_POSITION)
    logits_BxV, cache = step(token_B, fed_position_B, s.cache)
    return SamplingState(
        step=s.step + 1, cache=cache,
        next_logits_BxV=jnp.where(active_B[:, None], logits_BxV, s.next_logits_BxV),
        next_position_B=s.next_position_B + active_B,
        tokens_BxG=s.tokens_BxG.at[:, s.step].set(token_B),
        logprobs_BxG=s.logprobs_BxG.at[:, s.step].set(logprob_B),
        done_B=reason_B > 0, lengths_B=lengths_B, stop_reason_B=reason_B, rng=rng)

  final = jax.lax.while_loop(cond, body, state)
  samples = Samples(tokens_BxG=final.tokens_BxG, logprobs_BxG=final.logprobs_BxG,
                    lengths_B=final.lengths_B, stop_reason_B=final.stop_reason_B)
  return samples, Continuation(cache=final.cache, next_logits_BxV=final.next_logits_BxV,
                               next_position_B=final.next_position_B)


_STATIC = ("model", "max_new_tokens", "eos_id", "stop_ids", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample(model: Transformer, params, prompt_tokens_BxP, prompt_lengths_B, rng, sampler,
           *, max_new_tokens: int, eos_id: int, stop_ids: tuple[int, ...] = (),
           pad_id: int = 0, max_new_tokens_B: Optional[jax.Array] = None) -> Samples:
  """Samples up to `max_new_tokens` per row, stopping each row at EOS or a stop token.

  Args:
    prompt_tokens_BxP: int32 left-padded prompts (see `left_pad`).
    prompt_lengths_B: int32 real prompt lengths.
    sampler: a `samplers.Greedy` / `samplers.Temperature`, or a temperature (float
      scalar array, 0 = greedy). Its array fields are traced: changing them does not
      recompile.
    eos_id: end of sequence; -1 for none.
    stop_ids: further token ids that end a row (e.g. a step delimiter); static.
    max_new_tokens_B: optional int32 per-row budget (<= max_new_tokens).
  Returns:
    `Samples` with G = max_new_tokens.
  """
  sampler = samplers.as_sampler(sampler)
  batch, prompt_len = prompt_tokens_BxP.shape
  params = with_packed_weights(model, params, batch)
  first_logits_BxV, cache = prefill(model, params, prompt_tokens_BxP, prompt_lengths_B,
                                    prompt_len + max_new_tokens)

  def step(token_B, position_B, cache):
    logits_Bx1xV, cache = model.apply(params, token_B[:, None], position_B[:, None], cache)
    return logits_Bx1xV[:, 0], cache

  samples, _ = decode(step, cache, first_logits_BxV, prompt_lengths_B, rng, sampler,
                       max_new_tokens, eos_id, stop_ids, pad_id, max_new_tokens_B)
  return samples


@functools.partial(jax.jit, static_argnames=_STATIC + ("num_samples", "return_caches"))
def sample_n(model: Transformer, params, prompt_tokens_QxP, prompt_lengths_Q, rng, sampler,
             *, num_samples: int, max_new_tokens: int, eos_id: int,
             stop_ids: tuple[int, ...] = (), pad_id: int = 0,
             max_new_tokens_B: Optional[jax.Array] = None, return_caches: bool = False):
  """`num_samples` continuations of each of Q prompts, sharing each prompt's cache.

  The prompts are prefilled once ([Q, P] tokens, one forward pass) into a
  `PrefixCache` of Q * P slots; the B = Q * num_samples rows decode into their own
  suffix caches of G = max_new_tokens slots and attend to [prefix ; suffix] under one
  softmax, so the result equals `sample` on each prompt repeated num_samples times.

  Args:
    prompt_tokens_QxP, prompt_lengths_Q: left-padded prompts, as for `sample`.
    num_samples: N rows per prompt; rows are prompt-major (row b is prompt b // N).
    return_caches: also return (prefix cache, final suffix cache), for tests and
      for continuing the rows.
    The rest as for `sample`; max_new_tokens_B is per row, [B].
  Returns:
    `Samples` over B = Q * N rows [, PrefixCache, KVCache].
  """
  sampler = samplers.as_sampler(sampler)
  num_prompts, prompt_len = prompt_tokens_QxP.shape
  params = with_packed_weights(model, params, num_prompts * num_samples)
  first_logits_QxV, prompt_cache = prefill(model, params, prompt_tokens_QxP, prompt_lengths_Q,
                                           prompt_len)
  prefix = PrefixCache.from_cache(prompt_cache)
  # Only the [Q, V] logits and [Q] positions are repeated, never the prefix keys.
  first_logits_BxV = jnp.repeat(first_logits_QxV, num_samples, axis=0)
  first_position_B = jnp.repeat(prompt_lengths_Q, num_samples, axis=0)
  suffix = KVCache.init(model.config, num_prompts * num_samples, max_new_tokens)

  def step(token_B, position_B, cache):
    logits_Bx1xV, cache = model.apply(params, token_B[:, None], position_B[:, None], cache,
                                      prefix=prefix)
    return logits_Bx1xV[:, 0], cache

  samples, continuation = decode(step, suffix, first_logits_BxV, first_position_B, rng,
                                 sampler, max_new_tokens, eos_id, stop_ids, pad_id,
                                 max_new_tokens_B)
  if return_caches:
    return samples, prefix, continuation.cache
  return samples


def bucket(n: int, minimum: int = 1) -> int:
  """The next power of two >= max(n, minimum).

  Padding batch and prompt sizes to buckets bounds how many programs a sweep over
  many problems compiles: one per (prompt-count bucket, length bucket).
  """
  size = max(1, minimum)
  while size < n:
    size *= 2
  return size


def sample_prompts(model: Transformer, params, prompts: list[list[int]], rng, sampler, *,
                   num_samples: int, max_new_tokens: int, eos_id: int,
                   stop_ids: tuple[int, ...] = (), pad_id: int = 0,
                   min_prompt_length: int = 16) -> Samples:
  """`sample_n` on host lists of prompt ids, with shapes bucketed.

  The number of prompts and the prompt length are padded to powers of two (the
  length to at least `min_prompt_length`); padding prompts get a zero token budget.
  Returns `Samples` of the real Q * num_samples rows only (prompt-major).
  """
  num_prompts = len(prompts)
  padded = list(prompts) + [[]] * (bucket(num_prompts) - num_prompts)
  tokens, lengths = left_pad(padded, bucket(max(len(p) for p in prompts), min_prompt_length),
                             pad_id)
  real_rows = num_prompts * num_samples
  budget_B = np.where(np.arange(len(padded) * num_samples) < real_rows, max_new_tokens, 0)
  out = sample_n(model, params, tokens, lengths, rng, sampler, num_samples=num_samples,
                 max_new_tokens=max_new_tokens, eos_id=eos_id, stop_ids=tuple(stop_ids),
                 pad_id=pad_id, max_new_tokens_B=jnp.asarray(budget_B, jnp.int32))
  return jax.tree.map(lambda x: x[:real_rows], out)

