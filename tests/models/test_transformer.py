"""Transformer: KV-cache decoding, padding, packing and sharding all match the plain forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.models.config import ModelConfig
from ttc.models.kv_cache import EMPTY_POSITION, KVCache, PrefixCache
from ttc.models.transformer import Transformer
from ttc import partitioning

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
TOL = 1e-5  # float32 on CPU; differences come from summation order only


def _setup(config=CONFIG, batch=4, length=12):
  model = Transformer(config)
  params = jax.jit(lambda k: partitioning.init_params(model, k))(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, config.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return model, params, tokens, positions


@pytest.mark.parametrize("config", [
    CONFIG,
    ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=4,
                head_dim=8, mlp_dim=64, qkv_bias=True, tied_embeddings=True),
], ids=["llama_gqa", "qwen2_bias_tied"])
def test_prefill_then_one_token_decode_matches_full_forward(config):
  model, params, tokens, positions = _setup(config, length=36)
  full, _ = model.apply(params, tokens, positions)
  # 40 slots: one-token steps attend to the first 16, then 32, then all 40 slots.
  cache = KVCache.init(config, tokens.shape[0], 40)
  logits, cache = model.apply(params, tokens[:, :5], positions[:, :5], cache)
  pieces = [logits]
  step = jax.jit(model.apply)  # one program for every one-token step; the bucket is traced
  for t in range(5, tokens.shape[1]):
    logits, cache = step(params, tokens[:, t:t + 1], positions[:, t:t + 1], cache)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=TOL, rtol=TOL)
  assert int(cache.end) == tokens.shape[1]


def test_left_padded_rows_match_unpadded_rows():
  model, params, tokens, positions = _setup(batch=1, length=7)
  alone, _ = model.apply(params, tokens, positions)
  pad = 5
  padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), tokens], axis=1)
  padded_positions = jnp.concatenate(
      [jnp.full((1, pad), EMPTY_POSITION), positions], axis=1)
  cache = KVCache.init(CONFIG, 1, 16)
  logits, _ = model.apply(params, padded, padded_positions, cache)
  np.testing.assert_allclose(logits[:, pad:], alone, atol=TOL, rtol=TOL)


def test_packed_segments_do_not_see_each_other():
  model, params, tokens, _ = _setup(batch=1, length=10)
  first, second = tokens[:, :4], tokens[:, 4:]
  packed_positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
  segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]])
  packed, _ = model.apply(params, tokens, packed_positions, segment_ids_BxT=segments)
  alone_first, _ = model.apply(params, first, jnp.arange(4)[None])
  alone_second, _ = model.apply(params, second, jnp.arange(6)[None])
  np.testing.assert_allclose(packed[:, :4], alone_first, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(packed[:, 4:], alone_second, atol=TOL, rtol=TOL)


def test_forward_on_8_device_mesh_matches_one_device():
  assert jax.device_count() == 8, "tests/conftest.py must fake 8 CPU devices"
  model, params, tokens, positions = _setup(batch=8)
  rules = partitioning.logical_axis_rules()
  results = {}
  for name, mesh in [("one", partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])),
                     ("eight", partitioning.make_mesh(2, 2, 2))]:
    _, shardings = partitioning.abstract_params(model, mesh, rules)
    placed = jax.device_put(params, shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      results[name] = jax.jit(lambda p, t, q: model.apply(p, t, q)[0])(placed, tokens, positions)
  # The 8-device run really is split: q_proj's heads live on two `tensor` shards.
  q_kernel = placed["params"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert len(results["eight"].sharding.device_set) == 8
  np.testing.assert_allclose(results["eight"], results["one"], atol=TOL, rtol=TOL)


def test_param_count_and_flops_formula_agree_with_the_tree():
  model, params, _, _ = _setup()
  leaves = jax.tree_util.tree_leaves_with_path(params)
  matmul = sum(x.size for path, x in leaves
               if x.ndim > 1 and "embed_tokens" not in jax.tree_util.keystr(path))
  assert matmul == CONFIG.num_matmul_params()


def test_shared_prefix_cache_matches_one_cache_per_row():
  """Rows (q, n) = prompt q + their own continuation; the prompt is cached once per q."""
  num_prompts, n, prompt_len, length = 2, 3, 5, 26  # 21 suffix slots: buckets 16 and 21
  model, params, _, _ = _setup()
  prompts = jax.random.randint(jax.random.key(2), (num_prompts, prompt_len), 0, 32)
  rows = num_prompts * n
  continuations = jax.random.randint(jax.random.key(3), (rows, length - prompt_len), 0, 32)
  full_tokens = jnp.concatenate([jnp.repeat(prompts, n, axis=0), continuations], axis=1)
  full, _ = model.apply(params, full_tokens, jnp.broadcast_to(jnp.arange(length), (rows, length)))

  prompt_cache = KVCache.init(CONFIG, num_prompts, prompt_len)
  _, prompt_cache = model.apply(params, prompts, jnp.broadcast_to(jnp.arange(prompt_len),
                                                                  (num_prompts, prompt_len)),
                                prompt_cache)
  prefix = PrefixCache.from_cache(prompt_cache)
  suffix = KVCache.init(CONFIG, rows, length - prompt_len)
  positions = jnp.broadcast_to(jnp.arange(length), (rows, length))
  pieces = []
  step = jax.jit(model.apply)
  # A multi-token chunk, then one token at a time, then a chunk again.
  for start, stop in [(5, 8)] + [(t, t + 1) for t in range(8, 23)] + [(23, 26)]:
    logits, suffix = step(params, full_tokens[:, start:stop], positions[:, start:stop], suffix,
                          prefix=prefix)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full[:, prompt_len:], atol=TOL,
                             rtol=TOL)
  assert all(k.shape[0::2] == (num_prompts, prompt_len) for k in prefix.k)  # once per prompt
