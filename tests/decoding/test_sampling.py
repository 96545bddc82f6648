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
  """Re-runs the full forward over the growing sequence: no cache, no padding."""
  seq = list(prompt)
  out = []
  for _ in range(steps):
    logits, _ = model.apply(params, jnp.array([seq]), jnp.arange(len(seq))[None])
    token = int(jnp.argmax(logits[0, -1]))
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
  # Make EOS overwhelmingly likely: scale up the lm_head column of EOS.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[:, EOS].add(50.0) if "lm_head" in jax.tree_util.keystr(path) else x,
      params)
  tokens, lengths = sampling.left_pad([[5, 6], [7]], 4)
  out, logprobs, out_lengths = sampling.sample(
      model, params, tokens, lengths, jax.random.key(0), jnp.float32(1.0),
      max_new_tokens=5, eos_id=EOS)
  assert out[:, 0].tolist() == [EOS, EOS]
  assert np.all(np.asarray(out[:, 1:]) == 0) and out_lengths.tolist() == [1, 1]
  assert np.all(np.asarray(logprobs[:, 1:]) == 0)


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
