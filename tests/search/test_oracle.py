"""The ground-truth verifier scores steps as `arith.step_correctness` does, through jit."""

import jax
import jax.numpy as jnp
import numpy as np

from ttc.data import tasks, vocab
from ttc.decoding import sampling
from ttc.search.oracle import OracleCallbacks


def test_oracle_scores_prefixes_by_ground_truth_and_follows_forks():
  char_vocab = vocab.CharVocabulary()
  prompts, lengths = sampling.left_pad([tasks.encode_prompt("(2+3)*4\n")], 12)
  oracle = OracleCallbacks(max_tokens=64)
  state = oracle.start(None, prompts, lengths, 2, 0)
  score = jax.jit(oracle.score)

  def step(texts):
    ids = [char_vocab.encode(t) for t in texts]
    tokens = np.zeros((2, 16), np.int32)
    for b, row in enumerate(ids):
      tokens[b, :len(row)] = row
    return jnp.asarray(tokens), jnp.asarray([len(r) for r in ids])

  scores, state = score(None, state, *step(["2+3=5|5*4\n", "2+3=6|6*4\n"]))
  np.testing.assert_array_equal(scores, [1.0, 0.0])
  state = oracle.take_rows(state, jnp.array([[0, 0]]))  # both rows continue the right one
  scores, state = score(None, state, *step(["5*4=20|20\n", "5*4=21|21\n"]))
  np.testing.assert_array_equal(scores, [1.0, 0.0])
  tokens, lengths = step(["\\boxed{20}", ""])
  scores, state = score(None, state, tokens, lengths)
  np.testing.assert_array_equal(scores, [1.0, 0.0])  # row 1 keeps its score
  assert not bool(oracle.overflowed(state))
