"""Sampling loop: greedy equals step-by-step argmax of the full forward; EOS stops rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.kernels import matmul_choice, packed_matmul
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


@pytest.mark.skipif(not packed_matmul.usable(jnp.float32, jnp.float32),
                    reason="the packed CPU kernels do not run here")
def test_host_calls_pack_the_same_weights_once(policy, monkeypatch):
  model, params = policy
  monkeypatch.setattr(sampling, "_packed_cache", {})
  packs = []
  pack = sampling._pack
  monkeypatch.setattr(sampling, "_pack", lambda *args: packs.append(args[2]) or pack(*args))
  draw = lambda params: sampling.sample_prompts(
      model, params, [[5, 6, 7], [8, 9]], jax.random.key(0), samplers.Greedy(), num_samples=2,
      max_new_tokens=4, eos_id=EOS)
  monkeypatch.setattr(matmul_choice, "decode_matmul", lambda: "xla")
  want = draw(params)
  assert not packs and not sampling._packed_cache
  monkeypatch.setattr(matmul_choice, "decode_matmul", lambda: "packed")
  first, second = draw(params), draw(params)
  assert packs == ["packed"]  # packed at the first call only
  np.testing.assert_array_equal(first.tokens_BxG, want.tokens_BxG)
  np.testing.assert_array_equal(second.tokens_BxG, want.tokens_BxG)
  other = jax.tree.map(lambda x: x * 1.0, params)  # equal values, other arrays: packed again
  np.testing.assert_array_equal(draw(other).tokens_BxG, want.tokens_BxG)
  assert packs == ["packed", "packed"] and len(sampling._packed_cache) == 1
  (leaves, _), = sampling._packed_cache.values()
  assert all(a is b for a, b in zip(leaves, jax.tree.leaves(other)))


def _scripted_decode(script_BxS, stops, max_new_tokens, position_B=None, budget_B=None):
  """`sampling.decode` under greedy with a fake model that emits row b's script:
  the token after position p is script_BxS[b, p + 1] (positions start at 0 unless
  given). Returns (Samples, Continuation)."""
  script_BxS = jnp.asarray(script_BxS, jnp.int32)
  batch, length = script_BxS.shape
  vocab = int(script_BxS.max()) + 1
  logits_at = lambda position_B: jax.nn.one_hot(
      jnp.take_along_axis(script_BxS, jnp.clip(position_B, 0, length - 1)[:, None], axis=1)[:, 0],
      vocab) * 10.0

  def step(token_B, position_B, cache):
    return logits_at(position_B + 1), cache

  position_B = jnp.zeros((batch,), jnp.int32) if position_B is None else position_B
  return sampling.decode(step, jnp.zeros(()), logits_at(position_B), position_B,
                         jax.random.key(0), samplers.Greedy(), max_new_tokens, stops, 0,
                         budget_B)


def test_a_pair_written_within_the_call_ends_a_step_and_end_ids_end_the_solution():
  tail, head, step_id, end, turn_end = 2, 3, 4, 1, 7
  stops = sampling.StopRule(end_ids=(end, turn_end), step_ids=(step_id,),
                            step_pairs=(((tail,), (head,)),))
  script = [[head, 5, tail, head, 6, 6],  # a head first ends nothing; the pair ends the step
            [5, end, 6, 6, 6, 6],  # EOS
            [tail, 5, head, step_id, 6, 6],  # tail and head apart: no pair; the step id ends
            [6, 5, 6, 5, 6, 5],  # nothing ends it
            [5, turn_end, 6, 6, 6, 6],  # a chat's end of turn ends the solution like EOS
            [tail, end, 6, 6, 6, 6]]  # a tail then an end id: the end wins
  out, _ = _scripted_decode(script, stops, max_new_tokens=5)
  R = sampling.StopReason
  assert np.asarray(out.lengths_B).tolist() == [4, 2, 4, 5, 2, 2]
  assert np.asarray(out.stop_reason_B).tolist() == [R.STOP_TOKEN, R.EOS, R.STOP_TOKEN,
                                                    R.MAX_NEW_TOKENS, R.EOS, R.EOS]
  np.testing.assert_array_equal(np.asarray(out.tokens_BxG)[0], [head, 5, tail, head, 0])
  # Without its steps the rule only ends solutions.
  out, _ = _scripted_decode(script, stops.without_steps(), max_new_tokens=5)
  assert np.asarray(out.lengths_B).tolist() == [5, 2, 5, 5, 2, 2]


def test_a_step_never_ends_on_its_first_token_because_of_the_previous_steps_last():
  """Call 1 stops on a tail (its budget); call 2 starts with a head: no pair, since
  the tail belongs to the earlier call."""
  tail, head = 2, 3
  stops = sampling.StopRule(step_pairs=(((tail,), (head,)),))
  script = [[5, tail, head, 6, tail, head, 6, 6]]
  first, cont = _scripted_decode(script, stops, max_new_tokens=4,
                                 budget_B=jnp.array([2], jnp.int32))
  assert int(first.lengths_B[0]) == 2
  assert int(first.stop_reason_B[0]) == sampling.StopReason.MAX_NEW_TOKENS
  second, _ = _scripted_decode(script, stops, max_new_tokens=6,
                               position_B=cont.next_position_B)
  assert np.asarray(second.tokens_BxG)[0, :4].tolist() == [head, 6, tail, head]
  assert int(second.lengths_B[0]) == 4
  assert int(second.stop_reason_B[0]) == sampling.StopReason.STOP_TOKEN


def test_stop_rule_of_eos_and_stop_ids_is_hashable_and_plain():
  rule = sampling.StopRule.of(np.int32(1), (np.int64(7),))
  assert rule == sampling.StopRule(end_ids=(1,), step_ids=(7,))
  assert hash(rule) == hash(sampling.StopRule(end_ids=(1,), step_ids=(7,)))
  assert sampling.StopRule.of(-1) == sampling.StopRule()
  assert rule.without_steps() == sampling.StopRule(end_ids=(1,))
  with pytest.raises(ValueError, match=">= 0"):
    sampling.StopRule(step_pairs=(((-1,), (3,)),))


def test_sample_n_with_suffix_greedy_equals_sample_on_prefix_plus_suffix(policy):
  model, params = policy
  prefixes = [[5, 6, 7], [8, 9, 10, 11, 12]]
  suffixes = [[13], [14, 15, 16], [17, 18],  # prefix 0: suffixes of 1 to 3 tokens
              [19, 20, 21, 22], [23], [5, 6]]  # prefix 1
  n = 3
  prefix_tokens, prefix_lengths = sampling.left_pad(prefixes, 6)
  suffix_tokens, suffix_lengths = sampling.left_pad(suffixes, 4)
  shared = sampling.sample_n_with_suffix(
      model, params, prefix_tokens, prefix_lengths, suffix_tokens, suffix_lengths,
      jax.random.key(0), samplers.Greedy(), num_samples=n, max_new_tokens=6, eos_id=EOS)
  whole = [prefixes[b // n] + s for b, s in enumerate(suffixes)]
  tokens, lengths = sampling.left_pad(whole, 10)
  alone = sampling.sample(model, params, tokens, lengths, jax.random.key(0), samplers.Greedy(),
                          max_new_tokens=6, eos_id=EOS)
  np.testing.assert_array_equal(shared.tokens_BxG, alone.tokens_BxG)
  np.testing.assert_array_equal(shared.lengths_B, alone.lengths_B)
  np.testing.assert_array_equal(shared.stop_reason_B, alone.stop_reason_B)
  np.testing.assert_allclose(shared.logprobs_BxG, alone.logprobs_BxG, atol=1e-5, rtol=1e-5)
  # Rows of one prefix really continue different prompts.
  assert len({tuple(r) for r in np.asarray(shared.tokens_BxG)[:n].tolist()}) > 1


def test_sample_with_suffixes_pads_rows_and_compiles_once_per_bucket(policy):
  model, params = policy
  draw = lambda prefixes, suffixes: sampling.sample_with_suffixes(
      model, params, prefixes, suffixes, jax.random.key(0), samplers.Greedy(), num_samples=2,
      max_new_tokens=4, eos_id=EOS)
  # 3 prefixes -> bucket 4; suffixes of <= 3 tokens -> bucket 4; row 1 is padding.
  first = draw([[5, 6], [7], [8, 9, 10]], [[11], None, [12, 13], [14], [15, 16, 17], [5]])
  compiled = sampling.sample_n_with_suffix._cache_size()
  second = draw([[8, 9, 10], [5, 6], [1]], [[15, 16, 17], [5], [11], [2, 3, 4], [9], [9]])
  assert sampling.sample_n_with_suffix._cache_size() == compiled  # same buckets
  assert first.tokens_BxG.shape == (6, 4)
  assert int(first.lengths_B[1]) == 0 and np.all(np.asarray(first.tokens_BxG)[1] == 0)
  # A row depends only on its own prefix + suffix, not on its neighbours or padding.
  np.testing.assert_array_equal(second.tokens_BxG[:2], first.tokens_BxG[4:])
  np.testing.assert_array_equal(second.tokens_BxG[2], first.tokens_BxG[0])
  with pytest.raises(ValueError, match=">= 1 token"):
    draw([[5]], [[6], []])
