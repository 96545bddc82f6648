"""Samplers on hand-written logits: truncation, logprobs, hashability, no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers

# Row probabilities 0.5, 0.25, 0.125, 0.125 at temperature 1.
LOGITS = jnp.log(jnp.array([[0.5, 0.25, 0.125, 0.125], [0.125, 0.125, 0.25, 0.5]]))


def _draw(sampler, seed=0, draws=2000):
  """[draws, 2] tokens and logprobs from `draws` independent keys."""
  keys = jax.random.split(jax.random.key(seed), draws)
  return jax.jit(jax.vmap(lambda k: sampler(LOGITS, k)))(keys)


def test_greedy_takes_argmax_and_reports_model_logprob():
  tokens, logprobs = samplers.Greedy()(LOGITS, jax.random.key(0))
  assert tokens.tolist() == [0, 3]
  np.testing.assert_allclose(logprobs, np.log([0.5, 0.5]), rtol=1e-6)


def test_temperature_zero_is_greedy_per_row():
  sampler = samplers.Temperature(jnp.array([0.0, 1.0]))
  tokens, logprobs = _draw(sampler)
  assert np.all(tokens[:, 0] == 0)
  np.testing.assert_allclose(logprobs[:, 0], np.log(0.5), rtol=1e-6)
  assert len(np.unique(tokens[:, 1])) == 4  # the other row still samples


def test_top_k_and_top_p_truncate_and_renormalise():
  tokens, logprobs = _draw(samplers.Temperature(1.0, top_k=2))
  assert set(np.unique(tokens[:, 0])) == {0, 1}
  # Renormalised over the 2 kept tokens: 0.5/0.75 and 0.25/0.75.
  np.testing.assert_allclose(np.exp(logprobs[:, 0]),
                             np.where(tokens[:, 0] == 0, 2 / 3, 1 / 3), rtol=1e-5)
  # Mass before the 3rd token is 0.75 >= 0.7: the nucleus is the top two tokens.
  tokens, _ = _draw(samplers.Temperature(1.0, top_p=0.7))
  assert set(np.unique(tokens[:, 0])) == {0, 1} and set(np.unique(tokens[:, 1])) == {3, 2}
  tokens, _ = _draw(samplers.Temperature(1.0, top_p=0.1))  # only the top token survives
  assert np.all(tokens == np.array([0, 3]))


def test_truncation_is_judged_and_renormalised_on_the_tempered_distribution():
  """At temperature 0.5 row 0's probabilities are 0.727, 0.182, 0.045, 0.045: a nucleus
  of 0.8 holds the first two, renormalised to 0.8 and 0.2. top_p = 0 keeps the top token."""
  tokens, logprobs = _draw(samplers.Temperature(0.5, top_k=3, top_p=0.8))
  assert set(np.unique(tokens[:, 0])) == {0, 1}
  np.testing.assert_allclose(np.exp(logprobs[:, 0]), np.where(tokens[:, 0] == 0, 0.8, 0.2),
                             rtol=1e-5)
  tokens, logprobs = _draw(samplers.Temperature(0.5, top_p=0.0), draws=50)
  assert np.all(tokens == np.array([0, 3]))
  np.testing.assert_allclose(logprobs, 0.0, atol=1e-6)


def test_sampled_frequencies_follow_tempered_distribution():
  tokens, _ = _draw(samplers.Temperature(0.5), draws=4000)
  expected = np.array([0.5, 0.25, 0.125, 0.125]) ** 2
  expected /= expected.sum()
  freq = np.bincount(tokens[:, 0], minlength=4) / len(tokens)
  np.testing.assert_allclose(freq, expected, atol=0.03)


def test_samplers_are_hashable_and_values_do_not_recompile():
  assert hash(samplers.Greedy()) == hash(samplers.Greedy())
  assert samplers.Temperature(0.7, top_k=5) == samplers.Temperature(0.7, top_k=5)
  hash(samplers.Temperature(0.7, top_k=5, top_p=0.9))
  traces = []

  @jax.jit
  def pick(sampler, logits, key):
    traces.append(type(sampler).__name__)
    return sampler(logits, key)

  for t, p in [(1.0, 1.0), (0.5, 0.9), (0.0, 0.3)]:
    pick(samplers.Temperature(jnp.float32(t), top_p=jnp.float32(p)), LOGITS, jax.random.key(0))
  assert traces == ["Temperature"]
  pick(samplers.Temperature(jnp.float32(1.0), top_k=2, top_p=jnp.float32(1.0)), LOGITS,
       jax.random.key(0))
  assert len(traces) == 2  # top_k is static: a new value compiles a new program


def test_bad_top_k_is_rejected():
  with pytest.raises(ValueError, match="top_k"):
    samplers.Temperature(1.0, top_k=-1)


def test_inverse_cdf_categorical_matches_softmax_across_blocks():
  # 700 entries: three CDF blocks, the last one partial; every third entry masked out.
  vocab = 700
  logits = jax.random.normal(jax.random.key(1), (vocab,)) * 2
  masked = jnp.arange(vocab) % 3 == 0
  logits = jnp.where(masked, -1e30, logits)
  keys = jax.random.split(jax.random.key(0), 40000)
  tokens = np.asarray(jax.jit(jax.vmap(lambda k: samplers.categorical(k, logits[None])[0]))(keys))
  assert not masked[tokens].any()
  freq = np.bincount(tokens, minlength=vocab) / len(tokens)
  expected = np.asarray(jax.nn.softmax(logits))
  # Block masses test the first level, the per-entry spread the second.
  block = lambda p: np.add.reduceat(p, [0, 256, 512])
  np.testing.assert_allclose(block(freq), block(expected), atol=0.01)
  assert 0.5 * np.abs(freq - expected).sum() < 0.05  # total variation; noise alone ~0.03


def test_inverse_cdf_categorical_edge_masses():
  # All mass on the first entry, or on the very last entry of a partial block.
  for hot in (0, 299):
    logits = jnp.full((4, 300), -1e30).at[:, hot].set(0.0)
    tokens = samplers.categorical(jax.random.key(hot), logits)
    assert tokens.tolist() == [hot] * 4
