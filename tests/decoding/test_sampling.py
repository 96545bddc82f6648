"""Sampling loop: greedy equals step-by-step argmax of the full forward; EOS stops rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
EOS = 1


@pytest.fixture(scope="module")
def policy():
  model = Transformer(CONFIG)
  return model, jax.jit(lambda k: partitioning.init_params(model, k))(jax.random.key(0))


def _greedy_reference(model, params, prompt, steps):
  """Full forward (no cache, no padding) over a fixed buffer; causality hides the tail."""
  forward = jax.jit(lambda p, t: model.apply(p, t, jnp.arange(t.shape[1])[None])[0])
  seq = list(prompt)
  out = []
  for _ in range(steps):
    buffer = jnp.array([seq + [0] * (len(prompt) + steps - len(seq))])
    token = int(jnp.argmax(forward(params, buffer)[0, len(seq) - 1]))
    out.append(token)
    if token == EOS:
      break
    seq.append(token)
  return out


def test_greedy_matches_full_forward_for_prompts_of_different_lengths(policy):
  model, params = policy
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
  tokens, lengths = sampling.left_pad(prompts, 8)
  result = sampling.sample(
      model, params, tokens, lengths, jax.random.key(0), jnp.float32(0.0),
      max_new_tokens=6, eos_id=EOS)
  out, logprobs, out_lengths = result.tokens_BxG, result.logprobs_BxG, result.lengths_B
  for row, prompt in enumerate(prompts):
    expected = _greedy_reference(model, params, prompt, 6)
    assert out[row, :len(expected)].tolist() == expected
    assert int(out_lengths[row]) == len(expected)
  assert np.all(np.asarray(logprobs) <= 0)


def test_rows_stop_at_eos_and_pad_after(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6], [7], [8, 9, 10]], 4)
  def greedy(eos):
    r = sampling.sample(model, params, tokens, lengths, jax.random.key(0), jnp.float32(0.0),
                        max_new_tokens=8, eos_id=eos)
    return np.asarray(r.tokens_BxG), np.asarray(r.logprobs_BxG), np.asarray(r.lengths_B)
  free, _, free_lengths = greedy(-1)  # no token is EOS: every row runs to the limit
  assert free_lengths.tolist() == [8, 8, 8]
  # Declare as EOS a token that row 0 first emits at some step j > 0.
  j = next(j for j in range(1, 8) if free[0, j] not in free[0, :j])
  eos = int(free[0, j])
  out, logprobs, out_lengths = greedy(eos)
  for row in range(3):
    hits = np.flatnonzero(free[row] == eos)
    length = int(hits[0]) + 1 if hits.size else 8
    assert out_lengths[row] == length
    np.testing.assert_array_equal(out[row, :length], free[row, :length])
    assert np.all(out[row, length:] == 0) and np.all(logprobs[row, length:] == 0)
  assert out_lengths[0] == j + 1


def test_temperature_sampling_is_seeded_and_varies_with_seed(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6, 7]] * 8, 4)
  draw = lambda seed: np.asarray(sampling.sample(
      model, params, tokens, lengths, jax.random.key(seed), jnp.float32(1.0),
      max_new_tokens=8, eos_id=EOS).tokens_BxG)
  np.testing.assert_array_equal(draw(1), draw(1))
  assert not np.array_equal(draw(1), draw(2))


def test_sampling_on_8_device_mesh_matches_one_device(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6, 7], [9]] * 4, 4)
  rules = partitioning.logical_axis_rules()
  outs = []
  for mesh in [partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
               partitioning.make_mesh(2, 2, 2)]:
    _, shardings = partitioning.abstract_params(model, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      outs.append(np.asarray(sampling.sample(
          model, jax.device_put(params, shardings), tokens, lengths, jax.random.key(7),
          jnp.float32(1.0), max_new_tokens=8, eos_id=EOS).tokens_BxG))
  np.testing.assert_array_equal(outs[0], outs[1])


def test_stop_tokens_and_row_budgets_set_stop_reasons(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6], [7], [8, 9, 10]], 4)
  run = lambda **kw: sampling.sample(model, params, tokens, lengths, jax.random.key(0),
                                     samplers.Greedy(), max_new_tokens=8, **kw)
  free = np.asarray(run(eos_id=-1).tokens_BxG)
  delimiter = int(free[0, 2])  # row 0 emits it at step <= 2
  r = run(eos_id=-1, stop_ids=(delimiter,), max_new_tokens_B=jnp.array([8, 8, 3]))
  expected_len_0 = int(np.flatnonzero(free[0] == delimiter)[0]) + 1
  assert int(r.lengths_B[0]) == expected_len_0
  assert int(r.stop_reason_B[0]) == sampling.StopReason.STOP_TOKEN
  hits = np.flatnonzero(free[2] == delimiter)
  length_2 = min(3, int(hits[0]) + 1) if hits.size else 3
  assert int(r.lengths_B[2]) == length_2
  if not hits.size or hits[0] >= 3:
    assert int(r.stop_reason_B[2]) == sampling.StopReason.MAX_NEW_TOKENS
  for row in range(3):
    n = int(r.lengths_B[row])
    np.testing.assert_array_equal(np.asarray(r.tokens_BxG)[row, :n], free[row, :n])
    assert np.all(np.asarray(r.tokens_BxG)[row, n:] == 0)


def test_sample_n_greedy_equals_sample_on_replicated_prompts(policy):
  model, params = policy
  prompts, n = [[5, 6, 7], [8, 9, 10, 11, 12]], 3
  tokens, lengths = sampling.left_pad(prompts, 6)
  shared = sampling.sample_n(model, params, tokens, lengths, jax.random.key(0),
                             samplers.Greedy(), num_samples=n, max_new_tokens=6, eos_id=EOS)
  rep_tokens, rep_lengths = sampling.left_pad([p for p in prompts for _ in range(n)], 6)
  alone = sampling.sample(model, params, rep_tokens, rep_lengths, jax.random.key(0),
                          samplers.Greedy(), max_new_tokens=6, eos_id=EOS)
  np.testing.assert_array_equal(shared.tokens_BxG, alone.tokens_BxG)
  np.testing.assert_array_equal(shared.lengths_B, alone.lengths_B)
  np.testing.assert_array_equal(shared.stop_reason_B, alone.stop_reason_B)
  np.testing.assert_allclose(shared.logprobs_BxG, alone.logprobs_BxG, atol=1e-5, rtol=1e-5)


MODEL_CALLS = []  # (batch, new tokens) of every model call, recorded at trace time


class _CallRecordingTransformer(Transformer):
  """Records the [B, T] of every pass with a KV cache (prefill and decode steps alike;
  weight packing runs a cacheless one-token pass)."""

  def hidden_states(self, tokens_BxT, positions_BxT, cache=None, *args, **kwargs):
    if cache is not None:
      MODEL_CALLS.append(tokens_BxT.shape)
    return super().hidden_states(tokens_BxT, positions_BxT, cache, *args, **kwargs)


@pytest.mark.parametrize("n", [1, 4])
def test_sample_n_prefills_once_and_caches_p_plus_n_g_positions(policy, n):
  _, params = policy
  model = _CallRecordingTransformer(CONFIG)
  prompt_len, new_tokens = 7, 5
  tokens, lengths = sampling.left_pad([[5, 6, 7, 8, 9]], prompt_len)
  MODEL_CALLS.clear()
  samples, prefix, suffix = sampling.sample_n(
      model, params, tokens, lengths, jax.random.key(0), jnp.float32(1.0), num_samples=n,
      max_new_tokens=new_tokens, eos_id=-1, return_caches=True)
  # Every prompt token goes through the model in exactly one call on the 1 prompt row;
  # all other calls decode one token per sample.
  assert [c for c in MODEL_CALLS if c[1] > 1] == [(1, prompt_len)]
  assert {c for c in MODEL_CALLS if c[1] == 1} == {(n, 1)}
  per_position = CONFIG.num_layers * CONFIG.num_kv_heads * CONFIG.head_dim
  size = lambda layers: sum(x.size for x in jax.tree.leaves(layers))
  for keys_or_values in [prefix.k, prefix.v, suffix.k, suffix.v]:
    assert size(keys_or_values) % per_position == 0
  cached_positions = (size(prefix.k) + size(suffix.k)) // per_position
  assert cached_positions == prompt_len + n * new_tokens
  assert size(prefix.v) + size(suffix.v) == size(prefix.k) + size(suffix.k)
  assert samples.tokens_BxG.shape == (n, new_tokens)
  assert np.all(np.asarray(samples.lengths_B) == new_tokens)


def test_prompt_longer_than_bucket_is_rejected():
  with pytest.raises(ValueError, match="exceeds the prompt length 2"):
    sampling.left_pad([[1, 2, 3]], 2)


def test_sample_n_on_8_device_mesh_matches_one_device(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6, 7], [8, 9, 10, 11, 12], [3, 4], [7]], 6)
  run = lambda p: sampling.sample_n(model, p, tokens, lengths, jax.random.key(4),
                                    samplers.Temperature(temperature=jnp.float32(1.0)),
                                    num_samples=4, max_new_tokens=10, eos_id=EOS)
  one = run(params)
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  rules = partitioning.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, shardings = partitioning.abstract_params(model, mesh, rules)
    sharded = jax.device_put(params, shardings)
    kernel = sharded["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert len({str(s.index) for s in kernel.addressable_shards}) > 1  # really split
    many = run(sharded)
  np.testing.assert_array_equal(many.tokens_BxG, one.tokens_BxG)
  np.testing.assert_array_equal(many.lengths_B, one.lengths_B)
  np.testing.assert_allclose(many.logprobs_BxG, one.logprobs_BxG, atol=1e-5)


def test_sample_prompts_compiles_once_per_bucket(policy):
  model, params = policy
  draw = lambda prompts: sampling.sample_prompts(
      model, params, prompts, jax.random.key(0), samplers.Greedy(), num_samples=2,
      max_new_tokens=4, eos_id=EOS)
  first = draw([[5, 6, 7], [8, 9]])  # warm: 2 prompts -> bucket 2, lengths -> 16
  compiled = sampling.sample_n._cache_size()
  second = draw([[5, 6, 7]])  # 1 prompt -> bucket 1: a new program
  assert sampling.sample_n._cache_size() == compiled + 1
  third = draw([[9, 8, 7, 6, 5, 4, 3], [5, 6, 7]])  # same buckets as the first call
  assert sampling.sample_n._cache_size() == compiled + 1
  assert first.tokens_BxG.shape == (4, 4) and second.tokens_BxG.shape == (2, 4)
  # Padding neither changes the real rows nor leaks into them.
  np.testing.assert_array_equal(second.tokens_BxG, first.tokens_BxG[:2])
  np.testing.assert_array_equal(third.tokens_BxG[2:], first.tokens_BxG[:2])
