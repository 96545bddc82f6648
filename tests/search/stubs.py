"""A stub policy and PRM whose best path is known by construction.

A solution is `depth` steps; step d picks a choice c in [0, num_choices) and is the
two tokens [c + 1, DELIMITER], the last step [c + 1, EOS]. A row's path is its
choices read as a base-`num_choices` number. The policy samples choices from fixed
logits (uniform unless given), so under `samplers.Greedy` it always picks the
argmax. The PRM scores a prefix with `score_fn(path_B, depth_B)`, any jnp function.
Both keep their state in tiny dataclasses and follow `ttc.search.callbacks`.
"""

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ttc import partitioning
from ttc.decoding import sampling, steps
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.search.callbacks import PolicyCallbacks, PrmCallbacks
from ttc.verifiers import reward_model

DELIMITER = 99
EOS = 100


@flax.struct.dataclass
class PathState:
  path_B: jax.Array  # int32 choices so far, base num_choices
  depth_B: jax.Array  # int32 steps so far
  finished_B: jax.Array
  score_B: jax.Array  # PRM only: score after the latest step

  def take(self, parent_QxN):
    rows = steps.flat_rows(parent_QxN, self.path_B.shape[0] // parent_QxN.shape[0])
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), self)


def _start(lengths_Q, num_rows):
  batch = lengths_Q.shape[0] * num_rows
  zeros = jnp.zeros((batch,), jnp.int32)
  return PathState(path_B=zeros, depth_B=zeros, finished_B=jnp.zeros((batch,), bool),
                   score_B=jnp.zeros((batch,), jnp.float32))


def _read_steps(state: PathState, tokens_BxG, lengths_B, num_choices: int) -> PathState:
  """Advances paths by the [choice + 1, delimiter] pairs of each row's new tokens."""
  path_B, depth_B = state.path_B, state.depth_B
  for g in range(0, tokens_BxG.shape[1], 2):
    real_B = g < lengths_B
    path_B = jnp.where(real_B, path_B * num_choices + tokens_BxG[:, g] - 1, path_B)
    depth_B = depth_B + real_B
  return state.replace(path_B=path_B, depth_B=depth_B)


@dataclasses.dataclass(frozen=True)
class StubPolicy:
  depth: int
  num_choices: int
  logits: tuple = ()  # over choices; empty = uniform
  # The log-probability the stub reports for each choice's token (its delimiter
  # gets 0), whatever it sampled from; empty = 0 for all.
  choice_logprobs: tuple = ()

  def prepare(self, params, num_rows):
    return params

  def start(self, params, prompts_QxP, lengths_Q, num_rows, num_slots, max_tokens):
    return _start(lengths_Q, num_rows)

  def step(self, params, state, rng, sampler, max_step_tokens, until_delimiter):
    batch = state.path_B.shape[0]
    logits = jnp.asarray(self.logits or (0.0,) * self.num_choices, jnp.float32)
    steps_per_call = 1 if until_delimiter else self.depth
    tokens, lengths = [], jnp.zeros((batch,), jnp.int32)
    depth_B = state.depth_B
    for i in range(steps_per_call):
      active_B = ~state.finished_B & (depth_B < self.depth)
      choice_B, _ = sampler(jnp.broadcast_to(logits, (batch, self.num_choices)),
                            jax.random.fold_in(rng, i))
      last_B = depth_B + 1 == self.depth
      tokens += [jnp.where(active_B, choice_B + 1, 0),
                 jnp.where(active_B, jnp.where(last_B, EOS, DELIMITER), 0)]
      lengths = lengths + 2 * active_B
      depth_B = depth_B + active_B
    tokens_BxG = jnp.stack(tokens, axis=1).astype(jnp.int32)
    reached_end_B = (depth_B == self.depth) & ~state.finished_B
    reported = jnp.asarray((0.0,) + (self.choice_logprobs or (0.0,) * self.num_choices))
    is_choice = jnp.arange(tokens_BxG.shape[1]) % 2 == 0
    logprobs_BxG = jnp.where(is_choice, reported[jnp.where(is_choice, tokens_BxG, 0)], 0.0)
    out = sampling.Samples(tokens_BxG=tokens_BxG, logprobs_BxG=logprobs_BxG,
                           lengths_B=lengths,
                           stop_reason_B=jnp.where(
                               reached_end_B, sampling.StopReason.EOS,
                               jnp.where(lengths > 0, sampling.StopReason.STOP_TOKEN, 0)))
    state = _read_steps(state, tokens_BxG, lengths, self.num_choices)
    return out, state.replace(finished_B=state.finished_B | reached_end_B)

  def finished(self, state):
    return state.finished_B

  def finish(self, state, rows_B):
    return state.replace(finished_B=state.finished_B | rows_B)

  def take_rows(self, state, parent_QxN):
    return state.take(parent_QxN)


@dataclasses.dataclass(frozen=True)
class StubPrm:
  num_choices: int
  score_fn: Callable  # (path_B, depth_B) -> [B] float32 in [0, 1]

  def start(self, params, prompts_QxP, lengths_Q, num_rows, num_slots):
    return _start(lengths_Q, num_rows)

  def score(self, params, state, tokens_BxG, lengths_B):
    state = _read_steps(state, tokens_BxG, lengths_B, self.num_choices)
    score_B = jnp.where(lengths_B > 0, self.score_fn(state.path_B, state.depth_B), state.score_B)
    return score_B, state.replace(score_B=score_B)

  def overflowed(self, state):
    return jnp.zeros((), bool)

  def take_rows(self, state, parent_QxN):
    return state.take(parent_QxN)


def paths(result, num_choices: int) -> np.ndarray:
  """[Q, N] int paths read back from the result's tokens (-1 for an empty row)."""
  tokens = np.asarray(result.tokens_QxNxW)
  lengths = np.asarray(result.lengths_QxN)
  out = np.full(lengths.shape, -1)
  for q, n in np.ndindex(lengths.shape):
    if lengths[q, n]:
      out[q, n] = 0
      for g in range(0, lengths[q, n], 2):
        out[q, n] = out[q, n] * num_choices + tokens[q, n, g] - 1
  return out


TINY_CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          head_dim=8, mlp_dim=64)


def random_models(delimiter: int, eos: int, config: ModelConfig = TINY_CONFIG):
  """(policy callbacks, PRM callbacks, policy params, PRM params) of a real tiny policy and
  PRM with random weights (init keys 1 and 2): search on real models, no training."""
  policy = Transformer(config)
  prm = reward_model.RewardModel(config)
  policy_params = partitioning.init_params(policy, jax.random.key(1))
  prm_params = partitioning.init_params(prm, jax.random.key(2))
  prm_params["params"]["value_head"]["kernel"] *= 100.0  # spread scores over (0, 1)
  stops = sampling.StopRule(end_ids=(eos,), step_ids=(delimiter,))
  return (PolicyCallbacks(policy, stops), PrmCallbacks(prm, chunk=4),
          policy_params, prm_params)
