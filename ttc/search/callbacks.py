"""How search reaches the models: two small callback objects, policy and verifier.

Search programs (`ttc.search.tree_search`) never call a model directly. They hold
an opaque per-row state for each model and move it with a few verbs, the two
`typing.Protocol`s below, so a test can swap in a stub whose best path is known by
construction (tests/search/stubs.py), and the oracle (`ttc.search.oracle`) or a
constant score (`ConstantCallbacks`, the floor a verifier must beat) can stand in
for the PRM:

  policy.prepare(params, num_rows) -> params   # once per search, before the loops
  policy.start(params, prompts_QxP, lengths_Q, num_rows, num_slots, max_tokens) -> state
  policy.step(params, state, rng, sampler, max_step_tokens, until_delimiter)
      -> (Samples of the step, state)          # rows that finished generate nothing
  policy.finished(state) -> [B] bool;  policy.finish(state, rows_B) -> state
  prm.start(params, prompts_QxP, lengths_Q, num_rows, num_slots) -> state
  prm.score(params, state, tokens_BxG, lengths_B) -> ([B] float32 score, state)
  prm.overflowed(state) -> [] bool (some step did not fit in the PRM's slots)
  {policy, prm}.take_rows(state, parent_QxN) -> state

Shapes: Q problems, N rows each, B = Q * N rows (prompt-major), P prompt width,
G = max_step_tokens.

Callbacks are frozen dataclasses: hashable, so they are static arguments of the
jitted search and a new instance with equal fields reuses the compiled program.
"""

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from ttc.decoding import samplers, sampling, steps
from ttc.models.transformer import Transformer
from ttc.verifiers import scoring
from ttc.verifiers.reward_model import RewardModel


@runtime_checkable
class SearchPolicy(Protocol):
  """The policy as search sees it; state is the callback's own pytree of [B, ...] rows.

  Implementations must be hashable (they are static arguments of the jitted search).
  """

  def prepare(self, params, num_rows: int) -> Any:
    """params as `step` wants them for B = num_rows rows (e.g. packed once); called once."""

  def start(self, params, prompts_QxP: jax.Array, lengths_Q: jax.Array, num_rows: int,
            num_slots: int, max_tokens: int) -> Any:
    """The state of Q left-padded int32 prompts, N = num_rows rows each; no row finished.

    max_tokens: the most tokens a row generates in all (its own cap: a step never
    takes it past, and a row that reaches it is finished). num_slots: cache slots per
    row (>= max_tokens; rows write in lockstep, so steps need room on top).
    """

  def step(self, params, state, rng: jax.Array, sampler: samplers.Sampler,
           max_step_tokens: int, until_delimiter: bool) -> tuple[sampling.Samples, Any]:
    """Every unfinished row generates one step (up to a step delimiter; without
    `until_delimiter`, up to the end of its solution), at most max_step_tokens = G
    tokens and never past its `max_tokens`.

    Returns (Samples with tokens_BxG / lengths_B, length 0 for finished rows, and
    stop_reason_B == StopReason.EOS where a solution ended), and the new state.
    """

  def finished(self, state) -> jax.Array:
    """[B] bool rows that generate no more (solution ended, reached max_tokens, or
    `finish`ed)."""

  def finish(self, state, rows_B: jax.Array) -> Any:
    """The state with the [B] bool `rows_B` marked finished too."""

  def take_rows(self, state, parent_QxN: jax.Array) -> Any:
    """Row (q, n) of the result is row (q, parent_QxN[q, n]) of `state` (int32 [Q, N])."""


@runtime_checkable
class SearchVerifier(Protocol):
  """The process verifier (a PRM, or the ground-truth oracle) as search sees it.

  Implementations must be hashable (they are static arguments of the jitted search).
  """

  def start(self, params, prompts_QxP: jax.Array, lengths_Q: jax.Array, num_rows: int,
            num_slots: int) -> Any:
    """The state of Q left-padded int32 prompts, N = num_rows rows each, room for
    num_slots scored tokens per row."""

  def score(self, params, state, tokens_BxG: jax.Array,
            lengths_B: jax.Array) -> tuple[jax.Array, Any]:
    """Appends each row's new step (its first lengths_B of tokens_BxG; 0 = no step) and
    returns ([B] float32 score of the row's latest step, in [0, 1], the new state).
    Rows without a new step may return anything: search keeps their old score."""

  def overflowed(self, state) -> jax.Array:
    """[] bool some step did not fit in the verifier's slots (its scores are unreliable)."""

  def take_rows(self, state, parent_QxN: jax.Array) -> Any:
    """Row (q, n) of the result is row (q, parent_QxN[q, n]) of `state` (int32 [Q, N])."""


@dataclasses.dataclass(frozen=True)
class PolicyCallbacks:
  """The policy LM through `ttc.decoding.steps` (shared prompt cache, per-row suffix).

  stops: which tokens end a solution (its end ids: EOS, a chat template's end of
    turn; such a row is finished, stop reason EOS) and which end a reasoning step
    (its step ids and pairs: the task's delimiter, e.g. "\\n\\n", as one token or
    two); see `Codec.stop_rule`.
  """

  model: Transformer
  stops: sampling.StopRule
  pad_id: int = 0

  def prepare(self, params, num_rows: int):
    """Weights packed once for the CPU kernels where B = num_rows rows use them."""
    return sampling.with_packed_weights(self.model, params, num_rows)

  def start(self, params, prompts_QxP, lengths_Q, num_rows: int, num_slots: int,
            max_tokens: int):
    return steps.start(self.model, params, prompts_QxP, lengths_Q, num_rows=num_rows,
                       max_tokens=max_tokens, num_slots=num_slots)

  def step(self, params, state, rng, sampler, max_step_tokens: int, until_delimiter: bool):
    """One step per unfinished row (or, without `until_delimiter`, up to an end id or
    the cap)."""
    stops = self.stops if until_delimiter else self.stops.without_steps()
    return steps.continue_until_step(self.model, params, state, rng, sampler,
                                     max_step_tokens=max_step_tokens, stops=stops,
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
  chunk: int = scoring.DEFAULT_CHUNK

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


@dataclasses.dataclass(frozen=True)
class ConstantCallbacks:
  """A verifier that knows nothing: every step (so every solution) scores `score_value`.

  The floor a verifier must beat. Weighted best-of-N over equal scores is majority
  voting; rule "top" keeps the lowest unfinished rows (ties go to the lower row), a
  random choice since rows are iid samples; "particles" draws parents uniformly. The
  state is empty: it runs no model (search still counts the tokens passed to it in
  prm_tokens_Q).
  """

  score_value: float = 0.5

  def start(self, params, prompts_QxP, lengths_Q, num_rows: int, num_slots: int):
    return ()

  def score(self, params, state, tokens_BxG, lengths_B):
    return jnp.full(lengths_B.shape, self.score_value, jnp.float32), state

  def overflowed(self, state):
    return jnp.zeros((), bool)

  def take_rows(self, state, parent_QxN):
    return state
