"""The ground-truth verifier scores steps as the task's step checker does, through jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc import workdir
from ttc.data import arith_task, task as task_lib
from ttc.decoding import sampling
from ttc.errors import UserError
from ttc.search.oracle import OracleCallbacks

TASK = arith_task.ArithTask(name="oracle_test")
CODEC = workdir.char_codec()  # a ttc work dir's character vocabulary


def _problem(question, answer):
  return task_lib.Problem(uid=question, question=question, answer=answer, level=1)


def _prompts(problems, width=12):
  return sampling.left_pad([CODEC.encode_prompt(TASK.prompt(p), TASK.chat) for p in problems],
                           width)


def _step(texts, width=16):
  """[B, width] tokens and [B] lengths of one step per row."""
  ids = [CODEC.encode(t) for t in texts]
  tokens = np.zeros((len(texts), width), np.int32)
  for b, row in enumerate(ids):
    tokens[b, :len(row)] = row
  return jnp.asarray(tokens), jnp.asarray([len(r) for r in ids])


def test_oracle_scores_prefixes_by_ground_truth_and_follows_forks():
  problem = _problem("(2+3)*4", "20")
  oracle = OracleCallbacks.for_problems(TASK, CODEC, [problem], max_tokens=64)
  prompts, lengths = _prompts([problem])
  state = oracle.start(None, prompts, lengths, 2, 0)
  score = jax.jit(oracle.score)

  scores, state = score(None, state, *_step(["2+3=5|5*4\n", "2+3=6|6*4\n"]))
  np.testing.assert_array_equal(scores, [1.0, 0.0])
  state = oracle.take_rows(state, jnp.array([[0, 0]]))  # both rows continue the right one
  scores, state = score(None, state, *_step(["5*4=20|20\n", "5*4=21|21\n"]))
  np.testing.assert_array_equal(scores, [1.0, 0.0])
  scores, state = score(None, state, *_step(["\\boxed{20}", ""]))
  np.testing.assert_array_equal(scores, [1.0, 0.0])  # row 1 keeps its score
  assert not bool(oracle.overflowed(state))


def test_each_row_is_checked_against_its_own_problem():
  # Problems in another order than the batch's: rows are matched by their prompt.
  first, second = _problem("2+3", "5"), _problem("2*3", "6")
  oracle = OracleCallbacks.for_problems(TASK, CODEC, [second, first], max_tokens=64)
  prompts, lengths = _prompts([first, second])
  state = oracle.start(None, prompts, lengths, 2, 0)
  # Row (q, n): problem q. The same two texts are right for one problem only.
  scores, _ = jax.jit(oracle.score)(None, state, *_step(["2+3=5|5\n", "2*3=6|6\n"] * 2))
  np.testing.assert_array_equal(scores, [1.0, 0.0, 0.0, 1.0])


def test_equal_oracles_are_one_static_argument_and_need_a_step_checker():
  problems = [_problem("2+3", "5"), _problem("2*3", "6")]
  one = OracleCallbacks.for_problems(TASK, CODEC, problems, max_tokens=64)
  again = OracleCallbacks.for_problems(TASK, CODEC, problems, max_tokens=64)
  assert one == again and hash(one) == hash(again)  # jit reuses the compiled search
  assert one != OracleCallbacks.for_problems(TASK, CODEC, problems[:1], max_tokens=64)
  with pytest.raises(UserError, match="same prompt but other answers"):
    OracleCallbacks.for_problems(TASK, CODEC, [problems[0], _problem("2+3", "6")])

  class NoChecker(arith_task.ArithTask):
    @property
    def has_step_checker(self):
      return False

  with pytest.raises(UserError, match="no step checker"):
    OracleCallbacks.for_problems(NoChecker(name="unchecked"), CODEC, problems)
