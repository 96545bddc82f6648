"""Step-level API: stepping equals one long decode; forks and reorders move whole rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling, steps
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def policy():
  model = Transformer(CONFIG)
  return model, jax.jit(lambda k: partitioning.init_params(model, k))(jax.random.key(3))


def _start(model, params, num_rows, max_tokens, num_slots=None):
  tokens, lengths = sampling.left_pad(PROMPTS, 6)
  return steps.start(model, params, tokens, lengths, num_rows=num_rows, max_tokens=max_tokens,
                     num_slots=num_slots)


def _run_steps(model, params, state, num_steps, step_ids, sampler, seed=0, max_step_tokens=8):
  """Rows' tokens (lists) after `num_steps` steps, the per-step stop reasons, final state."""
  rows = [[] for _ in range(state.finished_B.shape[0])]
  reasons = []
  for i in range(num_steps):
    out, state = steps.continue_until_step(
        model, params, state, jax.random.key(seed + i), sampler, max_step_tokens=max_step_tokens,
        stops=sampling.StopRule(step_ids=step_ids))
    tokens, lengths = np.asarray(out.tokens_BxG), np.asarray(out.lengths_B)
    for b, row in enumerate(rows):
      row.extend(tokens[b, :lengths[b]].tolist())
    reasons.append(np.asarray(out.stop_reason_B))
  return rows, reasons, state


def _full_forward_next_logits(model, params, prompt, generated):
  seq = jnp.array([list(prompt) + list(generated)])
  logits = model.apply(params, seq, jnp.arange(seq.shape[1])[None])[0]
  return np.asarray(logits[0, -1])


def test_greedy_steps_concatenate_to_one_long_greedy_decode(policy):
  model, params = policy
  tokens, lengths = sampling.left_pad(PROMPTS, 6)
  long = sampling.sample(model, params, tokens, lengths, jax.random.key(0), samplers.Greedy(),
                         max_new_tokens=20, eos_id=-1)
  long_tokens = np.asarray(long.tokens_BxG)
  # A delimiter that the greedy text really emits, early in row 0 and maybe elsewhere.
  delimiter = int(long_tokens[0, 2])
  state = _start(model, params, num_rows=1, max_tokens=64)
  rows, reasons, _ = _run_steps(model, params, state, 6, (delimiter,), samplers.Greedy(),
                                max_step_tokens=20)
  assert reasons[0][0] == sampling.StopReason.STOP_TOKEN
  for b, row in enumerate(rows):
    np.testing.assert_array_equal(row[:20], long_tokens[b, :len(row[:20])])
  assert len(rows[0]) >= 20


def test_next_logits_after_uneven_steps_equal_a_full_forward(policy):
  """Rows stop at different times within a step; their idle slots must stay invisible."""
  model, params = policy
  state = _start(model, params, num_rows=3, max_tokens=48)
  sampler = samplers.Temperature(temperature=jnp.float32(1.0))
  rows, reasons, state = _run_steps(model, params, state, 3, (4, 9, 17), sampler)
  lengths = {len(r) for r in rows}
  assert len(lengths) > 1, "rows should differ in length for this test to bite"
  assert any(np.any(r == sampling.StopReason.STOP_TOKEN) for r in reasons)
  for b, row in enumerate(rows):
    expected = _full_forward_next_logits(model, params, PROMPTS[b // 3], row)
    np.testing.assert_allclose(np.asarray(state.next_logits_BxV[b]), expected, atol=1e-4,
                               rtol=1e-4)
    assert int(state.next_position_B[b]) == len(PROMPTS[b // 3]) + len(row)


def test_take_rows_reorders_and_forks_within_each_prompt(policy):
  model, params = policy
  sampler = samplers.Temperature(temperature=jnp.float32(1.0))

  def after_one_step():
    state = _start(model, params, num_rows=2, max_tokens=40)
    rows, _, state = _run_steps(model, params, state, 1, (4, 9, 17), sampler, seed=7)
    return rows, state

  rows, state = after_one_step()
  assert rows[0] != rows[1], "sampled rows should differ"
  greedy = samplers.Greedy()
  plain, _, _ = _run_steps(model, params, state, 2, (4,), greedy, seed=1)

  _, state = after_one_step()
  swapped = steps.take_rows(state, jnp.array([[1, 0], [1, 0]]))
  cont, _, _ = _run_steps(model, params, swapped, 2, (4,), greedy, seed=1)
  assert [cont[1], cont[0], cont[3], cont[2]] == plain

  _, state = after_one_step()
  forked = steps.take_rows(state, jnp.array([[1, 1, 1], [0, 0, 0]]))
  assert forked.finished_B.shape == (6,)
  cont, _, _ = _run_steps(model, params, forked, 2, (4,), greedy, seed=1)
  assert cont[:3] == [plain[1]] * 3 and cont[3:] == [plain[2]] * 3


def test_rows_finish_at_their_cap(policy):
  model, params = policy
  state = _start(model, params, num_rows=2, max_tokens=10)
  rows, reasons, state = _run_steps(model, params, state, 4, (), samplers.Greedy(),
                                    max_step_tokens=4)
  assert all(len(r) == 10 for r in rows)  # 4 + 4 + 2 tokens, then nothing
  assert np.all(reasons[-1] == 0) and np.all(np.asarray(state.finished_B))
  np.testing.assert_array_equal(state.length_B, 10)
  assert int(state.cache.end) == 10


def _subject_steps(model, params, neighbour_first: bool):
  """Row 1's three steps (tokens, stop reason) under a cap of 12 tokens and 8-token
  steps, in 12 + 8 slots; first, if asked, row 0 (another prompt) runs to its cap."""
  state = _start(model, params, num_rows=1, max_tokens=12, num_slots=12 + 8)
  greedy = samplers.Greedy()
  if neighbour_first:
    state = state.replace(finished_B=jnp.array([False, True]))  # row 1 waits
    rows, _, state = _run_steps(model, params, state, 3, (), greedy)
    assert len(rows[0]) == 12 and bool(state.finished_B[0])  # at its cap, not past it
  state = state.replace(finished_B=jnp.array([True, False]))
  out = []
  for _ in range(3):
    state = steps.take_rows(state, jnp.zeros((2, 1), jnp.int32))  # packs, as search does
    rows, reasons, state = _run_steps(model, params, state, 1, (), greedy)
    out.append((rows[1], int(reasons[0][1])))
  return out, state


def test_a_rows_step_budget_is_its_own_not_its_long_neighbours(policy):
  """A neighbour at its cap holds the shared write slot at 12 of 20; row 1 still gets
  its own budget: min(8, 12 - its tokens), the same steps as without the neighbour."""
  model, params = policy
  alone, _ = _subject_steps(model, params, neighbour_first=False)
  crowded, state = _subject_steps(model, params, neighbour_first=True)
  assert crowded == alone
  assert [len(tokens) for tokens, _ in alone] == [8, 4, 0]
  assert [reason for _, reason in alone] == [sampling.StopReason.MAX_NEW_TOKENS] * 2 + [0]
  np.testing.assert_array_equal(state.length_B, [12, 12])
  assert np.all(np.asarray(state.finished_B))


def test_undersized_slots_cut_a_row_and_finish_it(policy):
  """Slots below the rule (cap 12 in 12 slots): the neighbour's 12 leave row 1 none."""
  model, params = policy
  state = _start(model, params, num_rows=1, max_tokens=12)
  state = state.replace(finished_B=jnp.array([False, True]))
  _, _, state = _run_steps(model, params, state, 2, (), samplers.Greedy())
  state = steps.take_rows(state.replace(finished_B=jnp.array([True, False])),
                          jnp.zeros((2, 1), jnp.int32))
  out, state = steps.continue_until_step(model, params, state, jax.random.key(0),
                                         samplers.Greedy(), max_step_tokens=8,
                                         stops=sampling.StopRule())
  assert int(out.lengths_B[1]) == 0 and bool(state.finished_B[1])
  assert int(state.cache.end) == 12  # nothing written past the last slot


def test_eos_finishes_a_row_for_good(policy):
  model, params = policy
  state = _start(model, params, num_rows=1, max_tokens=40)
  _, state = steps.continue_until_step(model, params, state, jax.random.key(0),
                                       samplers.Greedy(), max_step_tokens=5,
                                       stops=sampling.StopRule())
  # Call row 0's next greedy token EOS, so the next step ends the row at once.
  eos = [int(t) for t in np.argmax(np.asarray(state.next_logits_BxV), axis=-1)]
  out, state = steps.continue_until_step(model, params, state, jax.random.key(0),
                                         samplers.Greedy(), max_step_tokens=5,
                                         stops=sampling.StopRule(end_ids=(eos[0],)))
  assert out.stop_reason_B[0] == sampling.StopReason.EOS and bool(state.finished_B[0])
  out, state = steps.continue_until_step(model, params, state, jax.random.key(0),
                                         samplers.Greedy(), max_step_tokens=5,
                                         stops=sampling.StopRule(end_ids=(eos[0],)))
  assert int(out.lengths_B[0]) == 0 and int(out.stop_reason_B[0]) == 0


def test_a_pair_ends_a_step_only_when_the_step_wrote_both_tokens(policy):
  """The delimiter as two tokens (a, b), read off row 0's greedy text: a step ends
  right after them; a step that starts with b after one that ended on a does not."""
  model, params = policy
  tokens, lengths = sampling.left_pad(PROMPTS, 6)
  long = np.asarray(sampling.sample(model, params, tokens, lengths, jax.random.key(0),
                                    samplers.Greedy(), max_new_tokens=20, eos_id=-1).tokens_BxG[0])
  a, b = int(long[2]), int(long[3])
  first = next(i for i in range(19) if (long[i], long[i + 1]) == (a, b))
  stops = sampling.StopRule(step_pairs=(((a,), (b,)),))
  step = lambda state, n: steps.continue_until_step(model, params, state, jax.random.key(0),
                                                    samplers.Greedy(), max_step_tokens=n,
                                                    stops=stops)
  out, _ = step(_start(model, params, num_rows=1, max_tokens=40), 20)
  assert int(out.lengths_B[0]) == first + 2
  assert int(out.stop_reason_B[0]) == sampling.StopReason.STOP_TOKEN
  # A step cut right after a; the next one starts with b and goes on.
  out, state = step(_start(model, params, num_rows=1, max_tokens=40), first + 1)
  assert int(out.tokens_BxG[0, first]) == a
  out, _ = step(state, 4)
  assert int(out.tokens_BxG[0, 0]) == b and int(out.lengths_B[0]) > 1
