"""Stage `compute_optimal`: the paper's compute-optimal curves from sweep results.

    compute_optimal(workdir, results_files={"search": "search_prm.jsonl",
                                            "revisions": "revisions_test.jsonl"},
                    difficulty_file="difficulty_test.jsonl")

Reads the sweeps' results (`ttc.search.results` schema) and the difficulty file
(`ttc.allocation.difficulty`); trains and samples nothing. For every pool of
configurations (each entry of `results_files`, and all of them pooled when there are
several) and every kind of bins (oracle: pass@1; predicted: mean final verifier
score), at each budget of the baseline (best-of-N weighted):

  * compute-optimal accuracy, 2-fold per bin (`ttc.allocation.selection`), with the
    choices made;
  * the baseline's and majority vote's accuracy on the same questions;
  * the efficiency ratio B / b* against the baseline (`ttc.allocation.efficiency`)
    and its geometric mean over budgets;
  * accuracy per bin for the three curves.

Intervals are 95% percentile bootstraps over questions: each resample redoes the
selection, so they include the noise of choosing on half the questions. The baseline
may come from another file than a pool's candidates (best-of-N of the search sweep
for the revisions pool); a pool is compared on the questions every one of its files
and the baseline's file ran.

Writes `<output_name>.json` (everything above) and `<output_name>.png`.
"""

import dataclasses
import json
import os
import warnings
from typing import Mapping, Optional, Sequence

import gin
import numpy as np
from etils import epath

from ttc import resumable, workdir as workdir_lib
from ttc.allocation import bins as bins_lib, difficulty, efficiency, flops, online, selection
from ttc.errors import UserError
from ttc.search import results

KINDS = ("oracle", "predicted")


@dataclasses.dataclass(frozen=True)
class Curves:
  """One pool under one kind of bins, at `budgets` (generations per question).

  accuracy: {curve: [budgets] mean} for "compute_optimal", the baseline, "majority";
  low / high: the same keys, 95% bootstrap bounds; per_bin: {curve: [bins][budgets]}.
  choices: [budgets][2][bins] "method@budget" used on evaluation half h, bin k.
  ratios: efficiency Ratios (point estimate); ratio_interval: {budget: (low, high)};
  summary: (geometric mean, low, high) of the ratios.
  difference: (mean, low, high) of compute-optimal minus the baseline, averaged over
  the budgets where both have a value; paired (both from the same resamples).
  """
  budgets: tuple[int, ...]
  questions: int
  dropped: tuple
  accuracy: dict
  low: dict
  high: dict
  per_bin: dict
  choices: list
  ratios: list
  ratio_interval: dict
  summary: tuple
  difference: tuple


def _means(table, budgets, baseline, candidates, weights, num_bins, probes, cheaper, margin):
  """({curve: [budgets] mean}, {curve: [budgets, Q] values}, the Selection) on one
  resample. probes: {probe size: [Q] probe statistic} for on-line allocation."""
  chosen = selection.two_fold(table, budgets, candidates, weights, num_bins, cheaper,
                              default=baseline, margin=margin)
  values = {"compute_optimal": chosen.value_BxQ,
            baseline: selection.fixed_curve(table, baseline, budgets),
            results.MAJORITY: selection.fixed_curve(table, results.MAJORITY, budgets),
            "global_budget": online.global_budget(table, budgets, candidates, weights,
                                                  num_bins)[0].value_BxQ}
  for probe, stat in probes.items():
    values[f"online_probe{probe}"] = online.online(table, budgets, stat, probe, candidates,
                                                   weights, num_bins).value_BxQ
  return {k: selection.weighted_mean(v, weights) for k, v in values.items()}, values, chosen


def curves(table: selection.Table, baseline: str, candidates: Sequence[str], num_bins: int,
           num_resamples: int, seed: int, dropped=(), probes: Optional[Mapping] = None,
           cheaper: bool = False, margin: float = 0.0) -> Curves:
  """Curves of one pool (module docstring); budgets = the baseline's in the table.

  cheaper: compute-optimal may also choose configurations cheaper than the budget
  (`selection.two_fold`); on-line allocation always may (budget - probe is rarely a
  budget that was swept). margin: the baseline stays unless another configuration is
  more than this much more accurate on the choosing half (`selection.two_fold`).

  probes: {probe size: [Q] mean final score of each question's first samples, in the
  table's question order} for on-line allocation curves (None = none).
  """
  budgets = tuple(sorted(table.rows(baseline)))
  if not budgets:
    raise UserError(f"compute_optimal: the baseline {baseline!r} has no results on these "
                    "questions; set compute_optimal.baseline or add its sweep")
  probes = probes or {}
  means, values, chosen = _means(table, budgets, baseline, candidates, None, num_bins, probes,
                                 cheaper, margin)
  ratios = efficiency.ratios(budgets, means[baseline], means["compute_optimal"])
  rng = np.random.default_rng(seed)
  n = len(table.uids)
  samples = {k: [] for k in means}
  ratio_samples = {r.budget: [] for r in ratios}
  summaries, differences = [], []

  def mean_difference(m):
    d = np.asarray(m["compute_optimal"]) - np.asarray(m[baseline])
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")

  for _ in range(num_resamples):
    weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
    m, _, _ = _means(table, budgets, baseline, candidates, weights, num_bins, probes,
                     cheaper, margin)
    for k, v in m.items():
      samples[k].append(v)
    resampled = efficiency.ratios(budgets, m[baseline], m["compute_optimal"])
    for r in resampled:
      ratio_samples.setdefault(r.budget, []).append(r.ratio)
    summaries.append(efficiency.geometric_mean(resampled))
    differences.append(mean_difference(m))

  def bounds(x):
    with warnings.catch_warnings():  # a budget no candidate fits is NaN in every resample
      warnings.simplefilter("ignore", RuntimeWarning)
      return np.nanpercentile(np.asarray(x, np.float64), [2.5, 97.5], axis=0)

  low, high = {}, {}
  for k, s in samples.items():
    low[k], high[k] = (b.tolist() for b in bounds(s))
  per_bin = {k: [selection.weighted_mean(v, mask_Q=table.bins_Q == b).tolist()
                 for b in range(1, num_bins + 1)] for k, v in values.items()}
  names = [[[f"{table.configs[c][0]}@{table.configs[c][1]}" if c >= 0 else None
             for c in half] for half in at_budget] for at_budget in chosen.choice_BxHxK]
  return Curves(
      budgets, n, tuple(dropped), {k: v.tolist() for k, v in means.items()}, low, high,
      per_bin, names, ratios,
      {b: tuple(bounds(s).tolist()) for b, s in ratio_samples.items() if s},
      (efficiency.geometric_mean(ratios), *bounds(summaries).tolist()),
      (mean_difference(means), *bounds(differences).tolist()))


def _probe_statistics(table, records_by_uid, probes) -> dict:
  """{probe: [Q] mean final score of each question's first `probe` samples}, for the
  probes the difficulty file's per-sample scores allow."""
  scores = [records_by_uid[u].get("final_scores") for u in table.uids]
  if not probes or any(s is None for s in scores):
    return {}
  return {p: online.probe_statistic(scores, p) for p in probes
          if p <= min(len(s) for s in scores)}


def _large_model(workdir, large_policy, large_eval) -> Optional[dict]:
  """{"m": parameter ratio, "pass_at_1": {uid: value}} of the larger policy, or None."""
  if not large_policy and not large_eval:
    return None
  if not (large_policy and large_eval):
    raise UserError("compute_optimal.large_policy and large_eval go together: the larger "
                    "policy's work dir and the per-problem file its evaluate wrote")
  small = workdir_lib.load_model_config(workdir).num_matmul_params()
  big = workdir_lib.load_model_config(os.path.join(workdir, large_policy)).num_matmul_params()
  path = os.path.join(workdir, large_eval)
  if not epath.Path(path).exists():
    raise UserError(f"{path} not found; run evaluate with policy={large_policy!r} first")
  per_problem = [json.loads(line) for line in epath.Path(path).read_text().splitlines()
                 if line.strip()]
  return {"m": big / small,
          "pass_at_1": {r["uid"]: r["correct"] / r["samples"] for r in per_problem}}


def _matched(table, c: Curves, large: dict, num_bins: int, inference_ratios) -> list[dict]:
  """flops.matched_table for one pool: per bin and over all questions ("bin" K + 1)."""
  missing = [u for u in table.uids if u not in large["pass_at_1"]]
  if missing:
    raise UserError(f"compute_optimal.large_eval lacks {len(missing)} of the questions "
                    f"(e.g. {missing[0]}); evaluate the larger policy on the same split")
  p1 = np.array([large["pass_at_1"][u] for u in table.uids])
  large_K = [p1[table.bins_Q == k].mean() if (table.bins_Q == k).any() else np.nan
             for k in range(1, num_bins + 1)] + [p1.mean()]
  small_KxB = c.per_bin["compute_optimal"] + [c.accuracy["compute_optimal"]]
  return flops.matched_table(c.budgets, np.asarray(small_KxB).T, large_K, large["m"],
                             inference_ratios)


def format_matched(name: str, rows: list[dict], m: float) -> str:
  """The FLOPs-matched table: a line per R, a column per bin."""
  lines = [f"{name}: FLOPs-matched, small model's compute-optimal at X generations / a "
           f"{m:.1f}x larger model's pass@1, per bin, 'all' last ('>=': X is past the "
           "small model's largest budget, so its value there is a lower bound)"]
  for r in sorted({row["R"] for row in rows}):
    cells = [row for row in rows if row["R"] == r]
    lines.append(f"  R={r:<5} X={cells[0]['X']:6.1f}: " + "  ".join(
        f"{'>=' if row['small_kind'] == '>' else ''}{row['small']:.3f}/{row['large']:.3f}"
        for row in cells))
  return "\n".join(lines)


def _file_uids(records) -> set:
  return {r["uid"] for r in records}


def format_curves(name: str, c: Curves, baseline: str) -> str:
  """Accuracy per budget (with intervals), the efficiency ratios and the choices."""
  lines = [f"{name}: {c.questions} questions"]
  width = max(16, len(baseline) + 1)
  lines.append(f"{'':<{width}}" + "".join(f"{f'N={b}':<25}" for b in c.budgets))
  for k, mean in c.accuracy.items():
    if all(np.isnan(mean)):
      continue
    # A budget a curve has no value at (an on-line probe that takes all of it) is "-".
    lines.append(f"{k:<{width}}" + "".join(
        f"{'-' if np.isnan(m) else f'{m:.3f} [{lo:.3f}, {hi:.3f}]':<25}"
        for m, lo, hi in zip(mean, c.low[k], c.high[k])))
  ratios = [f"N={r.budget}: {efficiency.format_ratio(r)} "
            f"[{c.ratio_interval[r.budget][0]:.2f}, {c.ratio_interval[r.budget][1]:.2f}]"
            for r in c.ratios]
  lines.append("efficiency vs " + baseline + ": " + "; ".join(ratios))
  g, lo, hi = c.summary
  lines.append(f"geometric mean {g:.2f}x [{lo:.2f}, {hi:.2f}] (95% bootstrap, selection redone)")
  lines.append("compute-optimal - {}, mean over budgets: {:+.3f} [{:+.3f}, {:+.3f}] "
               "(paired)".format(baseline, *c.difference))
  for b, at_budget in zip(c.budgets, c.choices):
    picks = " | ".join(",".join(str(x) for x in half) for half in at_budget)
    lines.append(f"  N={b} chosen per bin (half 0 | half 1): {picks}")
  if c.dropped:
    lines.append(f"  left out (missing questions): {', '.join(f'{m}@{b}' for m, b in c.dropped)}")
  return "\n".join(lines)


def plot(allocation: dict, path: str) -> None:
  """A panel per pool of an allocation file's contents: the baseline and majority once,
  and per kind of bins compute-optimal (solid), global budget and on-line allocation
  (dashed), accuracy vs budget with 95% bands, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  pools = allocation["pools"]
  baseline = allocation["baseline"]
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
  resumable.save_figure(fig, path)
  plt.close(fig)


@gin.configurable(denylist=["workdir"])
def compute_optimal(workdir: str, results_files: Mapping[str, Sequence[str]] = gin.REQUIRED,
                    difficulty_file: str = "difficulty_test.jsonl",
                    baseline: str = "best_of_n", baseline_file: Optional[str] = None,
                    num_bins: int = 5, num_resamples: int = 1000, seed: int = 0,
                    probes: Sequence[int] = (4,), cheaper: bool = False, margin: float = 0.0,
                    large_policy: str = "",
                    large_eval: str = "", inference_ratios: Sequence[float] = flops.PAPER_RATIOS,
                    output_name: str = "allocation") -> dict:
  """Stage: compute-optimal curves, efficiency ratios and choices (module docstring).

  results_files: {pool name: file or [files]} under the work dir.
  baseline_file: where the baseline's lines are (None = the first pool's first file).
  probes: probe sizes of on-line allocation (needs per-sample scores in the difficulty
    file; () = none).
  cheaper: at budget B also choose configurations that cost less (`selection`).
  margin: keep the baseline in a bin unless another configuration beats it on the
    choosing half by more than this accuracy (against the winner's curse; 0 = the
    paper's rule).
  large_policy / large_eval: the FLOPs-matched comparison (paper §7): a policy M times
    larger (its work dir, under this one: M = ratio of matmul parameters) and the
    per-problem file its `evaluate` wrote; "" = none.
  Returns {pool: {kind: Curves}}.
  """
  if not results_files or not isinstance(results_files, Mapping):
    raise UserError("compute_optimal.results_files must map pool names to results files, "
                    "e.g. {'search': 'search_prm.jsonl'}")
  if num_resamples < 1 or num_bins < 1:
    raise UserError("compute_optimal.num_resamples and num_bins must be >= 1")
  if not 0 <= margin < 1:
    raise UserError(f"compute_optimal.margin must be in [0, 1) (an accuracy), got {margin}")
  pools = {name: [files] if isinstance(files, str) else list(files)
           for name, files in results_files.items()}
  read = {}
  for files in pools.values():
    for f in files:
      read.setdefault(f, results.read_results(os.path.join(workdir, f)))
  baseline_file = baseline_file or next(iter(pools.values()))[0]
  if baseline_file not in read:
    read[baseline_file] = results.read_results(os.path.join(workdir, baseline_file))
  baseline_records = [r for r in read[baseline_file] if r["method"] == baseline]
  if not baseline_records:
    raise UserError(f"compute_optimal: the baseline {baseline!r} has no lines in "
                    f"{baseline_file}; set compute_optimal.baseline or baseline_file")
  if len(pools) > 1:
    pools["pooled"] = sorted({f for files in pools.values() for f in files})
  difficulty_records = difficulty.read_difficulty(os.path.join(workdir, difficulty_file))
  found = difficulty.difficulty_bins(difficulty_records, num_bins)

  records_by_uid = {r["uid"]: r for r in difficulty_records}
  large = _large_model(workdir, large_policy, large_eval)
  all_curves: dict = {}
  matched: dict = {}
  for pool, files in pools.items():
    records = [r for f in files for r in read[f]]
    candidates = sorted({r["method"] for r in records} | (
        {results.MAJORITY} if any(r["method"] == "best_of_n" for r in records) else set()))
    uids = set.intersection(_file_uids(baseline_records), *(_file_uids(read[f]) for f in files))
    extra = [] if baseline_file in files else baseline_records
    for kind in KINDS:
      if found.get(kind) is None:
        continue
      halves = bins_lib.halves(found[kind], seed)
      table, dropped = selection.build_table(records + extra, found[kind], halves, uids)
      if not table.uids:
        raise UserError(f"compute_optimal: pool {pool!r} shares no question with "
                        f"{difficulty_file}; run its sweeps and estimate_difficulty on one split")
      probe_stats = _probe_statistics(table, records_by_uid, probes)
      c = all_curves.setdefault(pool, {})[kind] = curves(
          table, baseline, candidates, num_bins, num_resamples, seed, dropped, probe_stats,
          cheaper, margin)
      print(format_curves(f"{pool}, {kind} bins", c, baseline))
      if large is not None:
        matched.setdefault(pool, {})[kind] = _matched(table, c, large, num_bins,
                                                      inference_ratios)
        print(format_matched(f"{pool}, {kind} bins", matched[pool][kind], large["m"]))

  out = {pool: {kind: {**dataclasses.asdict(c),
                       "ratios": [dataclasses.asdict(r) for r in c.ratios],
                       "ratio_interval": {str(b): v for b, v in c.ratio_interval.items()}}
                for kind, c in by_kind.items()} for pool, by_kind in all_curves.items()}
  allocation = {"baseline": baseline, "num_bins": num_bins, "num_resamples": num_resamples,
                "cheaper": cheaper, "margin": margin,
                "seed": seed, "difficulty_file": difficulty_file, "pools": out,
                "flops_matched": large and {"large_policy": large_policy, "m": large["m"],
                                            "large_eval": large_eval, "pools": matched}}
  path = os.path.join(workdir, f"{output_name}.json")
  resumable.write_json(path, allocation)
  plot(allocation, os.path.join(workdir, f"{output_name}.png"))
  print(f"compute_optimal: wrote {path} and {output_name}.png")
  return all_curves
