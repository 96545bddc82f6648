"""Stage `report`: the study's findings, figures, tables and costs in one `report.md`.

    report(workdir)   # after any subset of the other stages

Reads only files other stages wrote; it trains and samples nothing:

  search_file           search_sweep         one line per (problem, method, budget, seed)
  revisions_file        revision_sweep       the same schema, methods revise_c{C}_l{L}_{rule}
  revision_chains_file  revision_sweep       revisions by position in the chain
  allocation_file       compute_optimal      compute-optimal curves, ratios, FLOPs matching
  difficulty_file       estimate_difficulty  oracle bins (1 = easiest) for the per-bin views
  verifiers_file        evaluate_verifiers   PRM vs ORM weighted best-of-N at N samples

A missing (or unreadable) file leaves the sections that need it saying "not run" and
which stage writes it, so a partial study still reports what it has.

report.md holds, in order:

  1. Findings: one line per finding of the paper (F1 ... F8, `Finding`), what this
     run measured with a 95% interval, and whether it reproduced it: "yes" when the
     interval lies wholly on the claim's side of its threshold (0 for a difference,
     1x for an efficiency ratio), "no" when wholly on the other side, "inconclusive"
     when it straddles it. Where the inputs are per problem the interval is a paired
     percentile bootstrap over problems (`paired_difference`); where a file keeps only
     each curve's own interval (allocation.json's accuracies, verifiers_test.json) a
     difference's bounds combine the two curves' in quadrature, which is conservative
     when the curves are positively correlated (same questions, same samples).
  2. Figures (PNGs beside report.md, `<stem>_*.png`): accuracy vs budget per method,
     per oracle difficulty bin, sequential vs parallel revisions and their
     sequential:parallel ratios, compute-optimal vs its baselines.
  3. Tables: accuracies, efficiency ratios per budget, the FLOPs-matched table and the
     configurations compute-optimal chose per bin and budget.
  4. Costs per method and budget: generations, generated and verifier tokens per
     problem and inference FLOPs 2·P·tokens (`ttc.allocation.flops`).
"""

import collections
import dataclasses
import json
import math
import os
from typing import Optional, Sequence

import gin
import numpy as np

from ttc import resumable, stats, workdir as workdir_lib
from ttc.allocation import compute_optimal, difficulty, efficiency, flops
from ttc.errors import UserError
from ttc.revision import report as revision_report, verifier as verifier_lib
from ttc.search import methods as methods_lib, report as search_report, results

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


def _absent(key: str, source: str) -> Finding:
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
      kind, numbers, dedup = methods_lib.parse(name)
    except ValueError:
      continue
    if kind != "lookahead":
      continue
    width = numbers[1] if len(numbers) > 1 else methods_lib.DEFAULT_LOOKAHEAD_WIDTH
    beam = f"beam_m{width}" + ("_dedup" if dedup else "")
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


def _pool_kinds(allocation: dict):
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
  for pool, kind, c in _pool_kinds(allocation):
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
  for pool, kind, c in _pool_kinds(allocation):
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
  both have), bounds from each one's own interval (`unpaired_difference`: the file keeps
  no per-question values)."""
  table = verifiers.get("accuracy", {})
  shared = sorted(set(table.get(prm, {})) & set(table.get(orm, {})), key=int)
  if not shared:
    return Finding("F7", CLAIMS["F7"], NOT_MEASURED, f"{source} lacks {prm!r} or {orm!r}",
                   source)
  n = str(PAPER_N) if str(PAPER_N) in shared else shared[-1]
  interval = unpaired_difference(*table[prm][n], *table[orm][n])
  return _finding("F7", CLAIMS["F7"], interval,
                  f"({prm} - {orm} at N={n}, {verifiers.get('problems', '?')} problems, "
                  "unpaired bounds)", source)


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


# ----------------------------------------------------------------------------- costs


def _verifier_params(config) -> int:
  """Matmul parameters of a reward model: the backbone, with a [D, 1] value head in
  place of the vocabulary projection `num_matmul_params` counts."""
  return config.num_matmul_params() - config.embed_dim * config.vocab_size + config.embed_dim


def _params_of(workdir: str, name: str, verifier: bool) -> tuple[Optional[int], str]:
  """(matmul parameters, where they came from) of a checkpoint a sweep named: "" = the
  work dir's policy, else a directory under the work dir or a path; (None, why) if it
  cannot be read here."""
  directory = os.path.join(workdir, name) if name else workdir
  try:
    if os.path.exists(os.path.join(directory, workdir_lib.MODEL_CONFIG)):
      config = workdir_lib.load_model_config(directory)
    elif name and not verifier:
      source = directory if os.path.exists(directory) else name
      config = workdir_lib.open_checkpoint(source).config
    else:
      return None, f"{directory}/{workdir_lib.MODEL_CONFIG} not found"
  except (UserError, OSError, ValueError, KeyError, TypeError) as e:
    return None, f"{name or workdir}: {e}"
  return (_verifier_params(config) if verifier else config.num_matmul_params()), directory


def cost_rows(records, policy_params: Optional[int], verifier_params: Optional[int]
              ) -> list[dict]:
  """Per (method, budget), means over a file's lines (problem x seed): "generations",
  "tokens" (policy tokens generated per problem), "verifier_tokens" (tokens the
  PRM / ORM read per problem) and "flops" = 2·P·tokens + 2·P_verifier·verifier_tokens
  per problem (None where a P needed is unknown). The sweeps count generated tokens
  only: the prompt's prefill is paid once per problem whatever the method (its KV
  cache is shared by all N rows), so it is left out of every row alike."""
  sums = collections.defaultdict(lambda: np.zeros(4))
  for r in records:
    sums[r["method"], r["budget"]] += (r["generations"], r["tokens_generated"],
                                       r["prm_tokens"], 1)
  rows = []
  for (method, budget), (gens, tokens, vtokens, n) in sorted(sums.items()):
    tokens, vtokens = tokens / n, vtokens / n
    known = policy_params is not None and (verifier_params is not None or vtokens == 0)
    rows.append({"method": method, "budget": budget, "generations": gens / n,
                 "tokens": tokens, "verifier_tokens": vtokens,
                 "flops": (flops.inference_flops(policy_params, tokens)
                           + flops.inference_flops(verifier_params or 0, vtokens))
                 if known else None})
  return rows


# ----------------------------------------------------------------------------- figures


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_bins(records, bins: dict, path: str, title: str = "") -> None:
  """Accuracy vs budget per method, one panel per oracle difficulty bin (1 = easiest),
  95% bands, as a PNG. bins: {uid: bin}; problems without a bin are left out."""
  plt = _plt()
  # The results helpers group by a record's "level": give them the bin in its place.
  binned = [{**r, "level": bins[r["uid"]]} for r in records if r["uid"] in bins]
  panels = sorted({r["level"] for r in binned})
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharey=True,
                           squeeze=False)
  for ax, b in zip(axes[0], panels):
    for method, row in results.accuracy_table(binned, b).items():
      budgets = list(row)
      mean, low, high = (np.array([row[n][i] for n in budgets]) for i in range(3))
      line, = ax.plot(budgets, mean, marker="o", markersize=3, label=method)
      ax.fill_between(budgets, low, high, alpha=0.15, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_title(f"bin {b}" + (" (easiest)" if b == 1 else " (hardest)" if b == panels[-1]
                               else ""))
    ax.set_xlabel("generation budget")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the panels
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_allocation(allocation: dict, path: str) -> None:
  """A panel per pool: the baseline and majority once, and per kind of bins
  compute-optimal (solid), global budget and on-line allocation (dashed), accuracy vs
  budget with 95% bands, as a PNG."""
  plt = _plt()
  pools = allocation["pools"]
  baseline = allocation.get("baseline", BASELINE)
  fig, axes = plt.subplots(1, len(pools), figsize=(4.4 * len(pools), 3.8), squeeze=False,
                           sharey=True)
  for ax, (pool, by_kind) in zip(axes[0], pools.items()):
    first = next(iter(by_kind.values()))
    lines = [(baseline, first, baseline, "-"), (results.MAJORITY, first, results.MAJORITY, "-")]
    for kind, c in by_kind.items():
      lines += [(f"{curve} ({kind})", c, curve, "-" if curve == "compute_optimal" else "--")
                for curve in c["accuracy"] if curve not in (baseline, results.MAJORITY)]
    for label, c, key, style in lines:
      mean = np.asarray(c["accuracy"][key], np.float64)
      if np.all(np.isnan(mean)):
        continue
      line, = ax.plot(c["budgets"], mean, marker="o", markersize=3, linestyle=style,
                      label=label)
      ax.fill_between(c["budgets"], np.asarray(c["low"][key], np.float64),
                      np.asarray(c["high"][key], np.float64), alpha=0.12,
                      color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_title(pool)
    ax.set_xlabel("generation budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("accuracy")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------- markdown


def _md_table(header: Sequence[str], rows) -> str:
  # A cell's own "|" would split it into two columns.
  clean = lambda x: str(x).replace("|", "/")
  return "\n".join(["| " + " | ".join(map(clean, header)) + " |",
                    "|" + "---|" * len(header)]
                   + ["| " + " | ".join(map(clean, row)) + " |" for row in rows])


def format_findings(findings: Sequence[Finding]) -> str:
  """The summary table, markdown."""
  return _md_table(("#", "finding (paper)", "measured here (95% interval)", "reproduced?",
                    "source"),
                   [(f.key, f.claim, f.measured, f.verdict, f.source) for f in findings])


def _code(text: str) -> str:
  return f"```text\n{text}\n```"


def _allocation_tables(allocation: dict) -> list[str]:
  baseline = allocation.get("baseline", BASELINE)
  out = ["### Compute-optimal vs baselines (accuracy, 95% bootstrap over questions, "
         "selection redone)", ""]
  for pool, kind, c in _pool_kinds(allocation):
    rows = [(curve, *(stats.format_interval(m, lo, hi) if math.isfinite(m) else "-"
                      for m, lo, hi in zip(mean, c["low"][curve], c["high"][curve])))
            for curve, mean in c["accuracy"].items()]
    out += [f"{pool}, {kind} bins, {c['questions']} questions:", "",
            _md_table(("curve", *(f"N={b}" for b in c["budgets"])), rows), ""]
  out += [f"### Efficiency ratios B / b* against {baseline} (95% bootstrap)", ""]
  rows = []
  for pool, kind, c in _pool_kinds(allocation):
    cells = {r["budget"]: f"{efficiency.format_ratio(efficiency.Ratio(**r))} "
             "[{:.2f}, {:.2f}]".format(*c["ratio_interval"][str(r["budget"])])
             if str(r["budget"]) in c["ratio_interval"] else
             efficiency.format_ratio(efficiency.Ratio(**r)) for r in c["ratios"]}
    g, lo, hi = c["summary"]
    rows.append((pool, kind, "; ".join(f"N={b}: {v}" for b, v in cells.items()) or "-",
                 f"{g:.2f}x [{lo:.2f}, {hi:.2f}]"))
  out += [_md_table(("pool", "bins", "per budget (>= reached at the smallest budget, "
                     "<= never reached)", "geometric mean"), rows), ""]
  matched = allocation.get("flops_matched")
  out += ["### FLOPs-matched (small model's compute-optimal vs a larger model's pass@1)", ""]
  if matched:
    out.append(_code("\n".join(compute_optimal.format_matched(f"{pool}, {kind} bins", rows,
                                                             matched["m"])
                               for pool, by_kind in matched["pools"].items()
                               for kind, rows in by_kind.items())))
  else:
    out.append("not run: set compute_optimal.large_policy and large_eval")
  out += ["", "### Compute-optimal choices (method@budget per bin; the two halves of the "
          "2-fold selection as 'half 0 / half 1' where they differ)", ""]
  for pool, kind, c in _pool_kinds(allocation):
    rows = []
    for b, halves in zip(c["budgets"], c["choices"]):
      rows.append((f"N={b}", *(a if a == h else f"{a} / {h}"
                               for a, h in zip(*halves))))
    out += [f"{pool}, {kind} bins:", "",
            _md_table(("budget", *(f"bin {k}" for k in range(1, allocation["num_bins"] + 1))),
                      rows), ""]
  return out


def _costs(name: str, records, workdir: str, settings: dict, policy_default: str,
           verifier_key: str, verifier_default: str) -> list[str]:
  policy = settings.get("policy", policy_default) or ""
  verifier = settings.get(verifier_key, verifier_default) or ""
  p, p_from = _params_of(workdir, policy, verifier=False)
  pv, pv_from = _params_of(workdir, verifier, verifier=True) if verifier else (None, "none")
  rows = [(r["method"], r["budget"], f"{r['generations']:.1f}", f"{r['tokens']:.0f}",
           f"{r['verifier_tokens']:.0f}", "-" if r["flops"] is None else f"{r['flops']:.3g}")
          for r in cost_rows(records, p, pv)]
  return [f"{name}: policy P = {p if p is not None else '?'} matmul parameters "
          f"({p_from}); verifier P = {pv if pv is not None else '?'} ({pv_from}).", "",
          _md_table(("method", "budget", "generations", "tokens / problem",
                     "verifier tokens / problem", "FLOPs / problem"), rows), ""]


# ----------------------------------------------------------------------------- the stage

STAGES = {"search": "search_sweep", "revisions": "revision_sweep",
          "chains": "revision_sweep", "allocation": "compute_optimal",
          "difficulty": "estimate_difficulty", "verifiers": "evaluate_verifiers"}


def _read_json(path: str, stage: str) -> dict:
  if not os.path.exists(path):
    raise UserError(f"{path} not found; run {stage} first")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON ({e}); rerun {stage}") from e


def _load(workdir: str, files: dict) -> tuple[dict, dict]:
  """({input: its content or None}, {input: one line about it}) for every input."""
  readers = {
      "search": lambda p: results.read_results(p),
      "revisions": lambda p: [r for r in results.read_results(p, stage="revision_sweep")
                              if r["method"].startswith("revise")],
      "chains": revision_report.read_chains,
      "allocation": lambda p: _read_json(p, "compute_optimal"),
      "difficulty": difficulty.read_difficulty,
      "verifiers": lambda p: _read_json(p, "evaluate_verifiers"),
  }
  found, notes = {}, {}
  for name, reader in readers.items():
    path = os.path.join(workdir, files[name])
    found[name] = None
    if not files[name]:
      notes[name] = f"{name}: skipped (its file set to '')"
    elif not os.path.exists(path):
      notes[name] = f"{files[name]}: not run (the stage {STAGES[name]} writes it)"
    else:
      try:
        found[name] = reader(path)
        size = len(found[name]) if isinstance(found[name], list) else "JSON"
        notes[name] = f"{files[name]}: read ({size}{' lines' if size != 'JSON' else ''})"
      except UserError as e:
        # A cut or bad file is reported, not fatal: the rest of the study still reports.
        notes[name] = f"{files[name]}: unreadable ({e})"
  return found, notes


def findings_of(found: dict, files: dict, notes: dict, bins: Optional[dict] = None,
                bins_note: str = "") -> list[Finding]:
  """Every finding, in the summary's order, from what `_load` found.

  found: {input: content or None}; files: {input: file name}; notes: {input: why it is
  missing}; bins: {uid: oracle bin} (None: no F1 on hard bins, `bins_note` says why).
  """
  source = lambda name: files[name] if found[name] is not None else notes[name]
  search, allocation = found["search"], found["allocation"]
  findings: list[Finding] = []
  if search:
    findings += beam_vs_best_of_n(search, files["search"], bins)
    if bins is None:
      findings.insert(1, _absent("F1 hard bins", bins_note or notes["difficulty"]))
    findings += lookahead_vs_beam(search, files["search"])
  else:
    findings += [_absent(k, source("search")) for k in ("F1", "F2", "F3")]
  findings.append(sequential_vs_parallel(found["revisions"], files["revisions"])
                  if found["revisions"] else _absent("F4", source("revisions")))
  if allocation:
    findings += compute_optimal_vs_best_of_n(allocation, files["allocation"])
    findings += efficiency_ratio(allocation, files["allocation"])
  else:
    findings += [_absent(k, source("allocation")) for k in ("F5", "F6")]
  findings.append(prm_vs_orm(found["verifiers"], files["verifiers"]) if found["verifiers"]
                  else _absent("F7", source("verifiers")))
  findings += (flops_matched(allocation, files["allocation"]) if allocation
               else [Finding("F8", CLAIMS["F8 easy"], NOT_RUN, "-", source("allocation"))])
  return findings


def _figures_and_tables(workdir: str, stem: str, found: dict, files: dict,
                        bins: Optional[dict]) -> tuple[list, list]:
  """([(caption, PNG name)], [markdown lines]): draws each figure the inputs allow into
  `<workdir>/<stem>_*.png` and formats the tables."""
  search, revisions, allocation = found["search"], found["revisions"], found["allocation"]
  search_file, revisions_file, chains_file, difficulty_file, verifiers_file = (
      files[k] for k in ("search", "revisions", "chains", "difficulty", "verifiers"))
  figures, tables = [], []
  figures, tables = [], []
  png = lambda name: (f"{os.path.basename(stem)}_{name}.png",
                      os.path.join(workdir, f"{stem}_{name}.png"))
  if search:
    name, path = png("search")
    search_report.plot(search, path, title=f"{search_file}: accuracy vs budget, 95% intervals")
    figures.append(("accuracy vs budget per method, all problems and per task level", name))
    tables += ["### Search: accuracy (95% bootstrap over problems)", "",
               _code(results.format_table(results.accuracy_table(search))),
               "Difference to best_of_n (paired 95% bootstrap):",
               _code(results.format_table(results.difference_table(search)))]
    if bins:
      name, path = png("bins")
      plot_bins(search, bins, path, title=f"{search_file} by oracle difficulty bin")
      figures.append(("accuracy vs budget per oracle difficulty bin (from "
                      f"{difficulty_file})", name))
  if revisions:
    tables_r = revision_report.summarize(found["chains"] or [], revisions)
    for part, plotter, caption in (
        ("revisions_budget", revision_report.plot_budget,
         "sequential vs parallel revisions at equal budget"),
        ("revisions_splits", revision_report.plot_splits,
         "accuracy vs sequential:parallel ratio log2(L / C) per budget")):
      name, path = png(part)
      plotter(tables_r, path, title=f"{revisions_file}: {caption}")
      figures.append((caption, name))
    if found["chains"]:
      name, path = png("revisions_positions")
      revision_report.plot_positions(tables_r, path, title=f"{chains_file}")
      figures.append(("revisions by position in the chain", name))
    tables += ["### Revisions (95% bootstrap over problems)", ""]
    if found["chains"]:
      tables.append(_code(revision_report.format_tables(tables_r)))
    else:  # without chains the revision report's position and flip tables are empty
      tables += [f"sequential (C=1, L=N) vs parallel (C=N, L=1) at budget N ("
                 f"{chains_file} not found: no tables by position):",
                 _code(results.format_table(tables_r["budget"]))]
  if allocation and allocation.get("pools"):
    name, path = png("allocation")
    plot_allocation(allocation, path)
    figures.append(("compute-optimal vs best-of-N, majority, global-budget and on-line "
                    "allocation, per pool", name))
    tables += _allocation_tables(allocation)
  if found["verifiers"]:
    table = found["verifiers"].get("accuracy", {})
    ns = sorted({n for row in table.values() for n in row}, key=int)
    tables += ["", f"### Verifiers ({verifiers_file}): accuracy at N samples, 95% bootstrap", "",
               _md_table(("rule", *(f"N={n}" for n in ns)),
                         [(rule, *(stats.format_interval(*row[n]) if n in row else "-"
                                   for n in ns)) for rule, row in table.items()])]

  return figures, tables


@gin.configurable(denylist=["workdir"])
def report(workdir: str, search_file: str = "search_test.jsonl",
           revisions_file: str = "revisions_test.jsonl",
           revision_chains_file: str = "revision_chains_test.jsonl",
           allocation_file: str = "allocation.json",
           difficulty_file: str = "difficulty_test.jsonl",
           verifiers_file: str = "verifiers_test.json", output: str = "report.md",
           num_bins: int = 5) -> dict:
  """Stage: writes `<workdir>/<output>` and its PNGs (module docstring) and prints the
  findings table. Every input is optional; "" skips one.

  num_bins: oracle difficulty bins for the per-bin views when there is no allocation
    file (with one, its num_bins, so the bins agree with compute-optimal's).
  Returns {key: Finding} in the table's order.
  """
  files = {"search": search_file, "revisions": revisions_file, "chains": revision_chains_file,
           "allocation": allocation_file, "difficulty": difficulty_file,
           "verifiers": verifiers_file}
  found, notes = _load(workdir, files)
  if found["allocation"] is not None:
    num_bins = found["allocation"].get("num_bins", num_bins)

  bins, bins_note = None, notes["difficulty"]
  if found["difficulty"]:
    try:
      bins = difficulty.difficulty_bins(found["difficulty"], num_bins)["oracle"]
    except ValueError as e:
      bins_note = f"{difficulty_file}: cannot bin ({e})"  # fewer questions than bins

  findings = findings_of(found, files, notes, bins, bins_note)

  figures, tables = _figures_and_tables(workdir, os.path.splitext(output)[0], found, files,
                                        bins)
  costs = []
  # Without a settings file beside the results, the sweeps' own defaults name the models.
  for name, default_policy, key, default_verifier in (
      ("search", "", "prm_dir", "prm"),
      ("revisions", verifier_lib.REVISION_MODEL, "orm_dir", "revision_orm")):
    if found[name]:
      settings = resumable.read_settings(os.path.join(workdir, files[name]))
      costs += _costs(files[name], found[name], workdir, settings, default_policy, key,
                      default_verifier)

  summary = format_findings(findings)
  missing = lambda what: [f"not run: {what}", ""]
  lines = [
      f"# Test-time compute report: {os.path.abspath(workdir)}", "",
      "Findings of Snell, Lee, Xu, Kumar (2024) checked on this work dir's files. "
      "Intervals are 95% percentile bootstraps over problems, paired where both sides ran "
      "the same problems. A finding is reproduced (\"yes\") when its interval lies wholly "
      "on the claim's side of the threshold (0 for a difference, 1x for a ratio), \"no\" "
      "when wholly on the other side, \"inconclusive\" when it straddles it.", "",
      "## 1. Findings", "", summary, "",
      "## 2. Figures", ""]
  lines += ([f"![{caption}]({name})\n\n*{caption}*\n" for caption, name in figures]
            or missing("no input for any figure"))
  lines += ["## 3. Tables", ""] + (tables or missing("no input for any table")) + [""]
  lines += ["## 4. Costs", "",
            "Per problem, means over its lines (problems x seeds). Tokens are generated "
            "tokens only, as the sweeps count them: the prompt's prefill is paid once per "
            "problem whatever the method (its KV cache is shared by every row), so it is "
            "left out alike. FLOPs = 2·P·tokens + 2·P_verifier·verifier tokens (matmul "
            "parameters, attention's own FLOPs left out; `ttc.allocation.flops`).", ""]
  lines += costs or missing(f"{search_file} and {revisions_file} not found")
  lines += ["## Inputs", ""] + [f"- {note}" for note in notes.values()] + [""]
  path = os.path.join(workdir, output)
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(path + ".tmp", path)
  print(summary)
  print(f"report: wrote {path} and {len(figures)} figures")
  return {f.key: f for f in findings}
