"""The CPU decode-attention kernel against a numpy softmax over the visible slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.kernels import cpu_library, decode_attention
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning


def _reference(q, k, v, mask, pk, pv, pmask, scale):
  """Per row and query head: softmax over [visible prefix ; visible own] slots, numpy float64."""
  b, num_kv, group, e = q.shape
  rows_per_prompt = b // pk.shape[0]
  out = np.zeros(q.shape)
  for row in range(b):
    prompt = row // rows_per_prompt
    for h in range(num_kv):
      keys = np.concatenate([pk[prompt, h][pmask[row]], k[row, h][mask[row]]]).astype(np.float64)
      values = np.concatenate([pv[prompt, h][pmask[row]], v[row, h][mask[row]]]).astype(np.float64)
      if not len(keys):
        continue
      scores = q[row, h].astype(np.float64) @ keys.T * scale
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      out[row, h] = (probs / probs.sum(-1, keepdims=True)) @ values
  return out


def _operands(rng, rows, num_kv, group, head_dim, slots, prompts, prefix_slots):
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  mask = rng.random((rows, slots)) < 0.6
  prefix_mask = rng.random((rows, prefix_slots)) < 0.7
  return (normal(rows, num_kv, group, head_dim), normal(rows, num_kv, slots, head_dim),
          normal(rows, num_kv, slots, head_dim), mask,
          normal(prompts, num_kv, prefix_slots, head_dim),
          normal(prompts, num_kv, prefix_slots, head_dim), prefix_mask)


@pytest.mark.parametrize("group,head_dim,prompts,prefix_slots", [
    (3, 64, 2, 16),  # SmolLM2's grouping and head size, two prompts sharing prefixes
    (1, 8, 1, 5),
    (8, 16, 3, 1),
])
def test_kernel_matches_softmax_over_visible_prefix_and_own_slots(group, head_dim, prompts,
                                                                   prefix_slots):
  assert cpu_library.available()  # this machine has a compiler: the kernels must build
  rng = np.random.default_rng(group)
  q, k, v, mask, pk, pv, pmask = _operands(rng, 6, 2, group, head_dim, 11, prompts,
                                           prefix_slots)
  mask[0] = False  # one row sees only prefix slots
  pmask[1] = False  # one only its own
  mask[2], pmask[2] = False, False  # one sees nothing: zeros
  scale = head_dim ** -0.5
  got = jax.jit(decode_attention.attend, static_argnames="scale")(
      q, k, v, mask, (pk, pv), pmask, scale=scale)
  np.testing.assert_allclose(got, _reference(q, k, v, mask, pk, pv, pmask, scale), atol=2e-5)
  assert not np.any(np.asarray(got)[2])


def test_kernel_without_prefix_is_attention_over_own_slots():
  rng = np.random.default_rng(0)
  q, k, v, mask, _, _, _ = _operands(rng, 4, 3, 3, 32, 9, 1, 0)
  got = decode_attention.attend(q, k, v, mask, scale=0.3)
  empty = np.zeros((1, 3, 0, 32), np.float32)
  want = _reference(q, k, v, mask, empty, empty, np.zeros((4, 0), bool), 0.3)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_usable_only_for_float32_single_device_shapes_it_supports():
  q = jnp.zeros((2, 2, 3, 16), jnp.float32)
  keys = jnp.zeros((2, 2, 5, 16), jnp.float32)
  assert decode_attention.usable(q, keys)
  assert not decode_attention.usable(q.astype(jnp.bfloat16), keys.astype(jnp.bfloat16))
  assert not decode_attention.usable(jnp.zeros((2, 2, 9, 16)), keys)  # G > MAX_GROUP
  assert not decode_attention.usable(jnp.zeros((2, 2, 3, 12)), jnp.zeros((2, 2, 5, 12)))
  with jax.set_mesh(partitioning.make_mesh(2, 2, 2)):
    assert not decode_attention.usable(q, keys)  # a sharded step stays with XLA's attention
  with jax.set_mesh(partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])):
    assert decode_attention.usable(q, keys)


def test_greedy_decoding_is_the_same_with_and_without_the_kernel(monkeypatch):
  """Same tokens and near-equal log-probs from the kernel and from jnp attention, shared prefix."""
  config = ModelConfig(vocab_size=64, embed_dim=64, num_layers=2, num_heads=6, num_kv_heads=2,
                       head_dim=16, mlp_dim=128)
  model = Transformer(config)
  params = partitioning.init_params(model, jax.random.key(1))
  tokens, lengths = sampling.left_pad([[5, 6, 7, 8], [9, 10]], 4)
  args = (model, params, tokens, lengths, jax.random.key(0), samplers.Greedy())
  kwargs = dict(num_samples=3, max_new_tokens=12, eos_id=-1)

  def run():
    jax.clear_caches()  # `usable` is read while tracing
    program = sampling.sample_n.lower(*args, **kwargs)
    return "ttc_decode_attention_cpu" in program.as_text(), sampling.sample_n(*args, **kwargs)

  used, with_kernel = run()
  monkeypatch.setattr(cpu_library, "cpu_kernel_enabled", lambda: False)
  not_used, without = run()
  assert used and not not_used
  np.testing.assert_array_equal(with_kernel.tokens_BxG, without.tokens_BxG)
  np.testing.assert_allclose(with_kernel.logprobs_BxG, without.logprobs_BxG, atol=1e-5)
