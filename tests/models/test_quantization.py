"""int8 weight-only storage: bounded rounding, a quarter of the bytes, SmolLM2 logits close."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.models import quantization
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning

from tests.models.parity_utils import ttc_greedy, ttc_logits

# Stated tolerance of int8 weight-only SmolLM2-135M against its float32 weights, on
# teacher-forced logits (their std is ~7): measured 1.33 max-abs, argmax identical.
SMOL_INT8_LOGIT_TOL = 2.0
CONFIG = ModelConfig(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, qkv_bias=True)


def test_rounding_error_is_at_most_half_a_step_per_channel():
  w = jax.random.normal(jax.random.key(0), (64, 3, 5)) * jnp.arange(1, 16).reshape(1, 3, 5)
  q, scale = quantization.quantize_int8(w, (0,))
  assert q.dtype == jnp.int8 and scale.shape == (3, 5)
  err = jnp.abs(q.astype(jnp.float32) * scale - w)
  assert bool(jnp.all(err <= scale / 2 + 1e-6))
  zero_q, zero_scale = quantization.quantize_int8(jnp.zeros((4, 2)), (0,))
  assert np.all(np.asarray(zero_scale) == 1.0) and not np.any(np.asarray(zero_q))


def test_tiny_model_int8_is_close_and_a_quarter_of_the_bytes():
  model = Transformer(CONFIG)
  params = jax.jit(lambda k: partitioning.init_params(model, k))(jax.random.key(0))
  qconfig, qparams = quantization.quantize_params(CONFIG, params)
  assert qconfig.quantization == "int8"
  kernel = qparams["params"]["layers_0"]["self_attn"]["o_proj"]["kernel"]
  assert kernel.dtype == jnp.int8 and kernel.shape == (32, 4, 8)  # output-major
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  assert nbytes(qparams) < 0.3 * nbytes(params)
  tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 12))
  ref, got = ttc_logits(CONFIG, params, tokens), ttc_logits(qconfig, qparams, tokens)
  assert np.abs(ref - got).max() < 0.02 * np.abs(ref).max()
  with pytest.raises(ValueError, match="already quantized"):
    quantization.quantize_params(qconfig, qparams)


def test_unknown_quantization_is_rejected():
  with pytest.raises(ValueError, match="quantization must be"):
    ModelConfig(quantization="int4")


def test_smollm2_int8_logits_within_stated_tolerance(smol):
  _, config, params, tokenizer = smol
  qconfig, qparams = quantization.quantize_params(config, params)
  prompts = [tokenizer.encode(p) for p in
             ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,"]]
  width = min(len(p) for p in prompts)
  tokens = np.array([p[:width] for p in prompts])
  ref, got = ttc_logits(config, params, tokens), ttc_logits(qconfig, qparams, tokens)
  diff = np.abs(ref - got).max()
  print(f"int8 vs float32 max-abs logit diff {diff:.3g} (logit std {ref.std():.3g})")
  assert diff <= SMOL_INT8_LOGIT_TOL
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  # Greedy text agrees for its first tokens (measured: 13 to 32 of 32 on these prompts).
  np.testing.assert_array_equal(ttc_greedy(qconfig, qparams, prompts, 8),
                                ttc_greedy(config, params, prompts, 8))
