"""One compiled program for every PRM-guided search of the paper (§5): rounds of
"generate a step, score it, keep the best, fork them".

    result = tree_search.search(policy, prm, policy_params, prm_params, prompts_QxP,
                                lengths_Q, live_Q, rng, sampler, config)

Q problems run at once with N rows (candidate solutions) each. A round is:

  1. every unfinished row generates one step (`policy.step`, sampled);
  2. the PRM scores it incrementally (`prm.score`): a row's score is its latest
     step's score, so a finished solution's score is its last step's;
  3. lookahead (k > 0): each row is rolled out k more steps at temperature 0 on a
     copy of both caches; its value is the PRM score where the rollout stops; the
     copies are dropped. With k = 0 the value is the score, which is beam search;
  4. `selection.choose_parents` refills each group's unfinished slots from its
     unfinished rows (rule "top": the best ones, forked; "particles": drawn by
     PRM weight; "rebase": forked in proportion to it; optionally only one row
     per distinct solution so far is a parent, `SearchConfig.dedup`, valued by
     the sum over its copies with `SearchConfig.vote`); the
     policy's and the PRM's caches are reordered together. How many distinct
     solutions so far survive is recorded per problem and round (distinct_QxR).

Rounds repeat in a `lax.while_loop` (the token loop inside `policy.step` is
another) until every row finished or `max_rounds`. The N final rows are the
candidates for weighted best-of-N (`ttc.verifiers.aggregation.choose_answer`),
which the caller applies once it has read the answers off the tokens.

Methods are settings of `SearchConfig` (see `ttc.search.methods`): best-of-N is one
round of whole solutions without selection; beam search keeps N/M of N and forks M
ways; DVTS does the same within N/M independent groups of M; lookahead is beam
search with k > 0; particle filtering and REBASE are other selection rules.
"""

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from ttc.decoding import samplers, sampling, steps
from ttc.search import callbacks, selection
from ttc.verifiers import scoring

PAPER_MAX_ROUNDS = 40


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The static settings of a search program; a new value compiles a new program.

  num_rows: N candidate solutions per problem.
  group_size: rows compete for survival within groups of this many (N: beam
    search; M: DVTS's N/M subtrees).
  expand: M, copies of each surviving row; 1 = no selection (best-of-N).
  lookahead_steps: k, greedy steps of rollout valuing each candidate (0 = none).
  step_by_step: False generates each solution in one go (best-of-N); True stops at
    the step delimiter so the PRM can steer between steps.
  max_step_tokens: tokens one step may take (a longer step continues next round).
  max_solution_tokens: each row's own hard cap: a step never takes a row past it,
    and a row that reaches it stops (unfinished).
  max_rounds: rounds of generate-score-select (the paper: 40).
  num_slots / prm_slots: KV-cache slots per row of the policy / the PRM; 0 (the
    default) = `policy_slots_needed` / `prm_slots_needed(prm_chunk)`; fewer policy
    slots are refused, and PRM slots too few for any chunk. Rows of all problems
    write in lockstep at one shared slot (a step advances it by the longest row's
    step) and are packed again after each round (`KVCache.take_rows`: the shared
    slot drops to the longest row, at most max_solution_tokens). With that many
    slots the shared slot never cuts a row that has budget of its own left, so a
    problem's rows do not depend on the other problems of the batch. PRM overflow
    (a PRM chunk larger than the slots were sized for) is flagged.
  prm_chunk: tokens per PRM call (`PrmCallbacks.chunk`) the default prm_slots are
    sized for.
  selection: how parents are chosen, one of `selection.RULES`: "top" (beam search,
    DVTS), "particles" (particle filtering), "rebase" (reward-balanced expansion).
  selection_temperature: temperature of the weights softmax(logit(value) / t) that
    "particles" and "rebase" use (> 0; lower is greedier).
  dedup: among the unfinished rows of a group, only the first copy of each distinct
    solution so far is a parent (step by step only).
  vote: as dedup, and each parent is valued by the sum of its copies' values in the
    group (`selection.votes`: weighted best-of-N's sum per answer, applied to each
    solution so far); rule "top" only (the weighting rules already give a solution
    the weight of all its copies).
  likelihood_weight: w >= 0; selection values a row by sigmoid(logit(value) + w x
    the mean log-probability per token of its latest step under the sampler)
    (`selection.with_step_likelihood`); 0 = the value alone. The final answer is
    still weighted best-of-N on PRM scores.
  """

  num_rows: int
  group_size: int
  expand: int = 1
  lookahead_steps: int = 0
  step_by_step: bool = True
  max_step_tokens: int = 32
  max_solution_tokens: int = 144
  max_rounds: int = PAPER_MAX_ROUNDS
  num_slots: int = 0
  prm_slots: int = 0
  prm_chunk: int = scoring.DEFAULT_CHUNK
  selection: str = "top"
  selection_temperature: float = 1.0
  dedup: bool = False
  vote: bool = False
  likelihood_weight: float = 0.0

  def __post_init__(self):
    if self.num_rows < 1 or self.num_rows % self.group_size:
      raise ValueError(f"num_rows={self.num_rows} must be a positive multiple of "
                       f"group_size={self.group_size}")
    if not 1 <= self.expand <= self.group_size:
      raise ValueError(f"expand={self.expand} must lie in [1, group_size={self.group_size}]")
    if self.lookahead_steps < 0 or self.max_rounds < 1 or self.max_step_tokens < 1:
      raise ValueError(f"bad search settings {self}")
    if self.selection not in selection.RULES or not self.selection_temperature > 0:
      raise ValueError(f"selection={self.selection!r} must be one of {selection.RULES} and "
                       f"selection_temperature={self.selection_temperature} > 0")
    if (self.dedup or self.vote or self.likelihood_weight) and not self.step_by_step:
      raise ValueError("dedup, vote and likelihood_weight need step_by_step: whole solutions "
                       "are never selected")
    if not self.likelihood_weight >= 0:
      raise ValueError(f"likelihood_weight={self.likelihood_weight} must be >= 0")
    if self.vote and self.selection != "top":
      raise ValueError(f"vote is for selection 'top'; {self.selection!r} already weighs "
                       "every copy of a solution")
    # Frozen: the sizes are filled in once, here.
    object.__setattr__(self, "num_slots", self.num_slots or self.policy_slots_needed)
    object.__setattr__(self, "prm_slots", self.prm_slots or self.prm_slots_needed(self.prm_chunk))
    if self.num_slots < self.policy_slots_needed:
      raise ValueError(f"num_slots={self.num_slots} is below the {self.policy_slots_needed} "
                       "slots that keep problems independent (see SearchConfig); raise it")
    if self.prm_slots < self.prm_slots_needed(chunk=1):  # a PRM chunk only adds to it
      raise ValueError(f"prm_slots={self.prm_slots} is below the {self.prm_slots_needed(1)} "
                       "slots a solution and its steps take (see SearchConfig); raise it")

  @property
  def selects(self) -> bool:
    """Rounds choose parents: step by step, forking (rule "top" with expand > 1) or
    weighting (the other rules, with more than one row per group). Otherwise rows
    just continue, and lookahead values would go unused, so no rollouts run."""
    if not self.step_by_step:
      return False
    return self.expand > 1 if self.selection == "top" else self.group_size > 1

  @property
  def steps_between_packs(self) -> int:
    """Policy steps that write to the cache between two packings: the round's own
    step, plus the lookahead rollout's k when there is selection to value."""
    return 1 + (self.lookahead_steps if self.selects else 0)

  @property
  def policy_slots_needed(self) -> int:
    """Policy slots per row such that the shared write slot never binds.

    Step by step: rows are packed after every round, so before the round's step the
    shared slot is at most the longest row, max_solution_tokens; each of the
    `steps_between_packs` steps then advances it by at most one step. Whole
    solutions (no delimiter, no packing): every unfinished row takes its full
    budget each step, so those rows stay in lockstep and the slot is their length.
    """
    if not self.step_by_step:
      return self.max_solution_tokens
    step = min(self.max_step_tokens, self.max_solution_tokens)
    return self.max_solution_tokens + self.steps_between_packs * step

  def prm_slots_needed(self, chunk: int) -> int:
    """PRM slots per row such that no step overflows, for a PRM that writes each step
    in whole `chunk`s (`scoring.score_step`): as for the policy, with every step
    rounded up to chunks; whole solutions are not packed between rounds, so there
    every round's chunks add up."""
    step = min(self.max_step_tokens, self.max_solution_tokens)
    chunked_step = -(-step // chunk) * chunk
    if not self.step_by_step:
      return -(-self.max_solution_tokens // step) * chunked_step
    return self.max_solution_tokens + self.steps_between_packs * chunked_step

  @property
  def generations(self) -> int:
    """The budget in the paper's units: N * (k + 1) solution generations (N when there
    is nothing to select, so no rollouts run)."""
    return self.num_rows * (self.lookahead_steps + 1 if self.selects else 1)


@flax.struct.dataclass
class SearchState:
  """The carry of the round loop; B = Q * N rows, prompt-major; W = buffer width.

  policy / prm: the callbacks' own per-row states (caches).
  tokens_BxW: int32 each row's solution so far, pad after length_B.
  length_B: int32 solution tokens so far.
  score_B: float32 PRM score after the row's latest step (0 before its first).
  complete_B: bool the solution ended with EOS (only those carry an answer).
  round: [] int32 rounds done.
  tokens_generated_Q: int32 policy tokens sampled per problem, rollouts included.
  prm_tokens_Q: int32 tokens the PRM ran per problem: the prompt once, then every
    generated token once (rollouts included).
  distinct_QxR: int32 [Q, max_rounds] distinct solutions so far among a problem's
    unfinished rows right after round r's selection (compared exactly; 0 once all
    finished); -1 for rounds not run, rounds the problem had no unfinished row at
    the start of, and every round of whole-solution search (nothing is selected).
  """

  policy: Any
  prm: Any
  tokens_BxW: jax.Array
  length_B: jax.Array
  score_B: jax.Array
  complete_B: jax.Array
  round: jax.Array
  tokens_generated_Q: jax.Array
  prm_tokens_Q: jax.Array
  distinct_QxR: jax.Array


@flax.struct.dataclass
class SearchResult:
  """The N final candidates of each of Q problems.

  tokens_QxNxW / lengths_QxN: solutions (pad after the length).
  scores_QxN: float32 PRM score of each solution's last step.
  complete_QxN: bool ended with EOS.
  rounds: [] int32 rounds run; tokens_generated_Q, prm_tokens_Q: as in SearchState.
  prm_overflowed: [] bool some step did not fit in the PRM's slots (raise prm_slots).
  distinct_QxR: int32 [Q, max_rounds] as in SearchState.
  """

  tokens_QxNxW: jax.Array
  lengths_QxN: jax.Array
  scores_QxN: jax.Array
  complete_QxN: jax.Array
  rounds: jax.Array
  tokens_generated_Q: jax.Array
  prm_tokens_Q: jax.Array
  prm_overflowed: jax.Array
  distinct_QxR: jax.Array


def _per_problem(x_B, num_problems: int):
  return jnp.sum(x_B.reshape(num_problems, -1), axis=1).astype(jnp.int32)


def append_tokens(tokens_BxW, new_BxG, length_B, active_B):
  """Writes each active row's new tokens at its current length (W >= length + G)."""
  put = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))
  return jnp.where(active_B[:, None], put(tokens_BxW, new_BxG, length_B), tokens_BxW)


def _lookahead(policy, prm, policy_params, prm_params, policy_state, prm_state, score_B,
               length_B, config: SearchConfig, num_problems: int):
  """Values of the rows after k greedy rollout steps; the rollouts are thrown away.

  Returns ([B] float32 value: the PRM score after the rollout's last step, or the
  row's own score if it had finished; [Q] tokens generated, which the PRM also runs).
  """
  greedy = samplers.Greedy()

  def cond(carry):
    i, p, *_ = carry
    return (i < config.lookahead_steps) & ~jnp.all(policy.finished(p))

  def body(carry):
    i, p, r, value_B, length_B, generated_Q = carry
    # Greedy ignores the key.
    out, p = policy.step(policy_params, p, jax.random.key(0), greedy, config.max_step_tokens,
                         True)
    new_score_B, r = prm.score(prm_params, r, out.tokens_BxG, out.lengths_B)
    value_B = jnp.where(out.lengths_B > 0, new_score_B, value_B)
    length_B = length_B + out.lengths_B
    p = policy.finish(p, length_B >= config.max_solution_tokens)
    return (i + 1, p, r, value_B, length_B,
            generated_Q + _per_problem(out.lengths_B, num_problems))

  zero_Q = jnp.zeros((num_problems,), jnp.int32)
  _, _, _, value_B, _, generated_Q = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), policy_state, prm_state, score_B, length_B,
                   zero_Q))
  return value_B, generated_Q


# Selection (rule "particles") draws with round r's key folded with this constant: the
# policy samples round r with fold_in(rng, r) and derives its per-token keys from that
# key by splits (or small fold_ins, in stubs), none of which this one can equal.
_SELECTION_STREAM = 0x5E1EC7


def _select(config: SearchConfig, key, value_QxN, alive_QxN, tokens_BxW, length_B):
  """([Q, N] int32 parents, [Q] int32 distinct solutions so far among the unfinished
  rows after selection); without selection (`config.selects`) every row continues."""
  num_problems, num_rows = alive_QxN.shape
  class_QxN = selection.prefix_class(tokens_BxW.reshape(num_problems, num_rows, -1),
                                     length_B.reshape(num_problems, num_rows), alive_QxN)
  if config.selects:
    candidate_QxN = (selection.first_copies(class_QxN, alive_QxN, config.group_size)
                     if config.dedup or config.vote else alive_QxN)
    if config.vote:
      value_QxN = selection.votes(value_QxN, class_QxN, alive_QxN, config.group_size)
    parent_QxN = selection.choose_parents(
        config.selection, key, value_QxN, alive_QxN, candidate_QxN,
        group_size=config.group_size, expand=config.expand,
        temperature=config.selection_temperature)
  else:  # no selection; taking the rows still packs their cache slots (KVCache.take_rows)
    parent_QxN = jnp.broadcast_to(jnp.arange(num_rows, dtype=jnp.int32), alive_QxN.shape)
  return parent_QxN, selection.count_distinct(class_QxN, parent_QxN, alive_QxN)


def _round(policy, prm, policy_params, prm_params, rng, sampler, config: SearchConfig,
           s: SearchState) -> SearchState:
  num_rows = config.num_rows
  num_problems = s.length_B.shape[0] // num_rows
  round_key = jax.random.fold_in(rng, s.round)
  started_Q = jnp.any(~policy.finished(s.policy).reshape(num_problems, num_rows), axis=1)
  out, policy_state = policy.step(policy_params, s.policy, round_key, sampler,
                                  config.max_step_tokens, config.step_by_step)
  active_B = out.lengths_B > 0
  tokens_BxW = append_tokens(s.tokens_BxW, out.tokens_BxG, s.length_B, active_B)
  length_B = s.length_B + out.lengths_B
  new_score_B, prm_state = prm.score(prm_params, s.prm, out.tokens_BxG, out.lengths_B)
  score_B = jnp.where(active_B, new_score_B, s.score_B)
  complete_B = s.complete_B | (out.stop_reason_B == sampling.StopReason.EOS)
  policy_state = policy.finish(policy_state, length_B >= config.max_solution_tokens)
  step_tokens_Q = _per_problem(out.lengths_B, num_problems)
  generated_Q = s.tokens_generated_Q + step_tokens_Q
  prm_tokens_Q = s.prm_tokens_Q + step_tokens_Q  # the PRM scores every new token once

  distinct_QxR = s.distinct_QxR
  if config.step_by_step:
    value_B = score_B
    if config.lookahead_steps and config.selects:  # values only matter to selection
      value_B, rollout_Q = _lookahead(policy, prm, policy_params, prm_params, policy_state,
                                      prm_state, score_B, length_B, config, num_problems)
      generated_Q += rollout_Q
      prm_tokens_Q += rollout_Q
    if config.likelihood_weight:
      value_B = selection.with_step_likelihood(value_B, out.logprobs_BxG, out.lengths_B,
                                               config.likelihood_weight)
    alive_QxN = ~policy.finished(policy_state).reshape(num_problems, num_rows)
    parent_QxN, distinct_Q = _select(
        config, jax.random.fold_in(round_key, _SELECTION_STREAM),
        value_B.reshape(num_problems, num_rows), alive_QxN, tokens_BxW, length_B)
    distinct_QxR = distinct_QxR.at[:, s.round].set(jnp.where(started_Q, distinct_Q, -1))
    policy_state = policy.take_rows(policy_state, parent_QxN)
    prm_state = prm.take_rows(prm_state, parent_QxN)
    rows_B = steps.flat_rows(parent_QxN, num_rows)
    take = lambda x: jnp.take(x, rows_B, axis=0)
    tokens_BxW, length_B, score_B, complete_B = map(
        take, (tokens_BxW, length_B, score_B, complete_B))

  return SearchState(policy=policy_state, prm=prm_state, tokens_BxW=tokens_BxW,
                     length_B=length_B, score_B=score_B,
                     complete_B=complete_B, round=s.round + 1,
                     tokens_generated_Q=generated_Q, prm_tokens_Q=prm_tokens_Q,
                     distinct_QxR=distinct_QxR)


@functools.partial(jax.jit, static_argnames=("policy", "prm", "config"))
def search(policy: callbacks.SearchPolicy, prm: callbacks.SearchVerifier, policy_params,
           prm_params, prompts_QxP, lengths_Q, live_Q, rng, sampler: samplers.Sampler,
           config: SearchConfig) -> SearchResult:
  """Runs one search over Q left-padded prompts; see the module docstring.

  policy / prm: callbacks filling `callbacks.SearchPolicy` / `SearchVerifier`; static,
    hashable.
  prompts_QxP, lengths_Q: int32 left-padded prompts and their lengths.
  live_Q: bool; False rows are batch padding: they generate and score nothing.
  rng: sampling key; round r samples with fold_in(rng, r), whatever k is, so a
    lookahead search and a beam search of the same seed draw the same keys (rule
    "particles" draws parents from a stream of its own).
  sampler: how steps are sampled (its array fields are traced).
  """
  num_problems = prompts_QxP.shape[0]
  num_rows = config.num_rows
  batch = num_problems * num_rows
  policy_params = policy.prepare(policy_params, batch)
  policy_state = policy.start(policy_params, prompts_QxP, lengths_Q, num_rows, config.num_slots,
                              config.max_solution_tokens)
  policy_state = policy.finish(policy_state, jnp.repeat(~live_Q, num_rows))
  prm_state = prm.start(prm_params, prompts_QxP, lengths_Q, num_rows, config.prm_slots)
  width = config.max_solution_tokens + config.max_step_tokens
  state = SearchState(
      policy=policy_state, prm=prm_state,
      tokens_BxW=jnp.zeros((batch, width), jnp.int32),
      length_B=jnp.zeros((batch,), jnp.int32), score_B=jnp.zeros((batch,), jnp.float32),
      complete_B=jnp.zeros((batch,), bool),
      round=jnp.zeros((), jnp.int32), tokens_generated_Q=jnp.zeros((num_problems,), jnp.int32),
      prm_tokens_Q=jnp.where(live_Q, lengths_Q, 0).astype(jnp.int32),
      distinct_QxR=jnp.full((num_problems, config.max_rounds), -1, jnp.int32))

  def cond(s):
    return (s.round < config.max_rounds) & ~jnp.all(policy.finished(s.policy))

  body = functools.partial(_round, policy, prm, policy_params, prm_params, rng, sampler, config)
  s = jax.lax.while_loop(cond, body, state)
  shape = (num_problems, num_rows)
  return SearchResult(
      tokens_QxNxW=s.tokens_BxW.reshape(*shape, width), lengths_QxN=s.length_B.reshape(shape),
      scores_QxN=s.score_B.reshape(shape), complete_QxN=s.complete_B.reshape(shape),
      rounds=s.round,
      tokens_generated_Q=s.tokens_generated_Q, prm_tokens_Q=s.prm_tokens_Q,
      prm_overflowed=prm.overflowed(s.prm), distinct_QxR=s.distinct_QxR)
