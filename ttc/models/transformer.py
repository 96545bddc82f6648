"""Decoder-only transformer of the Llama family: RMSNorm, RoPE, GQA, SwiGLU.

One module serves Llama, Qwen2 (qkv bias) and SmolLM2 (tied embeddings). Every
parameter and activation carries logical axis names; `ttc.partitioning`
maps them onto the device mesh, so no mesh axis name appears here.

Shape suffixes: B batch, T new tokens, S cache slots (keys), D embed, H query
heads, K kv heads, G = H // K query heads per kv head, E head dim, F mlp, V vocab;
with a shared prefix cache: Q prompts, N = B // Q rows per prompt, P prefix slots.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ttc.kernels import decode_attention, packed_matmul, rms_norm
from ttc.models.config import ModelConfig
from ttc.models.kv_cache import EMPTY_POSITION, KVCache, PrefixCache

_init = nn.initializers.normal(stddev=0.02)
constrain = nn.with_logical_constraint
# Variable collection of weights packed for `packed_matmul` (see Transformer.pack_weights).
PACKED = "cpu_packed"


def _param(axes, init=_init):
  return nn.with_logical_partitioning(init, axes)


class Dense(nn.Module):
  """x @ kernel (+ bias) over the trailing `num_in_axes` axes of x.

  The kernel is created at its full shape [*in_shape, *features] so its logical axes
  apply directly (flax's DenseGeneral builds a flat kernel and reshapes it, which
  breaks sharding constraints on multi-axis kernels).

  quantization="int8" stores the kernel output-major as int8 with a float32 `scale`
  per output feature (weight-only; see `ttc.models.quantization`), converted to the
  activation dtype where it is used.

  With the kernel's panels in the PACKED collection (decoding on CPU), the product
  runs through `packed_matmul` instead of XLA's dot (q, k, v and gate, up are packed
  together by their parent instead: `_fused_projection`).
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_in_axes: int = 1
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  quantization: str = "none"

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.num_in_axes:]
    in_axes, out_axes = self.kernel_axes[:self.num_in_axes], self.kernel_axes[self.num_in_axes:]
    out_size, in_size = math.prod(self.features), math.prod(in_shape)
    batch_shape = x.shape[:x.ndim - self.num_in_axes]
    if self.quantization == "int8":
      # Output-major [*features, *in_shape], like torch's Linear, used as one 2-D
      # matmul [rows, in] x [out, in]^T: the form in which XLA:CPU fuses the int8
      # convert into the matmul instead of writing a float copy of the kernel.
      kernel = self.param("kernel", _param(out_axes + in_axes, _int8_init),
                          (*self.features, *in_shape), jnp.int8)
      x_2d = x.reshape(-1, in_size).astype(self.dtype)
      y = jnp.dot(x_2d, kernel.reshape(out_size, in_size).astype(self.dtype).T)
      y = y.reshape(*batch_shape, *self.features)
      y = y * self.param("scale", _param(out_axes, nn.initializers.ones), self.features,
                         jnp.float32).astype(self.dtype)
    else:
      kernel = self.param("kernel", _param(self.kernel_axes), (*in_shape, *self.features),
                          self.param_dtype)
      panels = _packed_panels(
          self, "kernel", lambda: packed_matmul.pack(kernel.reshape(in_size, out_size)),
          self.dtype, self.param_dtype)
      if panels is not None:
        y = packed_matmul.matmul(x.reshape(-1, in_size), panels, out_size)
        y = y.reshape(*batch_shape, *self.features)
      else:
        contract = tuple(range(x.ndim - self.num_in_axes, x.ndim))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((contract, tuple(range(self.num_in_axes))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", _param(out_axes, nn.initializers.zeros), self.features,
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def _packed_panels(module: nn.Module, name: str, pack_fn, activation_dtype, weight_dtype):
  """One weight's `packed_matmul` panels, pack_fn(), or None to use XLA's dot.

  They exist only where a caller asked for them: created while the PACKED
  collection is mutable (`Transformer.pack_weights`), read while it is passed in.
  Never at init, and only where `packed_matmul` runs (float32, one CPU device).
  """
  wanted = module.has_variable(PACKED, name) or (
      module.is_mutable_collection(PACKED) and not module.is_initializing())
  if not (wanted and packed_matmul.usable(activation_dtype, weight_dtype)):
    return None
  return module.variable(PACKED, name, pack_fn).value


def _fused_projection(module: nn.Module, name: str, x, parts, use_bias: bool, config: ModelConfig):
  """[x @ kernel (+ bias) for each (child name, features) of `parts`], as one packed matmul,
  or None where the weights are not packed (then each child Dense runs its own).

  The parts share their input (q, k, v; gate, up), so their panels are concatenated
  once at pack time into the PACKED variable `name` of `module`, and a decode step
  makes one kernel call for them: 4 a layer instead of 7. Each part is padded to whole
  panels on its own, so every output column is summed exactly as its own Dense's.
  """
  if config.quantization != "none":
    return None  # int8 kernels are never packed
  in_size = x.shape[-1]

  def pack_all():
    params = module.variables["params"]
    return jnp.concatenate(
        [packed_matmul.pack(params[child]["kernel"].reshape(in_size, math.prod(features)))
         for child, features in parts], axis=0)

  dtype = config.activation_dtype
  panels = _packed_panels(module, name, pack_all, dtype, config.weight_dtype)
  if panels is None:
    return None
  batch_shape = x.shape[:-1]
  y = packed_matmul.matmul(x.reshape(-1, in_size), panels, packed_matmul.matrix_shape(panels)[1])
  columns = packed_matmul.format_of(panels).columns
  outputs, start = [], 0
  for child, features in parts:
    size = math.prod(features)
    out = y[:, start:start + size].reshape(*batch_shape, *features)
    if use_bias:
      out = out + module.variables["params"][child]["bias"].astype(dtype)
    outputs.append(out)
    start += -(-size // columns) * columns
  return outputs


def _int8_init(key, shape, dtype):
  """Placeholder values: int8 weights come from `quantization.quantize_params`."""
  del key
  return jnp.zeros(shape, dtype)


class Embed(nn.Module):
  """Token embedding [V, D]; `attend` is the tied output projection x @ embedding.T.

  quantization="int8": int8 rows with a float32 `scale` per row (= per vocabulary
  entry), which serves both the lookup and the tied output projection.
  tied: `attend` is used; its weight (embedding.T) then has panels in the PACKED
  collection when the Dense kernels do.
  """

  vocab_size: int
  embed_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  quantization: str = "none"
  tied: bool = False

  def setup(self):
    int8 = self.quantization == "int8"
    self.embedding = self.param(
        "embedding", _param(("vocab", "embed"), _int8_init if int8 else _init),
        (self.vocab_size, self.embed_dim), jnp.int8 if int8 else self.param_dtype)
    if int8:
      self.scale = self.param("scale", _param(("vocab",), nn.initializers.ones),
                              (self.vocab_size,), jnp.float32)
    self.attend_panels = None if not self.tied else _packed_panels(
        self, "attend", lambda: packed_matmul.pack(self.embedding, transposed=True), self.dtype,
        self.embedding.dtype)

  def __call__(self, tokens_BxT):
    x_BxTxD = jnp.take(self.embedding, tokens_BxT, axis=0).astype(self.dtype)
    if self.quantization == "int8":
      x_BxTxD = x_BxTxD * jnp.take(self.scale, tokens_BxT, axis=0)[..., None].astype(self.dtype)
    return x_BxTxD

  def attend(self, x_BxTxD):
    if self.attend_panels is not None:
      b, t, d = x_BxTxD.shape
      return packed_matmul.matmul(x_BxTxD.reshape(b * t, d), self.attend_panels,
                                  self.vocab_size).reshape(b, t, self.vocab_size)
    logits = jnp.dot(x_BxTxD.astype(self.dtype), self.embedding.astype(self.dtype).T)
    if self.quantization == "int8":
      logits = logits * self.scale.astype(self.dtype)
    return logits


class RMSNorm(nn.Module):
  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, inference: bool = False):
    """inference: nothing will be differentiated (a step with a KV cache), so on one
    CPU device the compiled kernel may run (`ttc.kernels.rms_norm`: one call instead
    of XLA's three thunks; it has no gradient)."""
    scale = self.param("scale", _param(("norm",), nn.initializers.ones), (x.shape[-1],),
                       self.param_dtype)
    if inference and jnp.dtype(self.dtype) == jnp.float32 and rms_norm.usable(x, scale):
      return rms_norm.normalize(x, scale, self.eps)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # Llama casts back to the activation dtype before scaling; so do we, for parity.
    return normed.astype(self.dtype) * scale.astype(self.dtype)


def rope_angles(positions_BxT, head_dim: int, theta: float):
  """(cos, sin), each [B, T, 1, head_dim] float32: computed once, shared by all layers."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_BxTxE2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  angles_BxTx1xE = jnp.concatenate([angles_BxTxE2, angles_BxTxE2], axis=-1)[:, :, None, :]
  return _materialize(jnp.cos(angles_BxTx1xE)), _materialize(jnp.sin(angles_BxTx1xE))


def _materialize(x_BxTx1xE):
  """x, computed once into its own buffer (an exact product with the identity).

  XLA:CPU fuses elementwise producers into every consumer, so without this each
  layer's q and k rotations recomputed cos and sin for every head: 30 layers x 12
  heads of transcendentals per token, 12% of a SmolLM2 decode step at 64 rows. A
  dot is never fused into its consumers, and optimization_barrier is dropped
  before fusion on that backend. HIGHEST keeps the product exact on TPU and GPU.
  """
  eye_ExE = jnp.eye(x_BxTx1xE.shape[-1], dtype=x_BxTx1xE.dtype)
  return jnp.dot(x_BxTx1xE, eye_ExE, precision=jax.lax.Precision.HIGHEST)


def apply_rope(x_BxTxNxE, rope):
  """Rotary embedding in the "rotate half" layout of HF Llama (not interleaved)."""
  cos, sin = rope
  x32 = x_BxTxNxE.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x_BxTxNxE.dtype)


def attention_mask(query_positions_BxT, key_positions_BxS, segment_ids_BxT=None):
  """[B, T, S] bool: a query sees filled slots at or before its own position.

  segment_ids_BxT (training on packed rows only, where S == T): a query also sees
  only keys of its own segment.
  """
  q = query_positions_BxT[:, :, None]
  k = key_positions_BxS[:, None, :]
  mask = (k != EMPTY_POSITION) & (k <= q)
  if segment_ids_BxT is not None:
    mask &= segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return mask


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, rope, mask_BxTxS, kv_cache=None, layer=None, write_slot=None,
               prefix_kv=None, prefix_mask_BxTxP=None):
    """Returns the attention output and, with a cache, the updated (k, v) of all layers.

    rope: (cos, sin) of the new tokens' positions, from `rope_angles`.
    kv_cache: optional (k, v) of *all* layers, each a tuple of L arrays [B, K, S, E];
    this layer's new keys and values are written into its own arrays at
    [:, :, write_slot : write_slot + T], in place (the arrays are donated).
    prefix_kv: optional read-only (k, v) of this layer, each [Q, K, P, E], shared by the N = B // Q
    consecutive rows of each prompt; those rows attend to their prompt's P prefix
    keys and to their own S keys under one softmax. prefix_mask_BxTxP says which
    prefix slots each query sees.
    """
    cfg = self.config
    dense = lambda name, features, axes, num_in_axes=1, use_bias=False: Dense(
        features, axes, num_in_axes, use_bias, cfg.activation_dtype, cfg.weight_dtype,
        cfg.quantization, name=name)
    qkv = _fused_projection(
        self, "qkv_proj", x_BxTxD, (("q_proj", (cfg.num_heads, cfg.head_dim)),
                                    ("k_proj", (cfg.num_kv_heads, cfg.head_dim)),
                                    ("v_proj", (cfg.num_kv_heads, cfg.head_dim))),
        cfg.qkv_bias, cfg)
    if qkv is not None:
      q_BxTxHxE, k_BxTxKxE, v_BxTxKxE = qkv
    else:
      q_BxTxHxE = dense("q_proj", (cfg.num_heads, cfg.head_dim),
                        ("embed", "q_heads", "head_dim"), use_bias=cfg.qkv_bias)(x_BxTxD)
      k_BxTxKxE = dense("k_proj", (cfg.num_kv_heads, cfg.head_dim),
                        ("embed", "kv_heads", "head_dim"), use_bias=cfg.qkv_bias)(x_BxTxD)
      v_BxTxKxE = dense("v_proj", (cfg.num_kv_heads, cfg.head_dim),
                        ("embed", "kv_heads", "head_dim"), use_bias=cfg.qkv_bias)(x_BxTxD)
    q_BxTxHxE = constrain(apply_rope(q_BxTxHxE, rope),
                          ("activation_batch", "activation_length", "activation_heads", None))
    k_BxTxKxE = apply_rope(k_BxTxKxE, rope)

    # Keys and values kv-head-major ([B, K, S, E]), the cache's layout.
    k_BxKxTxE = jnp.swapaxes(k_BxTxKxE, 1, 2)
    v_BxKxTxE = jnp.swapaxes(v_BxTxKxE, 1, 2)
    new_cache = None
    if kv_cache is None:
      keys_BxKxSxE, values_BxKxSxE = k_BxKxTxE, v_BxKxTxE
    else:
      cache_k, cache_v = kv_cache
      start = (0, 0, write_slot, 0)
      keys_BxKxSxE = jax.lax.dynamic_update_slice(
          cache_k[layer], k_BxKxTxE.astype(cache_k[layer].dtype), start)
      values_BxKxSxE = jax.lax.dynamic_update_slice(
          cache_v[layer], v_BxKxTxE.astype(cache_v[layer].dtype), start)
      new_cache = (cache_k[:layer] + (keys_BxKxSxE,) + cache_k[layer + 1:],
                   cache_v[:layer] + (values_BxKxSxE,) + cache_v[layer + 1:])

    b, t, h, e = q_BxTxHxE.shape
    kv_heads = cfg.num_kv_heads
    # Query head h reads kv head h // G: split H as [K, G] instead of repeating keys G times.
    q_BxTxKxGxE = q_BxTxHxE.reshape(b, t, kv_heads, h // kv_heads, e)

    def attend(keys_BxKxSxE, values_BxKxSxE, mask_BxTxS):
      scores_BxKxGxTxS = _scores(q_BxTxKxGxE, keys_BxKxSxE) * (e ** -0.5)
      # A finite fill keeps fully masked rows (left-padding queries) free of NaN.
      scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, -1e30)
      if prefix_kv is None:
        probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(values_BxKxSxE.dtype)
        return _weighted_values(probs_BxKxGxTxS, values_BxKxSxE).reshape(b, t, h, e)
      return _attend_with_prefix(q_BxTxKxGxE, scores_BxKxGxTxS, values_BxKxSxE, prefix_kv,
                                 prefix_mask_BxTxP)

    if kv_cache is not None and t == 1:
      # A decode step on one CPU device: XLA runs `attend`'s cache reductions as
      # single-threaded loops; the compiled kernel is 2-3x faster (ttc.kernels).
      if decode_attention.usable(q_BxTxKxGxE[:, 0], keys_BxKxSxE, prefix_kv):
        out_BxKxGxE = decode_attention.attend(
            q_BxTxKxGxE[:, 0], keys_BxKxSxE, values_BxKxSxE, mask_BxTxS[:, 0], prefix_kv,
            None if prefix_mask_BxTxP is None else prefix_mask_BxTxP[:, 0], scale=e ** -0.5)
        out_BxTxHxE = out_BxKxGxE.reshape(b, t, h, e)
      else:
        out_BxTxHxE = _attend_written_slots(attend, keys_BxKxSxE, values_BxKxSxE, mask_BxTxS,
                                            write_slot + t)
    else:
      out_BxTxHxE = attend(keys_BxKxSxE, values_BxKxSxE, mask_BxTxS)
    out_BxTxD = dense("o_proj", (cfg.embed_dim,), ("q_heads", "head_dim", "embed"),
                      num_in_axes=2)(out_BxTxHxE)
    return out_BxTxD, new_cache


_MIN_SLOT_BUCKET = 16


def _attend_written_slots(attend, keys_BxKxSxE, values_BxKxSxE, mask_BxTxS, written):
  """attend(...) over the first `written` slots only, rounded up to a bucket.

  A decode step reads every key and value of the cache, so a cache that is mostly
  still empty costs as much as a full one. Slots past `cache.end` are always empty
  (`KVCache.take_rows` packs written slots first), so attending to a prefix of the
  slots is exact. `lax.switch` picks one of a few static sizes (powers of two from
  16, then all slots), so filling a cache reads about 2/3 of what full reads would.

  written: [] int32 slots in use, this step's included.
  """
  num_slots = keys_BxKxSxE.shape[2]
  buckets = []
  size = _MIN_SLOT_BUCKET
  while size < num_slots:
    buckets.append(size)
    size *= 2
  buckets.append(num_slots)
  branches = [lambda k, v, m, s=s: attend(k[:, :, :s], v[:, :, :s], m[..., :s]) for s in buckets]
  if len(branches) == 1:
    return branches[0](keys_BxKxSxE, values_BxKxSxE, mask_BxTxS)
  index = jnp.sum(jnp.asarray(buckets[:-1]) < written)
  return jax.lax.switch(index, branches, keys_BxKxSxE, values_BxKxSxE, mask_BxTxS)


def _scores(q_BxTxKxGxE, keys_BxKxSxE):
  """float32 sum_e q[b, t, k, g, e] * keys[b, k, s, e] -> [B, K, G, T, S].

  For one query per row, a broadcast multiply and a reduction over the contiguous
  head_dim: see `_weighted_values` for why not a batched dot.
  """
  if q_BxTxKxGxE.shape[1] != 1:
    return jnp.einsum("btkge,bkse->bkgts", q_BxTxKxGxE, keys_BxKxSxE,
                      preferred_element_type=jnp.float32)
  q_BxKxGx1xE = q_BxTxKxGxE[:, 0, :, :, None].astype(jnp.float32)
  scores_BxKxGxS = jnp.sum(q_BxKxGx1xE * keys_BxKxSxE[:, :, None].astype(jnp.float32), axis=-1)
  return scores_BxKxGxS[:, :, :, None]


def _weighted_values(probs_BxKxGxTxS, values_BxKxSxE):
  """sum_s probs[b, k, g, t, s] * values[b, k, s, e] -> [B, T, K, G, E].

  One query per row (decoding) is a [G, S] x [S, E] product per (row, kv head):
  far too small for a matmul call, and XLA:CPU's batched dot of them ran 2x slower
  than this broadcast multiply-add, which it fuses into one loop over the cache.
  """
  if probs_BxKxGxTxS.shape[3] != 1:
    return jnp.einsum("bkgts,bkse->btkge", probs_BxKxGxTxS, values_BxKxSxE)
  out_BxKxGxE = jnp.sum(probs_BxKxGxTxS[:, :, :, 0, :, None] * values_BxKxSxE[:, :, None],
                        axis=3)
  return out_BxKxGxE[:, None]


def _attend_with_prefix(q_BxTxKxGxE, suffix_scores_BxKxGxTxS, suffix_v_BxKxSxE, prefix_kv,
                        prefix_mask_BxTxP):
  """Attention over [prefix keys of the row's prompt ; the row's own suffix keys].

  The prefix is read per prompt by splitting the batch into [Q, N] instead of
  repeating its keys N times, so its memory stays Q * P slots whatever N is. One
  softmax over the concatenated scores is exactly the softmax over the keys a single
  cache of P + S slots would hold (and in the same order). Returns [B, T, H, E].
  """
  prefix_k_QxKxPxE, prefix_v_QxKxPxE = prefix_kv
  b, t, kv_heads, group, e = q_BxTxKxGxE.shape
  nq, p = prefix_k_QxKxPxE.shape[0], prefix_k_QxKxPxE.shape[2]
  n = b // nq
  q_QxNxTxKxGxE = q_BxTxKxGxE.reshape(nq, n, t, kv_heads, group, e)
  prefix_scores = jnp.einsum("qntkge,qkpe->qnkgtp", q_QxNxTxKxGxE, prefix_k_QxKxPxE,
                             preferred_element_type=jnp.float32) * (e ** -0.5)
  prefix_scores_BxKxGxTxP = prefix_scores.reshape(b, kv_heads, group, t, p)
  prefix_scores_BxKxGxTxP = jnp.where(prefix_mask_BxTxP[:, None, None], prefix_scores_BxKxGxTxP,
                                      -1e30)
  scores = jnp.concatenate([prefix_scores_BxKxGxTxP, suffix_scores_BxKxGxTxS], axis=-1)
  probs = jax.nn.softmax(scores, axis=-1).astype(suffix_v_BxKxSxE.dtype)
  prefix_probs_BxKxGxTxP, suffix_probs_BxKxGxTxS = jnp.split(probs, [p], axis=-1)
  prefix_out = jnp.einsum("qnkgtp,qkpe->qntkge",
                          prefix_probs_BxKxGxTxP.reshape(nq, n, kv_heads, group, t, p),
                          prefix_v_QxKxPxE.astype(suffix_v_BxKxSxE.dtype))
  suffix_out = _weighted_values(suffix_probs_BxKxGxTxS, suffix_v_BxKxSxE)
  return (prefix_out.reshape(b, t, kv_heads, group, e) + suffix_out).reshape(b, t, -1, e)


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config
    dense = lambda name, features, axes: Dense(
        (features,), axes, dtype=cfg.activation_dtype, param_dtype=cfg.weight_dtype,
        quantization=cfg.quantization, name=name)
    gate_up = _fused_projection(self, "gate_up_proj", x_BxTxD,
                                (("gate_proj", (cfg.mlp_dim,)), ("up_proj", (cfg.mlp_dim,))),
                                False, cfg)
    if gate_up is not None:
      gate_BxTxF, up_BxTxF = gate_up
    else:
      gate_BxTxF = dense("gate_proj", cfg.mlp_dim, ("embed", "mlp"))(x_BxTxD)
      up_BxTxF = dense("up_proj", cfg.mlp_dim, ("embed", "mlp"))(x_BxTxD)
    hidden_BxTxF = constrain(nn.silu(gate_BxTxF) * up_BxTxF,
                             ("activation_batch", "activation_length", "activation_mlp"))
    return dense("down_proj", cfg.embed_dim, ("mlp", "embed"))(hidden_BxTxF)


class DecoderLayer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, rope, mask_BxTxS, deterministic, kv_cache=None, layer=None,
               write_slot=None, prefix_kv=None, prefix_mask_BxTxP=None):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.activation_dtype, cfg.weight_dtype, name=name)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    inference = kv_cache is not None  # nothing is differentiated through a cache
    attn_out, new_cache = Attention(cfg, name="self_attn")(
        norm("input_layernorm")(x_BxTxD, inference), rope, mask_BxTxS, kv_cache, layer,
        write_slot, prefix_kv, prefix_mask_BxTxP)
    x_BxTxD = x_BxTxD + drop(attn_out)
    mlp_in_BxTxD = norm("post_attention_layernorm")(x_BxTxD, inference)
    x_BxTxD = x_BxTxD + drop(MLP(cfg, name="mlp")(mlp_in_BxTxD))
    x_BxTxD = constrain(x_BxTxD, ("activation_batch", "activation_length", "activation_embed"))
    return x_BxTxD, new_cache


class Transformer(nn.Module):
  """The policy/backbone. `__call__` runs T new tokens, with or without a KV cache."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = Embed(cfg.vocab_size, cfg.embed_dim, cfg.activation_dtype,
                              cfg.weight_dtype, cfg.quantization, cfg.tied_embeddings,
                              name="embed_tokens")
    self.layers = [DecoderLayer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.norm_eps, cfg.activation_dtype, cfg.weight_dtype, name="norm")
    if not cfg.tied_embeddings:
      self.lm_head = Dense((cfg.vocab_size,), ("embed", "vocab"), dtype=cfg.activation_dtype,
                           param_dtype=cfg.weight_dtype, quantization=cfg.quantization,
                           name="lm_head")

  def hidden_states(self, tokens_BxT, positions_BxT, cache: Optional[KVCache] = None,
                    deterministic: bool = True, segment_ids_BxT=None,
                    prefix: Optional[PrefixCache] = None):
    """Final-norm hidden states [B, T, D] and the updated cache (None without one).

    positions_BxT: int32 position ids; -1 marks padding that must stay invisible.
    With a cache the T tokens are written at slots [cache.end, cache.end + T).
    segment_ids_BxT: for packed training rows (no cache), which example each token is.
    prefix: read-only keys of Q prompts shared by B = Q * N rows (prompt-major); every
      row also attends to its prompt's prefix slots. Needs `cache` (the rows' own keys).
    """
    if prefix is not None and cache is None:
      raise ValueError("a prefix cache needs a KVCache for the new tokens' keys")
    if prefix is not None and tokens_BxT.shape[0] % prefix.num_prompts:
      raise ValueError(f"batch {tokens_BxT.shape[0]} is not a multiple of the prefix cache's "
                       f"{prefix.num_prompts} prompts; use N rows per prompt, prompt-major")
    x_BxTxD = self.embed_tokens(tokens_BxT)
    x_BxTxD = constrain(x_BxTxD, ("activation_batch", "activation_length", "activation_embed"))
    if cache is None:
      mask_BxTxS = attention_mask(positions_BxT, positions_BxT, segment_ids_BxT)
    else:
      slot_positions_BxS = jax.lax.dynamic_update_slice(
          cache.positions, positions_BxT.astype(jnp.int32), (0, cache.end))
      mask_BxTxS = attention_mask(positions_BxT, slot_positions_BxS)
    prefix_mask_BxTxP = None
    if prefix is not None:
      # Rows of one prompt are consecutive: compare per prompt, never copying its positions.
      b, t = positions_BxT.shape
      nq, p = prefix.positions.shape
      prefix_mask_BxTxP = attention_mask(
          positions_BxT.reshape(nq, b // nq * t), prefix.positions).reshape(b, t, p)
    rope = rope_angles(positions_BxT, self.config.head_dim, self.config.rope_theta)
    kv = None if cache is None else (cache.k, cache.v)
    for i, layer in enumerate(self.layers):
      layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i])
      x_BxTxD, kv = layer(x_BxTxD, rope, mask_BxTxS, deterministic, kv, i,
                          None if cache is None else cache.end, layer_prefix, prefix_mask_BxTxP)
    x_BxTxD = self.norm(x_BxTxD, inference=cache is not None)
    if cache is None:
      return x_BxTxD, None
    new_cache = KVCache(k=kv[0], v=kv[1], positions=slot_positions_BxS,
                        end=cache.end + tokens_BxT.shape[1])
    return x_BxTxD, new_cache

  def logits(self, x_BxTxD):
    """[B, T, V] float32 next-token logits from final hidden states."""
    if self.config.tied_embeddings:
      logits = self.embed_tokens.attend(x_BxTxD)
    else:
      logits = self.lm_head(x_BxTxD)
    logits = constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)

  def pack_weights(self):
    """Fills the PACKED collection: `apply(variables, method=..., mutable=[PACKED])`.

    Every matmul weight gets its `packed_matmul` panels (q, k, v in one set and gate,
    up in another: `_fused_projection`), which later applies that are
    given the collection use (where `packed_matmul.usable`; elsewhere it stays
    empty). It runs a one-token forward pass only so that each layer packs its own
    weights; its outputs are discarded, so XLA keeps only the packing.
    """
    tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
    self.logits(self.hidden_states(tokens_1x1, tokens_1x1)[0])

  def __call__(self, tokens_BxT, positions_BxT, cache: Optional[KVCache] = None,
               deterministic: bool = True, segment_ids_BxT=None,
               prefix: Optional[PrefixCache] = None):
    """Returns ([B, T, V] float32 logits, updated cache or None); see `hidden_states`."""
    x_BxTxD, new_cache = self.hidden_states(tokens_BxT, positions_BxT, cache, deterministic,
                                            segment_ids_BxT, prefix)
    return self.logits(x_BxTxD), new_cache
