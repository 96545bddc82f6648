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
    k: one [batch, kv_heads, slots, head_dim] array of keys per layer (a tuple), RoPE
      already applied. Per-layer arrays, not one stacked [layers, ...] array: a layer
      reads and updates its own buffer in place, where XLA:CPU copied a layer's slice
      out of the stacked array on every step. Slots sit next to head_dim, as
      attention reads them, so no step transposes the cache.
    v: the values, laid out like k.
    positions: [batch, slots] int32 position id of the token in each slot; -1 = empty.
    end: [] int32 number of slots written so far (all rows write in lockstep).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  positions: jax.Array
  end: jax.Array

  @classmethod
  def init(cls, config: ModelConfig, batch: int, num_slots: int) -> "KVCache":
    shape = (batch, config.num_kv_heads, num_slots, config.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, config.activation_dtype)
                          for _ in range(config.num_layers))
    return cls(
        k=zeros(),
        v=zeros(),
        positions=jnp.full((batch, num_slots), EMPTY_POSITION, jnp.int32),
        end=jnp.zeros((), jnp.int32),
    )

  @property
  def num_slots(self) -> int:
    return self.positions.shape[1]

  def take_rows(self, rows_B: jax.Array) -> "KVCache":
    """The cache whose row b is this cache's row rows_B[b]: forks (repeated rows) and
    reorders beams in one gather. rows_B: int32 [B'] source rows."""
    take = lambda layers: tuple(jnp.take(x, rows_B, axis=0) for x in layers)
    return self.replace(k=take(self.k), v=take(self.v),
                        positions=jnp.take(self.positions, rows_B, axis=0))


@flax.struct.dataclass
class PrefixCache:
  """Read-only keys and values of prompts shared by several sampled rows.

  Sampling N continuations of one prompt stores the prompt's keys once: decode row
  b (of B = prompts * N rows, prompt-major) attends to prefix row b // N plus its own
  rows of the ordinary `KVCache` (the suffix). The number of samples per prompt is
  not stored; it is B // prompts, read from the decode batch.

  Attributes:
    k: one [prompts, kv_heads, slots, head_dim] array of keys per layer, as in KVCache.
    v: the values, laid out like k.
    positions: [prompts, slots] int32 position id per slot; -1 = empty (left padding).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  positions: jax.Array

  @property
  def num_prompts(self) -> int:
    return self.k[0].shape[0]

  @classmethod
  def from_cache(cls, cache: KVCache) -> "PrefixCache":
    """Freezes a prefilled cache (its slots all written) into a shared prefix."""
    return cls(k=cache.k, v=cache.v, positions=cache.positions)

