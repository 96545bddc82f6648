"""Hyperparameters of the decoder-only transformer (Llama / Qwen2 family)."""

import dataclasses
import math

import gin
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of one decoder-only transformer.

  Field names follow HF `config.json` meanings so checkpoint loaders map one to one:
  `embed_dim` = hidden_size, `mlp_dim` = intermediate_size, `num_kv_heads` =
  num_key_value_heads (grouped-query attention when < num_heads).
  """

  vocab_size: int = 32
  embed_dim: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 384
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2 has biases on q, k and v projections.
  tied_embeddings: bool = False  # SmolLM2 and small Qwen2 share input/output embeddings.
  dropout_rate: float = 0.0
  dtype: str = "float32"  # activations
  param_dtype: str = "float32"
  # "int8": weight-only int8 kernels and embeddings with float scales per output
  # channel (inference; convert a float checkpoint with quantization.quantize_params).
  quantization: str = "none"

  def __post_init__(self):
    if self.quantization not in ("none", "int8"):
      raise ValueError(f"quantization must be 'none' or 'int8', got {self.quantization!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def layer_matmul_shapes(self, fused: bool = False) -> tuple[tuple[int, int], ...]:
    """[inputs, outputs] of one layer's weight matmuls: q, k, v, o, gate, up, down.

    fused: as a decode step on packed weights runs them, q|k|v and gate|up as one
    matmul each (they share their input): q|k|v, o, gate|up, down.
    """
    d, h, kv, hd, f = (self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim,
                       self.mlp_dim)
    if fused:
      return ((d, (h + 2 * kv) * hd), (h * hd, d), (d, 2 * f), (f, d))
    return ((d, h * hd), (d, kv * hd), (d, kv * hd), (h * hd, d), (d, f), (d, f), (f, d))

  @property
  def output_matmul_shape(self) -> tuple[int, int]:
    """[inputs, outputs] of the output projection (the embedding's transpose when tied)."""
    return (self.embed_dim, self.vocab_size)

  def num_matmul_params(self) -> int:
    """Parameters touched by matmuls per token (the output projection included).

    The input embedding is a gather, not a matmul, so it is excluded; with tied
    embeddings the same matrix still counts once as the output projection.
    """
    layer = sum(k * n for k, n in self.layer_matmul_shapes())
    return self.num_layers * layer + math.prod(self.output_matmul_shape)

  def flops_per_token(self, context_len: int, training: bool) -> float:
    """Matmul FLOPs for one token: 2 per weight, plus attention scores and values.

    `context_len` is the mean number of keys a query attends to. Training costs
    3x the forward pass (forward, and two matmuls per weight in the backward).
    """
    forward = 2 * self.num_matmul_params()
    forward += 2 * 2 * self.num_layers * self.num_heads * self.head_dim * context_len
    return 3 * forward if training else forward
