"""How search reaches the models: two small callback objects, policy and PRM.

Search programs (`ttc.search.tree_search`) never call a model directly. They hold
an opaque per-row state for each model and move it with three verbs, so a test can
swap in a stub whose best path is known by construction:

  policy.prepare(params, num_rows) -> params   # once per search, before the loops
  policy.start(params, prompts_QxP, lengths_Q, num_rows, num_slots) -> state
  policy.step(params, state, rng, sampler, max_step_tokens, until_delimiter)
      -> (Samples of the step, state)          # rows that finished generate nothing
  policy.finished(state) -> [B] bool;  policy.finish(state, rows_B) -> state
  prm.start(params, prompts_QxP, lengths_Q, num_rows, num_slots) -> state
  prm.score(params, state, tokens_BxG, lengths_B) -> ([B] float32 score, state)
  prm.overflowed(state) -> [] bool (some step did not fit in the PRM's slots)
  {policy, prm}.take_rows(state, parent_QxN) -> state

Callbacks are frozen dataclasses: hashable, so they are static arguments of the
jitted search and a new instance with equal fields reuses the compiled program.
"""

import dataclasses

from ttc.decoding import sampling, steps
from ttc.models.transformer import Transformer
from ttc.verifiers import scoring
from ttc.verifiers.reward_model import RewardModel


@dataclasses.dataclass(frozen=True)
class PolicyCallbacks:
  """The policy LM through `ttc.decoding.steps` (shared prompt cache, per-row suffix).

  step_ids: token ids that end a reasoning step (the delimiter, e.g. "\\n").
  eos_id: ends a solution.
  """

  model: Transformer
  step_ids: tuple[int, ...]
  eos_id: int
  pad_id: int = 0

  def prepare(self, params, num_rows: int):
    """Weights packed once for the CPU kernels where B = num_rows rows use them."""
    return sampling.with_packed_weights(self.model, params, num_rows)

  def start(self, params, prompts_QxP, lengths_Q, num_rows: int, num_slots: int):
    return steps.start(self.model, params, prompts_QxP, lengths_Q, num_rows=num_rows,
                       max_tokens=num_slots)

  def step(self, params, state, rng, sampler, max_step_tokens: int, until_delimiter: bool):
    """One step per unfinished row (or, without `until_delimiter`, up to EOS or the cap)."""
    return steps.continue_until_step(
        self.model, params, state, rng, sampler, max_step_tokens=max_step_tokens,
        step_ids=self.step_ids if until_delimiter else (), eos_id=self.eos_id,
        pad_id=self.pad_id)

  def finished(self, state):
    return state.finished_B

  def finish(self, state, rows_B):
    return state.replace(finished_B=state.finished_B | rows_B)

  def take_rows(self, state, parent_QxN):
    return steps.take_rows(state, parent_QxN)


@dataclasses.dataclass(frozen=True)
class PrmCallbacks:
  """A process reward model through `ttc.verifiers.scoring` (incremental, KV-cached).

  chunk: tokens per model call while scoring a step (see `scoring.score_step`).
  """

  model: RewardModel
  chunk: int = 8

  def start(self, params, prompts_QxP, lengths_Q, num_rows: int, num_slots: int):
    return scoring.start(self.model, params, prompts_QxP, lengths_Q, num_rows=num_rows,
                         max_tokens=num_slots)

  def score(self, params, state, tokens_BxG, lengths_B):
    state = scoring.score_step(self.model, params, state, tokens_BxG, lengths_B,
                               chunk=self.chunk)
    return state.score_B, state

  def take_rows(self, state, parent_QxN):
    return scoring.take_rows(state, parent_QxN)

  def overflowed(self, state):
    return state.overflowed

