"""Sampling loop: greedy equals step-by-step argmax of the full forward; EOS stops rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import sampling
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.train import partitioning

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
  out, logprobs, out_lengths = sampling.sample(
      model, params, tokens, lengths, jax.random.key(0), jnp.float32(0.0),
      max_new_tokens=6, eos_id=EOS)
  for row, prompt in enumerate(prompts):
    expected = _greedy_reference(model, params, prompt, 6)
    assert out[row, :len(expected)].tolist() == expected
    assert int(out_lengths[row]) == len(expected)
  assert np.all(np.asarray(logprobs) <= 0)


def test_rows_stop_at_eos_and_pad_after(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad([[5, 6], [7], [8, 9, 10]], 4)
  greedy = lambda eos: [np.asarray(x) for x in sampling.sample(
      model, params, tokens, lengths, jax.random.key(0), jnp.float32(0.0),
      max_new_tokens=8, eos_id=eos)]
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
      max_new_tokens=8, eos_id=EOS)[0])
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
          jnp.float32(1.0), max_new_tokens=8, eos_id=EOS)[0]))
  np.testing.assert_array_equal(outs[0], outs[1])


def test_prompt_longer_than_bucket_is_rejected():
  with pytest.raises(ValueError, match="exceeds the prompt length 2"):
    sampling.left_pad([[1, 2, 3]], 2)
