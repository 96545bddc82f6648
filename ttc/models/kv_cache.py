"""The functional key/value cache of the decoder.

A cache is an explicit pytree passed into and returned from the model (no Flax
"cache" collection), so samplers can donate it, fork rows and reorder beams with
plain array ops.

Every cache slot remembers the *position id* of the token written there, or -1 if
the slot is empty. Attention masks keys by comparing position ids, which gives, in
one rule, causality, left padding (pad tokens are written with position -1) and
rows whose prompts have different lengths.
"""

import flax.struct
import jax
import jax.numpy as jnp

from ttc.models.config import ModelConfig

EMPTY_POSITION = -1


@flax.struct.dataclass
class KVCache:
  """Keys and values of all layers for a batch of sequences.

  Attributes:
    k: [layers, batch, slots, kv_heads, head_dim] keys, RoPE already applied.
    v: [layers, batch, slots, kv_heads, head_dim] values.
    positions: [batch, slots] int32 position id of the token in each slot; -1 = empty.
    end: [] int32 number of slots written so far (all rows write in lockstep).
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  end: jax.Array

  @classmethod
  def init(cls, config: ModelConfig, batch: int, num_slots: int) -> "KVCache":
    shape = (config.num_layers, batch, num_slots, config.num_kv_heads, config.head_dim)
    return cls(
        k=jnp.zeros(shape, config.activation_dtype),
        v=jnp.zeros(shape, config.activation_dtype),
        positions=jnp.full((batch, num_slots), EMPTY_POSITION, jnp.int32),
        end=jnp.zeros((), jnp.int32),
    )

  @property
  def num_slots(self) -> int:
    return self.positions.shape[1]

  def take_rows(self, rows_B: jax.Array) -> "KVCache":
    """The cache whose row b is this cache's row rows_B[b]: forks (repeated rows) and
    reorders beams in one gather. rows_B: int32 [B'] source rows."""
    return self.replace(k=jnp.take(self.k, rows_B, axis=1), v=jnp.take(self.v, rows_B, axis=1),
                        positions=jnp.take(self.positions, rows_B, axis=0))


@flax.struct.dataclass
class PrefixCache:
  """Read-only keys and values of prompts shared by several sampled rows.

  Sampling N continuations of one prompt stores the prompt's keys once: decode row
  b (of B = prompts * N rows, prompt-major) attends to prefix row b // N plus its own
  rows of the ordinary `KVCache` (the suffix). The number of samples per prompt is
  not stored; it is B // prompts, read from the decode batch.

  Attributes:
    k: [layers, prompts, slots, kv_heads, head_dim] keys, RoPE already applied.
    v: [layers, prompts, slots, kv_heads, head_dim] values.
    positions: [prompts, slots] int32 position id per slot; -1 = empty (left padding).
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array

  @property
  def num_prompts(self) -> int:
    return self.k.shape[1]

  @classmethod
  def from_cache(cls, cache: KVCache) -> "PrefixCache":
    """Freezes a prefilled cache (its slots all written) into a shared prefix."""
    return cls(k=cache.k, v=cache.v, positions=cache.positions)

