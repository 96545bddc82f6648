"""The CPU RMSNorm kernel against a float64 numpy RMSNorm, and where the model uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc import partitioning
from ttc.kernels import cpu_library, rms_norm
from ttc.models.config import ModelConfig
from ttc.models.kv_cache import KVCache
from ttc.models.transformer import RMSNorm, Transformer


def _reference(x, scale, eps):
  x = x.astype(np.float64)
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


@pytest.mark.parametrize("shape", [(64, 576), (3, 8), (300, 17), (2, 5, 24)])
def test_kernel_matches_rms_norm(shape):
  """Decode rows of SmolLM2's width; a width below one vector; more rows than one work
  item (256) and an odd width; leading axes."""
  assert cpu_library.available()  # this machine has a compiler: the kernels must build
  rng = np.random.default_rng(len(shape) * 100 + shape[-1])
  x = (rng.standard_normal(shape) * rng.uniform(0.1, 10, shape[:-1] + (1,))).astype(np.float32)
  scale = rng.uniform(0.5, 2, shape[-1]).astype(np.float32)
  got = jax.jit(rms_norm.normalize, static_argnames="eps")(x, scale, eps=1e-5)
  assert got.shape == shape and got.dtype == jnp.float32
  # float32 rounding of a sum of D squares, a rsqrt and two products: a few ulp.
  np.testing.assert_allclose(got, _reference(x, scale, 1e-5), rtol=2e-6, atol=1e-7)


def test_kernel_is_the_float32_module_within_rounding():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 96)).astype(np.float32)
  norm = RMSNorm(1e-6, jnp.float32, jnp.float32)
  params = norm.init(jax.random.key(0), x)
  params = jax.tree.map(lambda s: s * 1.5, params)
  plain, fast = (norm.apply(params, x, inference=flag) for flag in (False, True))
  np.testing.assert_allclose(fast, plain, rtol=2e-6, atol=1e-7)


def test_usable_only_for_float32_on_one_device():
  x, scale = jnp.zeros((4, 8)), jnp.ones((8,))
  assert rms_norm.usable(x, scale)
  assert not rms_norm.usable(x.astype(jnp.bfloat16), scale)
  with jax.set_mesh(partitioning.make_mesh(2, 2, 2)):
    assert not rms_norm.usable(x, scale)  # a sharded step keeps XLA's norm


def test_model_uses_it_with_a_cache_only():
  """Steps with a KV cache (nothing is differentiated there) run the kernel; a forward
  pass without one, as in training, keeps the jnp norm and its gradient."""
  config = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
  model = Transformer(config)
  params = partitioning.init_params(model, jax.random.key(0))
  tokens = jnp.ones((2, 3), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(3), (2, 3))
  cache = KVCache.init(config, 2, 8)
  with_cache = jax.jit(lambda p: model.apply(p, tokens, positions, cache)[0]).lower(params)
  assert with_cache.as_text().count(cpu_library.RMS_NORM) == 2 * config.num_layers + 1
  loss = lambda p: jnp.sum(model.apply(p, tokens, positions)[0])
  assert cpu_library.RMS_NORM not in jax.jit(jax.grad(loss)).lower(params).as_text()
