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
    """The cache whose row b is this cache's row rows_B[b], with its written slots packed.

    One gather forks rows (repeated indices) and reorders beams (a permutation).
    It also moves each row's written slots to the front, in order, and sets `end` to
    the most any row holds. Rows write in lockstep, so a row that stopped early in
    a step leaves empty slots while the longest row continues; packing hands them
    back, and a search's cache needs about one solution plus one step of slots
    instead of the sum of every round's longest step. Attention masks keys by
    their position ids, and keys carry their rotary position already, so where a
    key sits changes nothing that attention computes.

    rows_B: int32 [B'] source rows.
    """
    written_BxS = jnp.take(self.positions, rows_B, axis=0) != EMPTY_POSITION
    slots_BxS = jnp.argsort(~written_BxS, axis=1, stable=True)  # written first, in order
    num_kv_heads = self.k[0].shape[1]
    # One gather per array: [B', 1, 1] rows x [1, K, 1] heads x [B', 1, S] slots.
    take = lambda x: x[rows_B[:, None, None], jnp.arange(num_kv_heads)[None, :, None],
                       slots_BxS[:, None, :]]
    return self.replace(
        k=tuple(map(take, self.k)), v=tuple(map(take, self.v)),
        positions=jnp.take(self.positions, rows_B, axis=0)[
            jnp.arange(rows_B.shape[0])[:, None], slots_BxS],
        end=jnp.max(jnp.sum(written_BxS, axis=1)).astype(jnp.int32))


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

