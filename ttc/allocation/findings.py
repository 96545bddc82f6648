"""The paper's findings as verdicts on this run's files (the `report` stage's section 1).

Each finding is a pure function of the files' records returning `Finding`s: what the
paper claims, what was measured with a 95% interval, and "yes" when the interval
lies wholly on the claim's side of its threshold (0 for a difference, 1x for an
efficiency ratio), "no" when wholly on the other side, "inconclusive" when it
straddles it. Where the inputs are per problem the interval is a paired percentile
bootstrap over problems (`paired_difference`); where a file keeps only each curve's
own interval (verifiers_test.json) a difference's bounds combine the two curves' in
quadrature (`unpaired_difference`), conservative when the curves are positively
correlated (same questions, same samples).
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from ttc import stats
from ttc.allocation import efficiency
from ttc.revision import report as revision_report
from ttc.search import methods as methods_lib, results

YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"
NOT_RUN, NOT_MEASURED = "not run", "n/a"
PAPER_EFFICIENCY = 4.0  # the paper's headline: compute-optimal ~4x cheaper than best-of-N
PAPER_N = 64  # F7's number of samples
BASELINE = "best_of_n"


@dataclasses.dataclass(frozen=True)
class Finding:
  """One line of the summary: a claim of the paper and what this run says about it.

  key: "F1", "F1 hard bins", "F6 search/oracle", ...; claim: the paper's, in a few
  words; measured: the number and its 95% interval (or why there is none) and what was
  compared; verdict: YES / NO / INCONCLUSIVE, NOT_RUN (an input is missing),
  NOT_MEASURED (the input lacks what the claim needs); source: the file read (and,
  if missing, the stage that writes it); interval: (value, low, high) or None.
  """
  key: str
  claim: str
  verdict: str
  measured: str
  source: str
  interval: Optional[tuple] = None


def verdict(low: float, high: float, threshold: float = 0.0, above: bool = True) -> str:
  """YES when [low, high] lies wholly on the claim's side of `threshold` (above it, or
  below it with above=False), NO when wholly on the other side, INCONCLUSIVE when it
  straddles or touches it; NOT_MEASURED for a NaN bound."""
  if not (math.isfinite(low) and math.isfinite(high)):
    return NOT_MEASURED
  if low > threshold:
    return YES if above else NO
  if high < threshold:
    return NO if above else YES
  return INCONCLUSIVE


def _diff(interval) -> str:
  return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*interval)


def _finding(key, claim, interval, what, source, threshold=0.0, above=True) -> Finding:
  """A difference's finding; NOT_MEASURED when `interval` is None (no shared problems)."""
  if interval is None:
    return Finding(key, claim, NOT_MEASURED, f"no problem both ran {what}", source)
  return Finding(key, claim, verdict(interval[1], interval[2], threshold, above),
                 f"{_diff(interval)} {what}", source, tuple(interval))


# ----------------------------------------------------------------------------- paired differences


def paired_difference(records, method: str, baseline: str, budgets: Sequence[int],
                      uids=None) -> tuple[Optional[tuple], int]:
  """((mean, low, high), problems) of `method`'s accuracy minus `baseline`'s.

  Per problem: the seed-averaged correctness difference at each of `budgets` (in
  generations), averaged over them; then a 95% bootstrap over problems (paired: both
  sides resample the same problems). Only problems both ran at every budget count
  (and only `uids`, if given). (None, 0) when there is none.
  """
  cells, _ = results.per_problem(records)
  shared = set.intersection(*(set(cells.get((m, b), {})) for m in (method, baseline)
                              for b in budgets)) if budgets else set()
  if uids is not None:
    shared &= set(uids)
  if not shared:
    return None, 0
  diffs = [np.mean([np.mean(cells[method, b][u]) - np.mean(cells[baseline, b][u])
                    for b in budgets]) for u in sorted(shared)]
  return stats.bootstrap_interval(diffs), len(shared)


def _budgets(records, method: str) -> set:
  return {r["budget"] for r in records if r["method"] == method}


def step_method(names) -> Optional[str]:
  """The step-level search F1 / F2 compare with best-of-N: beam_m4 (the paper's), else
  the first other beam search by name, else the first other step-level method.
  Chosen by name, never by accuracy, so the choice does not favour the claim."""
  names = set(names)
  if "beam_m4" in names:
    return "beam_m4"
  kinds = {}
  for name in names:
    try:
      kinds[name] = methods_lib.parse(name)
    except ValueError:  # a name of another writer (or a test); not a search method
      continue
  beams = sorted(n for n, (kind, _, _) in kinds.items() if kind in ("beam", "beam_sqrt"))
  others = sorted(n for n, (kind, _, _) in kinds.items()
                  if kind in ("dvts", "particles", "rebase"))
  return (beams or others or [None])[0]


# ----------------------------------------------------------------------------- the findings

CLAIMS = {
    "F1": "PRM beam search beats best-of-N weighted at the smallest budget",
    "F1 hard bins": "... also on the two hardest difficulty bins",
    "F2": "best-of-N catches up with beam search at the largest budget",
    "F3": "lookahead search does worse than beam search at equal generation budget",
    "F4": "sequential revisions beat parallel sampling at equal budget (the largest)",
    "F5": "compute-optimal beats best-of-N at equal budget",
    "F6": f"compute-optimal needs ~{PAPER_EFFICIENCY:.0f}x less compute than best-of-N",
    "F7": f"PRM-weighted beats ORM-weighted best-of-N at N = {PAPER_N}",
    "F8 easy": "FLOPs-matched: test-time compute beats a larger model on easy bins at small R",
    "F8 hard": "FLOPs-matched: the larger model wins on the hardest bin at large R",
}


def absent(key: str, source: str) -> Finding:
  """The line of a finding whose input is missing; `source` says which stage writes it."""
  return Finding(key, CLAIMS[key], NOT_RUN, "-", source)


def beam_vs_best_of_n(records, source: str, bins: Optional[dict] = None) -> list[Finding]:
  """F1 (overall, and on the two hardest of `bins` {uid: oracle bin} when given) and F2
  from search results: the step-level method minus best-of-N at the smallest and the
  largest budget both ran, paired per problem."""
  method = step_method({r["method"] for r in records})
  shared = sorted(_budgets(records, method) & _budgets(records, BASELINE)) if method else []
  if not shared:
    why = f"{source} has no best_of_n and beam (or other step-level) method at one budget"
    return [Finding(k, CLAIMS[k], NOT_MEASURED, why, source) for k in ("F1", "F2")]
  out = []
  groups = [("F1", None, "")]
  if bins:
    hardest = max(bins.values())
    hard = {u for u, b in bins.items() if b >= hardest - 1}
    groups.append(("F1 hard bins", hard, f", bins {hardest - 1}-{hardest}"))
  for key, uids, where in groups:
    interval, n = paired_difference(records, method, BASELINE, shared[:1], uids)
    out.append(_finding(key, CLAIMS[key], interval,
                        f"({method} - best_of_n at N={shared[0]}, {n} problems{where})",
                        source))
  interval, n = paired_difference(records, BASELINE, method, shared[-1:])
  out.append(_finding("F2", CLAIMS["F2"], interval,
                      f"(best_of_n - {method} at N={shared[-1]}, {n} problems)", source))
  return out


def lookahead_vs_beam(records, source: str) -> list[Finding]:
  """F3 per lookahead method: lookahead_k{k}[_m{M}] minus beam_m{M} (M = 4 by default),
  per problem averaged over the budgets both ran (equal generations, rollouts counted)."""
  out = []
  names = sorted({r["method"] for r in records})
  for name in names:
    try:
      kind, numbers, suffix = methods_lib.parse(name)
    except ValueError:
      continue
    if kind != "lookahead":
      continue
    width = numbers[1] if len(numbers) > 1 else methods_lib.DEFAULT_LOOKAHEAD_WIDTH
    beam = f"beam_m{width}{suffix}"
    shared = sorted(_budgets(records, name) & _budgets(records, beam))
    interval, n = paired_difference(records, name, beam, shared)
    out.append(_finding(f"F3 {name}", CLAIMS["F3"], interval,
                        f"({name} - {beam}, N in {shared}, {n} problems)", source,
                        above=False))
  return out or [Finding("F3", CLAIMS["F3"], NOT_MEASURED, f"{source} has no lookahead_k* "
                         "method", source)]


def sequential_vs_parallel(records, source: str) -> Finding:
  """F4: sequential (C = 1, L = N) minus parallel (C = N, L = 1) revisions at the largest
  budget N > 1 that has both, with the hierarchical rule when the sweep ran it."""
  rules = revision_report.rules_of(records)
  if not rules:
    return Finding("F4", CLAIMS["F4"], NOT_MEASURED, f"{source} has no revise_* lines", source)
  rule = "hier" if "hier" in rules else rules[0]
  by_split = {(r["rows"], r["rounds"]): r["method"] for r in records if r["rule"] == rule}
  budgets = [n for n in sorted({r["budget"] for r in records})
             if n > 1 and (1, n) in by_split and (n, 1) in by_split]
  if not budgets:
    return Finding("F4", CLAIMS["F4"], NOT_MEASURED, "no budget N > 1 with both C=1 and "
                   "L=1", source)
  n = budgets[-1]
  sequential, parallel = by_split[1, n], by_split[n, 1]
  interval, problems = paired_difference(records, sequential, parallel, [n])
  return _finding("F4", CLAIMS["F4"], interval,
                  f"({sequential} - {parallel}, {revision_report.RULE_NAMES[rule]} "
                  f"selection, {problems} problems)", source)


def pool_kinds(allocation: dict):
  for pool, by_kind in allocation["pools"].items():
    for kind, curves in by_kind.items():
      yield pool, kind, curves


def unpaired_difference(a, a_low, a_high, b, b_low, b_high) -> tuple[float, float, float]:
  """(a - b, low, high) from two estimates' own 95% bounds, combined in quadrature: exact
  for independent estimates, wider than needed for positively correlated ones."""
  return (a - b, a - b - math.hypot(a - a_low, b_high - b),
          a - b + math.hypot(a_high - a, b - b_low))


def compute_optimal_vs_best_of_n(allocation: dict, source: str) -> list[Finding]:
  """F5 per pool and kind of bins: compute-optimal minus the baseline's accuracy,
  averaged over the budgets where both have a value, with the paired interval
  `compute_optimal` stores ("difference"). Files written before it was stored get
  `unpaired_difference` per budget, the average's bounds the average of the bounds
  (as if the budgets moved together: conservative)."""
  baseline = allocation.get("baseline", BASELINE)
  out = []
  for pool, kind, c in pool_kinds(allocation):
    if c.get("difference") and math.isfinite(c["difference"][0]):
      budgets = [b for b, v, w in zip(c["budgets"], c["accuracy"]["compute_optimal"],
                                      c["accuracy"][baseline])
                 if math.isfinite(v) and math.isfinite(w)]
      out.append(_finding(f"F5 {pool}/{kind}", CLAIMS["F5"], tuple(c["difference"]),
                          f"(compute-optimal - {baseline}, mean over N in {budgets}, "
                          f"{c['questions']} questions, paired)", source))
      continue
    keep = [i for i, v in enumerate(c["accuracy"]["compute_optimal"])
            if math.isfinite(v) and math.isfinite(c["accuracy"][baseline][i])]
    if not keep:
      out.append(Finding(f"F5 {pool}/{kind}", CLAIMS["F5"], NOT_MEASURED,
                         "no budget with both curves", source))
      continue
    per_budget = np.array([unpaired_difference(
        *(c[k]["compute_optimal"][i] for k in ("accuracy", "low", "high")),
        *(c[k][baseline][i] for k in ("accuracy", "low", "high"))) for i in keep])
    budgets = [c["budgets"][i] for i in keep]
    out.append(_finding(f"F5 {pool}/{kind}", CLAIMS["F5"], tuple(per_budget.mean(axis=0)),
                        f"(compute-optimal - {baseline}, mean over N in {budgets}, "
                        f"{c['questions']} questions, unpaired bounds)", source))
  return out


def efficiency_ratio(allocation: dict, source: str) -> list[Finding]:
  """F6 per pool and kind of bins: the geometric mean efficiency ratio B / b* with its
  bootstrap interval (selection redone per resample); reproduced when the interval
  lies above 1x. The measured text says whether the paper's ~4x is inside it."""
  out = []
  for pool, kind, c in pool_kinds(allocation):
    g, low, high = c["summary"]
    key = f"F6 {pool}/{kind}"
    if not math.isfinite(g):
      out.append(Finding(key, CLAIMS["F6"], NOT_MEASURED, "no ratio (no budget reached)",
                         source))
      continue
    bounds = sum(r["kind"] != efficiency.EXACT for r in c["ratios"])
    inside = "inside" if low <= PAPER_EFFICIENCY <= high else "outside"
    out.append(Finding(key, CLAIMS["F6"], verdict(low, high, 1.0),
                       f"{g:.2f}x [{low:.2f}, {high:.2f}] (geometric mean over "
                       f"{len(c['ratios'])} budgets, {bounds} of them bounds; the paper's "
                       f"{PAPER_EFFICIENCY:.0f}x is {inside})", source, (g, low, high)))
  return out


def prm_vs_orm(verifiers: dict, source: str, prm: str = "PRM-last weighted",
               orm: str = "ORM weighted") -> Finding:
  """F7: PRM-weighted minus ORM-weighted best-of-N accuracy at N = 64 (or the largest N
  both have): the paired interval `evaluate_verifiers` writes ("difference_to_orm"), or
  for files written before it, bounds from each one's own interval
  (`unpaired_difference`)."""
  table = verifiers.get("accuracy", {})
  shared = sorted(set(table.get(prm, {})) & set(table.get(orm, {})), key=int)
  if not shared:
    return Finding("F7", CLAIMS["F7"], NOT_MEASURED, f"{source} lacks {prm!r} or {orm!r}",
                   source)
  n = str(PAPER_N) if str(PAPER_N) in shared else shared[-1]
  paired = verifiers.get("difference_to_orm", {}).get(prm, {}).get(n)
  interval = paired or unpaired_difference(*table[prm][n], *table[orm][n])
  return _finding("F7", CLAIMS["F7"], interval,
                  f"({prm} - {orm} at N={n}, {verifiers.get('problems', '?')} problems, "
                  f"{'paired' if paired else 'unpaired bounds'})", source)


def _point(key, claim, value, lower_bound, above, what, source) -> Finding:
  """A finding with a point estimate only; `lower_bound`: the value is a lower bound on
  the truth (the small model's curve ended below X), so only one sign is decisive."""
  if not math.isfinite(value):
    return Finding(key, claim, NOT_MEASURED, f"no value ({what})", source)
  holds = value > 0 if above else value < 0
  v = YES if holds else NO
  if value == 0 or (lower_bound and value < 0):  # a tie, or the small model might still
    v = INCONCLUSIVE                             # overtake past its largest budget
  note = ", small model's value a lower bound" if lower_bound else ""
  return Finding(key, claim, v, f"{value:+.3f} ({what}; point estimate, no interval"
                 f"{note})", source, (value, math.nan, math.nan))


def flops_matched(allocation: dict, source: str) -> list[Finding]:
  """F8 per pool and kind: small-model test-time compute minus the larger model's
  pass@1 at equal FLOPs, on the two easiest bins at the smallest R (mean over them)
  and on the hardest bin at the largest R. allocation.json keeps no interval for
  these, so the verdict reads the sign of the point estimate."""
  matched = allocation.get("flops_matched")
  if not matched:
    return [Finding("F8", CLAIMS["F8 easy"], NOT_RUN, "-",
                    f"{source} (compute_optimal.large_policy and large_eval unset)")]
  bins = allocation["num_bins"]
  out = []
  for pool, by_kind in matched["pools"].items():
    for kind, rows in by_kind.items():
      low_r, high_r = min(r["R"] for r in rows), max(r["R"] for r in rows)
      easy = [r for r in rows if r["R"] == low_r and r["bin"] <= min(2, bins)]
      finite = [r for r in easy if math.isfinite(r["small_minus_large"])]
      value = (float(np.mean([r["small_minus_large"] for r in finite]))
               if len(finite) == len(easy) else math.nan)
      out.append(_point(f"F8 easy {pool}/{kind}", CLAIMS["F8 easy"], value,
                        any(r["small_kind"] == ">" for r in easy), True,
                        f"bins 1-{min(2, bins)} at R={low_r}, X={easy[0]['X']:.1f}, "
                        f"M={matched['m']:.1f}", source))
      hard = next(r for r in rows if r["R"] == high_r and r["bin"] == bins)
      out.append(_point(f"F8 hard {pool}/{kind}", CLAIMS["F8 hard"], hard["small_minus_large"],
                        hard["small_kind"] == ">", False,
                        f"bin {bins} at R={high_r}, X={hard['X']:.1f}", source))
  return out
