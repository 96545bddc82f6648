"""The paper's search methods as `SearchConfig`s for a generation budget.

A method is named in gin (`search_sweep.methods`) by a string:

  greedy             one solution at temperature 0 (the policy's mode), at any budget
                     (it records 1 generation): the reference that a search steered
                     by the policy's likelihood tends to, and sampling must beat.
  best_of_n          N = budget independent solutions, weighted best-of-N.
  beam_m{M}          beam search, N = budget beams, keep N/M, expand each M ways.
  beam_sqrt          beam search with M = sqrt(N) (the largest divisor of N <= sqrt(N)).
  lookahead_k{k}     beam search (M = 4) valuing each step by a k-step greedy rollout;
                     the budget counts N * (k + 1) generations, so N = budget // (k + 1).
  lookahead_k{k}_m{M}  the same with another beam width.
  dvts_m{M}          diverse verifier tree search: N / M independent subtrees of width M.
  particles          particle filtering (Puri et al. 2025): N = budget rows, each round
                     every unfinished row's parent is drawn from all N by PRM weight
                     softmax(logit(score) / t), t = 1.
  particles_t{t}     the same at temperature t (a float: particles_t0.5).
  rebase             REBASE (Wu et al. 2024): N = budget rows, each parent forked
                     round(A * weight) times (largest remainder), t = 1.
  rebase_t{t}        the same at temperature t.

Any step-by-step method may end in `_dedup` (beam_m4_dedup, particles_t0.5_dedup):
only the first copy of each distinct solution so far is a parent
(`SearchConfig.dedup`); best-of-N and greedy select nothing, so best_of_n_dedup and
greedy_dedup are refused.
Beam, lookahead and DVTS may end in `_vote` instead (beam_m4_vote): deduplicated,
and each parent valued by the summed scores of its copies (`SearchConfig.vote`,
weighted best-of-N's rule applied to every step).
Before those endings, any step-by-step method may take `_lik{w}` (beam_m4_lik8,
dvts_m4_lik8_vote): selection values each new step by logit(PRM score) plus w times
the policy's mean log-probability per token of that step
(`SearchConfig.likelihood_weight`, `selection.with_step_likelihood`).
Particles and REBASE run no rollouts: they use N generations.

M is capped at N (a budget of 2 cannot expand 4 ways).
"""

import math
import re

from ttc.search.tree_search import PAPER_MAX_ROUNDS, SearchConfig
from ttc.verifiers import scoring

DEFAULT_LOOKAHEAD_WIDTH = 4
_TEMPERATURE = r"(?:_t(\d+(?:\.\d*)?|\.\d+))?"
_PATTERNS = (
    ("greedy", re.compile(r"greedy")),
    ("best_of_n", re.compile(r"best_of_n")),
    ("beam", re.compile(r"beam_m(\d+)")),
    ("beam_sqrt", re.compile(r"beam_sqrt")),
    ("lookahead", re.compile(r"lookahead_k(\d+)(?:_m(\d+))?")),
    ("dvts", re.compile(r"dvts_m(\d+)")),
    ("particles", re.compile(r"particles" + _TEMPERATURE)),
    ("rebase", re.compile(r"rebase" + _TEMPERATURE)),
)
_SUFFIXES = ("_dedup", "_vote")
_LIKELIHOOD = re.compile(r"_lik(\d+(?:\.\d*)?|\.\d+)$")
_VOTERS = ("beam", "beam_sqrt", "lookahead", "dvts")  # rule "top"
_WHOLE = ("greedy", "best_of_n")  # one generation per solution, no selection rounds
_FORMS = ("greedy, best_of_n, beam_m<M>, beam_sqrt, lookahead_k<k>[_m<M>], dvts_m<M>, "
          "particles[_t<t>] or rebase[_t<t>], any step-by-step one optionally ending in "
          "_dedup, beam, lookahead and dvts in _vote, any step-by-step one with _lik<w> "
          "before those endings")


def sqrt_width(num_rows: int) -> int:
  """The largest divisor of N that is at most sqrt(N): M = sqrt(N) for square N."""
  return max(d for d in range(1, math.isqrt(num_rows) + 1) if num_rows % d == 0)


def parse(name: str) -> tuple[str, tuple[float, ...], str]:
  """(kind, numbers, suffix): ('beam', (4,), '') from 'beam_m4', ('particles', (0.5,),
  '_dedup') from 'particles_t0.5_dedup', ('dvts', (4,), '_lik8_vote') from
  'dvts_m4_lik8_vote'; ValueError naming the accepted forms otherwise."""
  suffix = next((end for end in _SUFFIXES if name.endswith(end)), "")
  base = name[:len(name) - len(suffix)]
  likelihood = _LIKELIHOOD.search(base)
  if likelihood:
    base, suffix = base[:likelihood.start()], likelihood.group(0) + suffix
  for kind, pattern in _PATTERNS:
    match = pattern.fullmatch(base)
    if match:
      if suffix and kind in _WHOLE:
        what = "best-of-N" if kind == "best_of_n" else "greedy decoding"
        raise ValueError(f"{name}: {what} has no selection rounds, so nothing to "
                         f"deduplicate, vote on or weigh by likelihood; use {kind}")
      if suffix.endswith("_vote") and kind not in _VOTERS:
        raise ValueError(f"{name}: {kind} already weighs every copy of a solution; "
                         f"_vote is for {', '.join(_VOTERS)}")
      numbers = tuple(float(g) if kind in ("particles", "rebase") else int(g)
                      for g in match.groups() if g is not None)
      return kind, numbers, suffix
  raise ValueError(f"unknown search method {name!r}; use {_FORMS}")


def likelihood_weight(suffix: str) -> float:
  """w of a `_lik{w}` in a method's suffix (`parse`), 0.0 without one."""
  match = re.match(r"_lik(\d+(?:\.\d*)?|\.\d+)", suffix)
  return float(match.group(1)) if match else 0.0


def sampling_temperature(name: str, temperature: float) -> float:
  """The temperature method `name` samples at: 0 for greedy, else `temperature` (the
  sweep's)."""
  return 0.0 if parse(name)[0] == "greedy" else temperature


def make_config(name: str, budget: int, *, max_solution_tokens: int, max_step_tokens: int,
                max_rounds: int = PAPER_MAX_ROUNDS, num_slots: int = 0,
                prm_slots: int = 0,
                prm_chunk: int = scoring.DEFAULT_CHUNK) -> SearchConfig:
  """The `SearchConfig` of method `name` at a budget of `budget` generations.

  num_slots: policy cache slots per row; 0 = `SearchConfig.policy_slots_needed`:
    the solution cap, plus in step-by-step search one step for the round's own
    step and one per rollout step (rows write in lockstep at a shared slot and are
    packed between rounds, `KVCache.take_rows`). Fewer are refused, since the
    shared slot would then cut one problem's rows because of another's.
  prm_slots: 0 = `SearchConfig.prm_slots_needed(prm_chunk)`: the same, with each
    step rounded up to whole `prm_chunk`s (the PRM scores in chunks).
  """
  kind, args, suffix = parse(name)
  if budget < 1:
    raise ValueError(f"budget must be >= 1, got {budget}")
  lookahead = 0
  rule, temperature = "top", 1.0
  if kind in ("particles", "rebase"):  # every parent drawn from all N rows
    rows, group, expand = budget, budget, 1
    rule, temperature = kind, args[0] if args else 1.0
    if not temperature > 0:
      raise ValueError(f"{name}: the temperature must be > 0")
  elif kind == "greedy":  # one row whatever the budget: temperature 0 makes copies equal
    rows, group, expand = 1, 1, 1
  elif kind == "best_of_n":
    rows, group, expand = budget, budget, 1
  elif kind == "beam":
    rows = budget
    group, expand = rows, min(args[0], rows)
  elif kind == "beam_sqrt":
    rows = budget
    group, expand = rows, sqrt_width(rows)
  elif kind == "lookahead":
    lookahead = args[0]
    rows = budget // (lookahead + 1)
    if rows < 1:
      raise ValueError(f"{name} needs a budget of at least {lookahead + 1} generations")
    group = rows
    expand = min(args[1] if len(args) > 1 else DEFAULT_LOOKAHEAD_WIDTH, rows)
  else:  # dvts
    width = min(args[0], budget)
    if budget % width:
      raise ValueError(f"{name}: budget {budget} is not a multiple of the width {width}")
    rows, group, expand = budget, width, width
  if expand < 1:
    raise ValueError(f"{name}: the beam width must be >= 1")
  whole = kind in _WHOLE
  config = SearchConfig(
      num_rows=rows, group_size=group, expand=expand, lookahead_steps=lookahead,
      step_by_step=not whole, max_step_tokens=max_solution_tokens if whole else max_step_tokens,
      max_solution_tokens=max_solution_tokens, max_rounds=max_rounds, num_slots=num_slots,
      prm_slots=prm_slots, prm_chunk=prm_chunk, selection=rule,
      selection_temperature=temperature, dedup=suffix.endswith("_dedup"),
      vote=suffix.endswith("_vote"), likelihood_weight=likelihood_weight(suffix))
  return config
