"""Tests for ttc/revision/chains.py: revision chains at test time on a random tiny policy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc import partitioning, workdir
from ttc.data import arith_task
from ttc.decoding import samplers, sampling
from ttc.errors import UserError
from ttc.revision import chains
from tests.verifiers.conftest import write_policy_workdir

MAX_NEW_TOKENS = 8
HOT = samplers.Temperature(jnp.float32(1.0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(policy work dir, policy on one device, task, 2 problems), inside that mesh. One
  device compiles and runs faster here than 8 fake ones sharing the CPU; the mesh test
  below checks that 8 give the same chains."""
  path = write_policy_workdir(tmp_path_factory.mktemp("chains") / "work")
  task = arith_task.register_arith_task(name="test_chains", num_train_per_level=1,
                                        num_eval_per_level=1)
  with workdir.device_context(devices=jax.devices()[:1]) as devices:
    yield path, workdir.load_policy(str(path), devices), task, task.problems("test")[:2]


@pytest.fixture(scope="module")
def hot_chains(setup):
  """3 chains of 2 attempts per problem at temperature 1, 4 rows per call."""
  _, policy, task, problems = setup
  return chains.revise(policy, task, problems, num_chains=3, chain_length=2,
                       rng=jax.random.key(5), sampler=HOT, max_new_tokens=MAX_NEW_TOKENS,
                       rows_per_call=4)


def _reference(policy, prompts):
  """Greedy `sampling.sample` on whole prompt ids, one row each: no shared prefix."""
  tokens, lengths = sampling.left_pad(prompts, sampling.bucket(max(map(len, prompts)), 64))
  out = sampling.sample(policy.model, policy.params, tokens, lengths, jax.random.key(0),
                        samplers.Greedy(), max_new_tokens=MAX_NEW_TOKENS,
                        eos_id=policy.codec.eos_id)
  texts = []
  for row, n, reason in zip(np.asarray(out.tokens_BxG), np.asarray(out.lengths_B),
                            np.asarray(out.stop_reason_B)):
    stopped = int(reason) == sampling.StopReason.EOS
    texts.append((policy.codec.decode(row[:n - stopped].tolist()), stopped, int(n)))
  return texts


def test_each_prompt_holds_the_last_four_attempts_of_its_own_chain(setup, monkeypatch):
  _, policy, task, problems = setup
  calls = []  # (prefixes, suffixes) of every sampling call, in order
  real = sampling.sample_with_suffixes

  def recording(model, params, prefixes, suffixes, *args, **kwargs):
    calls.append((prefixes, suffixes))
    return real(model, params, prefixes, suffixes, *args, **kwargs)

  monkeypatch.setattr(sampling, "sample_with_suffixes", recording)
  # 4 chains in groups of 2 rows, so 4 calls per position; 6 positions, so the last two
  # prompts drop the oldest attempts. Short attempts keep the shapes to a few buckets.
  length = 6
  out = chains.revise(policy, task, problems, num_chains=4, chain_length=length,
                      rng=jax.random.key(1), sampler=HOT, max_new_tokens=4, rows_per_call=2)
  assert len(calls) == length * 4
  rows, groups = [], []
  for prefixes, suffixes in calls:
    assert len(prefixes) == 1 and len(suffixes) == 2
    group = [prefixes[0] + s for s in suffixes if s is not None]
    rows += group
    groups.append((prefixes[0], [s for s in suffixes if s is not None]))
  expected = [
      policy.codec.encode_prompt(
          task.revision_prompt(problem, out.texts(q, c)[max(0, l - 4):l]), task.chat)
      for l in range(length) for q, problem in enumerate(problems) for c in range(4)]
  assert rows == expected
  # The prefix is the group's longest common prefix, each row keeping >= 1 token: it
  # could grow only if every suffix had 2+ tokens starting alike.
  for prefix, suffixes in groups:
    assert all(len(s) >= 1 for s in suffixes)
    if len(suffixes) > 1:
      assert len({s[0] for s in suffixes}) > 1 or any(len(s) == 1 for s in suffixes)
  # Position 0: every chain shares the whole prompt but its last token.
  assert all(len(s) == 1 for _, suffixes in groups[:4] for s in suffixes)
  # Later, chains that wrote different attempts feed several tokens of their own.
  assert any(len(s) > 1 for _, suffixes in groups[4:] for s in suffixes)
  assert [len(chain) for per_problem in out.attempts for chain in per_problem] == [length] * 8


def test_greedy_chains_equal_sampling_each_whole_prompt(setup):
  _, policy, task, problems = setup
  out = chains.revise(policy, task, problems, num_chains=2, chain_length=3,
                      rng=jax.random.key(0), sampler=samplers.Greedy(),
                      max_new_tokens=MAX_NEW_TOKENS, rows_per_call=4)
  for l in range(3):
    prompts = [policy.codec.encode_prompt(task.revision_prompt(p, out.texts(q, c)[:l]), False)
               for q, p in enumerate(problems) for c in range(2)]
    got = [(a.text, a.finished, a.num_tokens) for per_problem in out.attempts
           for a in (chain[l] for chain in per_problem)]
    assert got == _reference(policy, prompts)
  assert out.num_tokens == sum(a.num_tokens for per_problem in out.attempts
                               for chain in per_problem for a in chain)


def test_greedy_next_attempts_after_different_histories_equal_the_whole_prompts(setup):
  """Chains that wrote different attempts share only part of their prompts: the shared
  prefix plus each chain's own suffix must give what the whole prompt gives."""
  _, policy, task, problems = setup
  histories = [[[], ["1+2=3|3"], ["7", "12|\n\\boxed{3}"], [f"{i}" for i in range(6)]],
               [["9*9"], ["9*9", "81"], ["0"], ["\\boxed{1}"] * 5]]
  out = chains.next_attempts(policy, task, problems, histories, rng=jax.random.key(0),
                             sampler=samplers.Greedy(), max_new_tokens=MAX_NEW_TOKENS,
                             rows_per_call=3)  # groups of 3 and of 1 (padded)
  prompts = [policy.codec.encode_prompt(task.revision_prompt(p, h[-4:]), False)
             for p, per_problem in zip(problems, histories) for h in per_problem]
  got = [(a.text, a.finished, a.num_tokens) for per_problem in out for a in per_problem]
  assert got == _reference(policy, prompts)


def test_chains_on_8_device_mesh_equal_one_device(setup, hot_chains):
  path, _, task, problems = setup
  # `device_context` with the data, fsdp and tensor axes all split, so the weights are too.
  mesh, rules = partitioning.make_mesh(2, 2, 2), partitioning.logical_axis_rules()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    policy = workdir.load_policy(str(path), workdir.Devices(mesh, rules))
    kernel = policy.params["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert len({str(s.index) for s in kernel.addressable_shards}) > 1  # really split
    many = chains.revise(policy, task, problems, num_chains=3, chain_length=2,
                         rng=jax.random.key(5), sampler=HOT, max_new_tokens=MAX_NEW_TOKENS,
                         rows_per_call=4)
  assert many.attempts == hot_chains.attempts


def test_chains_are_seeded_and_chains_of_a_problem_differ(setup, hot_chains):
  _, policy, task, problems = setup
  run = lambda seed: chains.revise(policy, task, problems, num_chains=3, chain_length=2,
                                   rng=jax.random.key(seed), sampler=HOT,
                                   max_new_tokens=MAX_NEW_TOKENS, rows_per_call=4)
  assert run(5).attempts == hot_chains.attempts
  for q in range(len(problems)):
    assert len({tuple(hot_chains.texts(q, c)) for c in range(3)}) == 3
  assert run(6).attempts != hot_chains.attempts
  for per_problem in hot_chains.attempts:
    for chain in per_problem:
      for a in chain:
        assert 1 <= a.num_tokens <= MAX_NEW_TOKENS
        assert a.answer is None or a.finished
        assert a.answer == (task.extract_answer(a.text) if a.finished else None)


@pytest.mark.parametrize("field", ["num_chains", "chain_length", "max_new_tokens",
                                   "rows_per_call"])
def test_counts_below_one_are_user_errors(setup, field):
  _, policy, task, problems = setup
  settings = dict(num_chains=1, chain_length=1, max_new_tokens=1, rows_per_call=1)
  settings[field] = 0
  with pytest.raises(UserError, match=f"{field}=0"):
    chains.revise(policy, task, problems, rng=jax.random.key(0), sampler=HOT, **settings)


def test_shared_prefix_length_leaves_each_prompt_a_token():
  assert chains.shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
  assert chains.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
  assert chains.shared_prefix_length([[1, 2], [1, 2, 3]]) == 1
  assert chains.shared_prefix_length([[7], [7, 8]]) == 0
  assert chains.shared_prefix_length([[4, 5, 6]]) == 2
