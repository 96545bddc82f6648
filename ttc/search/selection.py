"""Which rows survive a search round, and how many times each is forked.

Rows of a problem form groups of `group_size` rows (one group of N for beam search,
N / M groups of M for DVTS). Finished rows keep their slot: they are final
candidates. The A unfinished slots of a group are refilled from the group's
candidate parents: its unfinished rows, or, with deduplication, only the first
(lowest) row of each distinct solution so far (`first_copies`; a duplicate's slot
is still refilled, it just is no parent, and the first copy always stays one). One
of `RULES` refills them:

  top        the ceil(A / expand) best candidates, each copied `expand` times (the
             last fewer if A is not a multiple), best first (paper §5.2). With A = N
             and expand = M this is "keep the top N/M, expand each M ways"; with
             group_size = expand = M it is DVTS's greedy choice within each subtree.
             With only D < ceil(A / expand) candidates (deduplication), the j-th
             unfinished slot takes the candidate ranked (j // expand) mod D.
  particles  each slot draws its parent independently with probability w =
             softmax(logit(value) / temperature) over the candidates: particle
             filtering's resampling (Puri et al. 2025, arXiv 2502.01618; its_hub
             takes logit(PRM reward) as the log-weight).
  rebase     deterministic: each candidate gets round(A * w) slots, rounded by
             largest remainder so the counts sum to A (REBASE, Wu et al. 2024), best
             candidate first, a parent's copies contiguous.

Values are PRM scores in [0, 1]; they are clipped to [eps, 1 - eps] before the
logit so a score of exactly 0 or 1 stays finite. Ties go to the lower row index.
"""

import jax
import jax.numpy as jnp

from ttc.decoding import samplers

RULES = ("top", "particles", "rebase")
_EPS = 1e-6
_MASKED = -1e30  # a non-candidate's logit: finite, so a group without candidates is no NaN


def _grouped(x_QxN, group_size: int):
  """[Q, N] -> [Q, N / group_size, group_size]."""
  num_problems, num_rows = x_QxN.shape
  return x_QxN.reshape(num_problems, num_rows // group_size, group_size)


def _parents(source_QxgxG, alive_QxgxG):
  """[Q, N] int32 parents from each unfinished slot's parent within its group;
  finished slots keep their own row."""
  num_problems, num_groups, group_size = source_QxgxG.shape
  within = jnp.where(alive_QxgxG, source_QxgxG, jnp.arange(group_size))
  group_start = (jnp.arange(num_groups) * group_size)[None, :, None]
  return (within + group_start).reshape(num_problems, -1).astype(jnp.int32)


def _best_first(value_QxgxG, candidate_QxgxG):
  """[Q, g, G] row indices within each group: candidates best first (stable, so ties
  keep row order), then the rest."""
  return jnp.argsort(jnp.where(candidate_QxgxG, -value_QxgxG, jnp.inf), axis=-1, stable=True)


def _slot_rank(alive_QxgxG):
  """j for the j-th unfinished slot of its group (0 for the finished slots before the first)."""
  return jnp.maximum(jnp.cumsum(alive_QxgxG, axis=-1) - 1, 0)


def prefix_class(tokens_QxNxW, length_QxN, alive_QxN):
  """[Q, N] int32: for each unfinished row, the lowest unfinished row of its problem
  with the same solution so far (same length, same tokens up to it: compared exactly,
  not by hash); N for finished rows. Two unfinished rows share a prefix iff they share
  a class.

  tokens_QxNxW: int32 solutions so far, anything after each row's length_QxN.
  Costs Q * N * N * W comparisons (N = 256, W = 176: 12M per problem), next to
  nothing beside a step of the policy.
  """
  num_rows, width = tokens_QxNxW.shape[1:]
  real_QxNxW = jnp.arange(width) < length_QxN[..., None]
  tokens_QxNxW = jnp.where(real_QxNxW, tokens_QxNxW, -1)  # what lies past a row's length
  same_QxNxN = (jnp.all(tokens_QxNxW[:, :, None, :] == tokens_QxNxW[:, None, :, :], axis=-1)
                & (length_QxN[:, :, None] == length_QxN[:, None, :])
                & alive_QxN[:, :, None] & alive_QxN[:, None, :])
  first_QxN = jnp.argmax(same_QxNxN, axis=-1)  # the first True: an unfinished row matches itself
  return jnp.where(alive_QxN, first_QxN, num_rows).astype(jnp.int32)


def first_copies(class_QxN, alive_QxN, group_size: int):
  """[Q, N] bool the candidate parents under deduplication: unfinished rows whose
  solution so far (`prefix_class`) no lower row of their group has. Every prefix in
  a group keeps exactly one candidate, its first copy."""
  earlier_GxG = jnp.tril(jnp.ones((group_size, group_size), bool), k=-1)  # [i, j]: j < i
  repeated = jnp.any(_same_prefix(class_QxN, group_size) & earlier_GxG, axis=-1)
  return alive_QxN & ~repeated.reshape(alive_QxN.shape)


def _same_prefix(class_QxN, group_size: int):
  """[Q, g, G, G] bool: rows i and j of a group hold the same solution so far."""
  group_class = _grouped(class_QxN, group_size)
  return group_class[..., :, None] == group_class[..., None, :]


def votes(value_QxN, class_QxN, alive_QxN, group_size: int):
  """[Q, N] float32: for each unfinished row, the sum of `value_QxN` over the unfinished
  rows of its group with the same solution so far (`prefix_class`); 0 for finished rows.

  Weighted best-of-N sums the scores of the solutions that share a final answer; this
  is the same sum for a solution so far, so a step that many rows sampled keeps the
  weight of all its copies instead of one PRM draw (`SearchConfig.vote`).
  """
  value = _grouped(jnp.where(alive_QxN, value_QxN, 0.0).astype(jnp.float32), group_size)
  summed = jnp.sum(jnp.where(_same_prefix(class_QxN, group_size), value[..., None, :], 0.0),
                   axis=-1)
  return jnp.where(alive_QxN, summed.reshape(alive_QxN.shape), 0.0)


def count_distinct(class_QxN, parent_QxN, alive_QxN):
  """[Q] int32 distinct solutions so far among the unfinished rows after selection
  (slot n then holds row parent_QxN[q, n]'s solution; finished rows not counted)."""
  num_rows = class_QxN.shape[1]
  held_QxN = jnp.take_along_axis(class_QxN, parent_QxN, axis=1)
  present_QxN = jnp.any((held_QxN[:, :, None] == jnp.arange(num_rows)) & alive_QxN[:, :, None],
                        axis=1)
  return jnp.sum(present_QxN, axis=-1).astype(jnp.int32)


def with_step_likelihood(value_B, logprobs_BxG, lengths_B, weight: float):
  """[B] float32 sigmoid(logit(clip(value)) + weight x mean log-probability per token of
  each row's latest step), its value where the row wrote nothing.

  Siblings differ in the one step they just wrote, and whether its arithmetic is
  right is what a small PRM misses most (issue 18: its within-sibling AUROC was
  0.49); the policy's own confidence in the step ranks siblings of the paper labels'
  held-out questions at 0.70 (0.84 where their labels differ by 0.8 or more), and the
  test split's correct/wrong siblings at 0.89 (`evaluate_verifiers`).
  logprobs_BxG: float32 per token, 0 on padding (`sampling.Samples`); lengths_B int32.
  """
  value = jnp.clip(value_B.astype(jnp.float32), _EPS, 1 - _EPS)
  mean_logprob = jnp.sum(logprobs_BxG, axis=-1) / jnp.maximum(lengths_B, 1)
  adjusted = jax.nn.sigmoid(jnp.log(value) - jnp.log1p(-value) + weight * mean_logprob)
  return jnp.where(lengths_B > 0, adjusted, value_B)


def select_parents(value_QxN, alive_QxN, *, group_size: int, expand: int, candidate_QxN=None):
  """[Q, N] int32 parent of each row under rule "top", an index within its problem's N rows.

  value_QxN: float how good each row's latest step is (PRM score, or lookahead value).
  alive_QxN: bool the row can still grow (not finished).
  candidate_QxN: bool the rows that may be parents (unfinished; `first_copies` with
    deduplication); None = every unfinished row.
  """
  num_rows = value_QxN.shape[1]
  if num_rows % group_size or not 1 <= expand <= group_size:
    raise ValueError(f"need group_size | N and 1 <= expand <= group_size; got N={num_rows}, "
                     f"group_size={group_size}, expand={expand}")
  if candidate_QxN is None:
    candidate_QxN = alive_QxN
  value, alive, candidate = (_grouped(x, group_size)
                             for x in (value_QxN, alive_QxN, candidate_QxN))
  ranked = _best_first(value, candidate)
  # Without deduplication there are A candidates and j // expand < A: the modulo is
  # then the identity, and the rule the plain top-N/M.
  num_candidates = jnp.maximum(jnp.sum(candidate, axis=-1, keepdims=True), 1)
  rank = (_slot_rank(alive) // expand) % num_candidates
  return _parents(jnp.take_along_axis(ranked, rank, axis=-1), alive)


def _weight_logits(value_QxN, candidate_QxN, group_size: int, temperature: float):
  """[Q, g, G] float32 logit(clip(value)) / temperature, masked off non-candidates."""
  value = jnp.clip(_grouped(value_QxN, group_size).astype(jnp.float32), _EPS, 1 - _EPS)
  logits = (jnp.log(value) - jnp.log1p(-value)) / temperature
  return jnp.where(_grouped(candidate_QxN, group_size), logits, _MASKED)


def resample_parents(key, value_QxN, alive_QxN, candidate_QxN, *, group_size: int,
                     temperature: float):
  """[Q, N] int32 parents under rule "particles": each unfinished slot's parent is an
  independent draw from its group's candidates with probability
  softmax(logit(value) / temperature); finished slots keep their row.

  key: the draws' key; the parents are a deterministic function of it and the inputs.
  value_QxN, alive_QxN, candidate_QxN: as in `select_parents` (candidates required).
  """
  logits_QxgxG = _weight_logits(value_QxN, candidate_QxN, group_size, temperature)
  num_problems, num_groups, _ = logits_QxgxG.shape
  # One draw per slot, finished slots included (their draws are dropped), so a
  # slot's draw does not depend on which other slots finished.
  per_slot = jnp.broadcast_to(logits_QxgxG[:, :, None, :], (num_problems, num_groups,
                                                            group_size, group_size))
  drawn = samplers.categorical(key, per_slot.reshape(-1, group_size))
  return _parents(drawn.reshape(num_problems, num_groups, group_size),
                  _grouped(alive_QxN, group_size))


def rebase_counts(value_QxN, alive_QxN, candidate_QxN, *, group_size: int,
                  temperature: float):
  """[Q, N] int32 slots each row gets under rule "rebase": round(A * w) for its
  group's A unfinished slots and w = softmax(logit(value) / temperature) over the
  candidates, by largest remainder (the remainders' top A - sum(floor) get one more;
  ties to the lower row), so each group's counts sum to A. 0 for non-candidates."""
  candidate = _grouped(candidate_QxN, group_size)
  weights = jax.nn.softmax(_weight_logits(value_QxN, candidate_QxN, group_size, temperature),
                           axis=-1)
  slots = jnp.sum(_grouped(alive_QxN, group_size), axis=-1, keepdims=True)
  quota = slots * weights
  base = jnp.floor(quota).astype(jnp.int32)
  # Each remainder lies in [0, 1) and the quotas sum to A within float rounding (far
  # below a slot), so 0 <= leftover <= candidates: the counts sum to A exactly.
  remainder = jnp.where(candidate, quota - base, -1.0)
  leftover = slots - jnp.sum(base, axis=-1, keepdims=True)
  place = jnp.argsort(jnp.argsort(-remainder, axis=-1, stable=True), axis=-1)
  counts = jnp.where(candidate, base + (place < leftover), 0)
  return counts.reshape(value_QxN.shape).astype(jnp.int32)


def rebase_parents(value_QxN, alive_QxN, candidate_QxN, *, group_size: int,
                   temperature: float):
  """[Q, N] int32 parents under rule "rebase": `rebase_counts` copies of each candidate,
  best candidate first, a parent's copies contiguous; finished slots keep their row."""
  counts = _grouped(rebase_counts(value_QxN, alive_QxN, candidate_QxN, group_size=group_size,
                                  temperature=temperature), group_size)
  value, alive, candidate = (_grouped(x, group_size)
                             for x in (value_QxN, alive_QxN, candidate_QxN))
  ranked = _best_first(value, candidate)
  ends = jnp.cumsum(jnp.take_along_axis(counts, ranked, axis=-1), axis=-1)  # [Q, g, G]
  # Slot j takes the ranked candidate whose copies cover it: the first with end > j.
  rank = jnp.sum(ends[..., None, :] <= _slot_rank(alive)[..., :, None], axis=-1)
  rank = jnp.minimum(rank, group_size - 1)  # finished slots past the last copy
  return _parents(jnp.take_along_axis(ranked, rank, axis=-1), alive)


def choose_parents(rule: str, key, value_QxN, alive_QxN, candidate_QxN, *, group_size: int,
                   expand: int, temperature: float):
  """[Q, N] int32 parents by one of `RULES` (see the module docstring); `key` is used by
  "particles" only, `expand` by "top" only, `temperature` by the other two."""
  if rule == "top":
    return select_parents(value_QxN, alive_QxN, group_size=group_size, expand=expand,
                          candidate_QxN=candidate_QxN)
  if rule == "particles":
    return resample_parents(key, value_QxN, alive_QxN, candidate_QxN, group_size=group_size,
                            temperature=temperature)
  if rule == "rebase":
    return rebase_parents(value_QxN, alive_QxN, candidate_QxN, group_size=group_size,
                          temperature=temperature)
  raise ValueError(f"unknown selection rule {rule!r}; use one of {RULES}")
