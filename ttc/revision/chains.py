"""Revision chains at test time (paper §6.2): each chain revises its own earlier attempts.

Chain c of problem q writes attempt l after seeing the question and its own last
`context.MAX_CONTEXT_ATTEMPTS` (4) attempts, the most the revision model was
fine-tuned on, whatever the chain's length: attempt l continues

    codec.encode_prompt(context.revision_prompt(task, problem, attempts[:l]), task.chat)

Attempt 0 is plain sampling of the question. An attempt that ran out of tokens
(unfinished) still enters the later context as the text it wrote: it is one of the
chain's attempts, and dropping it would show the model another chain than the one
it wrote (the model was trained to revise wrong attempts, and a cut-off one is wrong).

The host loops over positions; each position samples every chain of every problem
in batched calls of `sampling.sample_with_suffixes`: the chains of one problem share
the longest common prefix of their prompt ids (the question, and more where their
contexts agree), prefilled once per problem and position and read by every chain,
never copied; each chain feeds only the rest of its prompt. Shapes are bucketed to
powers of two, so a run compiles one program per batch shape, as the searches do.
"""

import dataclasses
from collections.abc import Sequence
from typing import Optional

import jax
import numpy as np
import tqdm

from ttc.data import task as task_lib
from ttc.decoding import generation, samplers, sampling
from ttc.errors import UserError
from ttc.revision import context


@dataclasses.dataclass(frozen=True)
class Attempt:
  """One attempt of a chain.

  text: the generated text, without its stop token.
  finished: it stopped at EOS or the chat's end of turn (False: it ran out of
    `max_new_tokens`).
  answer: the task's extracted answer of a finished attempt; None if unfinished or
    it wrote none.
  num_tokens: tokens generated, the stop token included.
  """

  text: str
  finished: bool
  answer: Optional[str]
  num_tokens: int


@dataclasses.dataclass
class Chains:
  """attempts[q][c][l]: attempt l (0 = first) of chain c of problems[q]."""

  problems: list[task_lib.Problem]
  attempts: list[list[list[Attempt]]]

  @property
  def num_tokens(self) -> int:
    """Tokens generated over all attempts, stop tokens included."""
    return sum(a.num_tokens for per_problem in self.attempts for chain in per_problem
               for a in chain)

  def texts(self, q: int, c: int) -> list[str]:
    """The attempt texts of chain c of problem q, oldest first."""
    return [a.text for a in self.attempts[q][c]]


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
  """The longest common prefix of `prompts` (token ids), capped so each keeps >= 1 token
  of its own (`sampling.sample_n_with_suffix` starts a row from its last suffix token)."""
  shortest = min(len(p) for p in prompts)
  if shortest < 1:
    raise ValueError("every prompt needs >= 1 token")
  length = 0
  while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
    length += 1
  return length


def _check_counts(**counts: int) -> None:
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise UserError(f"revise: {name}={value!r} must be an integer >= 1")


def next_attempts(policy, task: task_lib.Task, problems: Sequence[task_lib.Problem],
                  histories: Sequence[Sequence[Sequence[str]]], *, rng,
                  sampler: samplers.Sampler, max_new_tokens: int,
                  rows_per_call: int) -> list[list[Attempt]]:
  """One more attempt of every chain: out[q][c] continues histories[q][c].

  policy: a `ttc.workdir.Policy`. histories[q][c]: chain c of problems[q]'s earlier
  attempt texts, oldest first, all of them (the last 4 go into context).

  Chains are batched as groups of N = min(most chains of a problem, rows_per_call)
  rows that share one prefix (a problem's chains, split into groups of N; a short
  last group is padded with rows that generate nothing), max(1, rows_per_call // N)
  groups per call. Call i draws from fold_in(rng, i), so the result depends only on
  the problems, the histories, the settings, the rng and `rows_per_call`.
  """
  _check_counts(max_new_tokens=max_new_tokens, rows_per_call=rows_per_call)
  if len(histories) != len(problems):
    raise ValueError(f"{len(histories)} histories for {len(problems)} problems")
  codec = policy.codec
  prompts = [[codec.encode_prompt(context.revision_prompt(task, problem, chain), task.chat)
              for chain in per_problem] for problem, per_problem in zip(problems, histories)]
  group_size = max(1, min(max(map(len, prompts), default=1), rows_per_call))
  groups = [(q, list(range(start, min(start + group_size, len(chains)))))
            for q, chains in enumerate(prompts) for start in range(0, len(chains), group_size)]
  groups_per_call = max(1, rows_per_call // group_size)
  out = [[None] * len(chains) for chains in prompts]
  for call, start in enumerate(range(0, len(groups), groups_per_call)):
    call_groups = groups[start:start + groups_per_call]
    prefixes, suffixes = [], []
    for q, chains in call_groups:
      ids = [prompts[q][c] for c in chains]
      shared = shared_prefix_length(ids)
      prefixes.append(ids[0][:shared])
      suffixes += [p[shared:] for p in ids] + [None] * (group_size - len(chains))
    samples = sampling.sample_with_suffixes(
        policy.model, policy.params, prefixes, suffixes, jax.random.fold_in(rng, call), sampler,
        num_samples=group_size, max_new_tokens=max_new_tokens, eos_id=codec.eos_id,
        stop_ids=codec.stop_ids(task.chat))
    texts, finished, lengths = generation.decode_rows(codec, samples)
    for g, (q, chains) in enumerate(call_groups):
      for i, c in enumerate(chains):
        row = g * group_size + i
        out[q][c] = Attempt(text=texts[row], finished=finished[row], num_tokens=lengths[row],
                            answer=task.extract_answer(texts[row]) if finished[row] else None)
  return out


def revise(policy, task: task_lib.Task, problems: Sequence[task_lib.Problem], *,
           num_chains: int, chain_length: int, rng, sampler: samplers.Sampler,
           max_new_tokens: int, rows_per_call: int, progress: str = "",
           first: Optional[Sequence[Sequence[Attempt]]] = None) -> Chains:
  """`num_chains` revision chains of `chain_length` attempts for each problem.

  policy: a `ttc.workdir.Policy` (the revision model). max_new_tokens: per attempt.
  rows_per_call: about how many chains one sampling call decodes (see
  `next_attempts`). Position l draws from fold_in(rng, l) (its call i from
  fold_in(fold_in(rng, l), i)), so the result depends only on the problems, the
  settings, the rng and `rows_per_call`. progress: a tqdm label, or "" for no bar.
  first: first[q][c], an attempt written elsewhere (e.g. by a PRM-guided search) that
    opens chain c of problem q; the chain then holds it and `chain_length` revisions
    of it. None = every chain starts from plain sampling.
  """
  _check_counts(num_chains=num_chains, chain_length=chain_length,
                max_new_tokens=max_new_tokens, rows_per_call=rows_per_call)
  problems = list(problems)
  if first is None:
    attempts = [[[] for _ in range(num_chains)] for _ in problems]
  else:
    if len(first) != len(problems) or any(len(f) != num_chains for f in first):
      raise ValueError(f"first attempts must be [problems={len(problems)}][chains="
                       f"{num_chains}]")
    attempts = [[[attempt] for attempt in per_problem] for per_problem in first]
  for position in tqdm.trange(chain_length, desc=progress, disable=not progress or None):
    histories = [[[a.text for a in chain] for chain in per_problem] for per_problem in attempts]
    new = next_attempts(policy, task, problems, histories,
                        rng=jax.random.fold_in(rng, position), sampler=sampler,
                        max_new_tokens=max_new_tokens, rows_per_call=rows_per_call)
    for per_problem, new_per_problem in zip(attempts, new):
      for chain, attempt in zip(per_problem, new_per_problem):
        chain.append(attempt)
  return Chains(problems=problems, attempts=attempts)
