"""A problem's search does not depend on the other problems of its batch.

All rows of a batch write their KV caches in lockstep at one shared slot, so a long
row could cut its neighbours' steps short. Searched greedily (rows draw the same
tokens wherever they sit in the batch), a problem must come out the same alone and
beside a problem whose rows run to the length cap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.models.config import ModelConfig
from ttc.search import methods, tree_search
from tests.search import stubs

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
# Under greedy decoding the policy (init key 1) continues SUBJECT with
# 2 4 | 5 0 28 22 19 29 10 30 | 4 | 5 0 14 9: with DELIMITER 4, EOS 9 and 8-token steps,
# rounds of 2, 8, 1 and 4 tokens, complete at 15 tokens. NEIGHBOUR continues with
# 1 1 1 ...: never a delimiter or EOS, so it takes full steps up to the cap.
SUBJECT, NEIGHBOUR = [17, 20, 31], [3, 24, 23]
DELIMITER, EOS = 4, 9
MAX_SOLUTION, MAX_STEP = 17, 8  # the neighbour's third step crosses 17


@pytest.fixture(scope="module")
def models():
  return stubs.random_models(DELIMITER, EOS, CONFIG)


def _search(models, config, prompts):
  policy, prm, policy_params, prm_params = models
  tokens, lengths = sampling.left_pad(prompts, 4)
  return tree_search.search(policy, prm, policy_params, prm_params, tokens, lengths,
                            jnp.ones((len(prompts),), bool), jax.random.key(0),
                            samplers.Greedy(), config)


@pytest.mark.parametrize("name,budget", [("beam_m2", 2), ("lookahead_k1", 4)])
def test_a_problem_alone_and_beside_one_that_runs_to_the_cap_gives_the_same_tokens(
    models, name, budget):
  config = methods.make_config(name, budget, max_solution_tokens=MAX_SOLUTION,
                               max_step_tokens=MAX_STEP)
  assert config.num_rows == 2
  alone = _search(models, config, [SUBJECT])
  batch = _search(models, config, [SUBJECT, NEIGHBOUR])

  # Alone, the subject completes over four rounds (the premise of the test).
  np.testing.assert_array_equal(alone.lengths_QxN[0], 15)
  assert np.all(alone.complete_QxN[0]) and int(alone.rounds) == 4

  np.testing.assert_array_equal(batch.tokens_QxNxW[0], alone.tokens_QxNxW[0])
  np.testing.assert_array_equal(batch.lengths_QxN[0], alone.lengths_QxN[0])
  np.testing.assert_array_equal(batch.complete_QxN[0], alone.complete_QxN[0])
  np.testing.assert_allclose(batch.scores_QxN[0], alone.scores_QxN[0], atol=1e-5)
  np.testing.assert_array_equal(batch.tokens_generated_Q[0], alone.tokens_generated_Q[0])
  assert not bool(batch.prm_overflowed)
  # The neighbour's rows ran to the cap, and no further (it binds each row), without
  # an answer.
  np.testing.assert_array_equal(batch.lengths_QxN[1], MAX_SOLUTION)
  assert not np.any(batch.complete_QxN[1])
  np.testing.assert_array_equal(batch.tokens_QxNxW[1, :, :MAX_SOLUTION], 1)
