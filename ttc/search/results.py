"""The results of a search sweep: one JSON line per (problem, method, budget, seed).

The one schema that `ttc.search.sweep` writes and `ttc.search.report` reads:

  {"uid", "level", "method", "budget", "seed",
   "rows": N, "generations": N (k + 1),
   "answer": str | null, "correct": bool, "majority_correct": bool,
   "complete": rows that ended with EOS,
   "tokens_generated", "prm_tokens", "rounds", "wall_s", "prm_overflowed",
   "distinct_prefixes": [int per round]}

budget: the requested generation budget; generations: what the method used (a
method that cannot use a budget exactly records fewer). tokens_generated /
prm_tokens: policy tokens sampled / tokens the verifier ran for the problem.
wall_s: its share of the batch's device seconds (compilation excluded).
distinct_prefixes: for each round the problem ran, the distinct solutions so far
among its unfinished rows right after selection (0 once all finished); [] for
best-of-N, which selects nothing. majority_correct: whether a majority vote over the
same N final rows is right; best_of_n's give the table's "majority" row. Both are
optional: files written before them lack them, and other writers
(`ttc.revision.sweep`) do not write them.

Accuracy of a (method, budget) is the mean over problems of the chosen answer's
correctness (averaged over seeds first), with a 95% percentile-bootstrap interval
over problems (`ttc.stats`); a method's difference to best-of-N resamples the same
problems for both (paired).
"""

import collections

import numpy as np

from ttc import resumable, stats

FIELDS = ("uid", "level", "method", "budget", "seed", "rows", "generations", "answer",
          "correct", "complete", "tokens_generated", "prm_tokens", "rounds", "wall_s",
          "prm_overflowed")
HINT = resumable.REPAIR_HINT


def record_key(record: dict) -> tuple:
  """The unit of work a line records: (uid, method, budget, seed)."""
  return (record["uid"], record["method"], record["budget"], record["seed"])


def parse_line(line: bytes, path: str, lineno: int) -> dict:
  """One result line; UserError naming the file and line if it is not one."""
  record = resumable.parse_record(line, path, lineno, FIELDS, HINT)
  return record


def read_results(path: str, stage: str = "search_sweep") -> list[dict]:
  """Every record of a results file; UserError for a missing file or a bad line.

  stage: the stage that writes the file (`ttc.revision.sweep` writes this schema too),
  named in the error a user sees.
  """
  return resumable.read_records(path, lambda line, n: parse_line(line, path, n), stage)


# ----------------------------------------------------------------------------- summaries


MAJORITY = "majority"  # the pseudo-method of best_of_n's rows picked by majority vote


def per_problem(records):
  """{(method, budget): {uid: [correct per seed]}} and {uid: level}.

  best_of_n's lines also give the row `MAJORITY`: a majority vote over the same
  samples (lines written before it was recorded give none).
  """
  cells = collections.defaultdict(lambda: collections.defaultdict(list))
  levels = {}
  for r in records:
    cells[r["method"], r["budget"]][r["uid"]].append(float(r["correct"]))
    if r["method"] == "best_of_n" and "majority_correct" in r:
      cells[MAJORITY, r["budget"]][r["uid"]].append(float(r["majority_correct"]))
    levels[r["uid"]] = r["level"]
  return cells, levels


def _in(level, problem_level: int) -> bool:
  """level: None (all), one level, or a collection of levels (e.g. (4, 5))."""
  if level is None:
    return True
  return problem_level in level if isinstance(level, (tuple, list, set)) else (
      problem_level == level)


def accuracy_table(records, level=None) -> dict:
  """{method: {budget: (mean, low, high)}} over problems (of `level`: None, one level or
  a collection of them)."""
  cells, levels = per_problem(records)
  table = collections.defaultdict(dict)
  for (method, budget), per_uid in cells.items():
    values = [np.mean(v) for uid, v in per_uid.items() if _in(level, levels[uid])]
    if values:
      table[method][budget] = stats.bootstrap_interval(values)
  return {m: dict(sorted(row.items())) for m, row in table.items()}


def difference_table(records, baseline: str = "best_of_n", level=None) -> dict:
  """{method: {budget: (mean, low, high)}} of accuracy minus `baseline`'s at the same
  budget, over the problems both ran (paired: the bootstrap resamples problems, so
  an interval above 0 says the method is better on this split). `level` as for
  `accuracy_table`."""
  cells, levels = per_problem(records)
  table = collections.defaultdict(dict)
  for (method, budget), per_uid in cells.items():
    base = cells.get((baseline, budget), {})
    shared = [uid for uid in per_uid if uid in base and _in(level, levels[uid])]
    if method != baseline and shared:
      table[method][budget] = stats.bootstrap_interval(
          [np.mean(per_uid[uid]) - np.mean(base[uid]) for uid in shared])
  return {m: dict(sorted(row.items())) for m, row in table.items()}


def format_table(table: dict) -> str:
  """`accuracy_table` (or `difference_table`) as text: a line per method, a column per
  budget."""
  budgets = sorted({b for row in table.values() for b in row})
  width = max([14] + [len(m) + 1 for m in table])
  # 25 characters hold a signed difference, '-0.120 [-0.160, -0.083]', and a space.
  lines = [f"{'method':<{width}}" + "".join(f"{f'N={b}':<25}" for b in budgets)]
  for method, row in table.items():
    lines.append(f"{method:<{width}}" + "".join(
        f"{stats.format_interval(*row[b]) if b in row else '-':<25}" for b in budgets))
  return "\n".join(lines)


def format_costs(records) -> str:
  """Per method and budget: tokens generated, PRM tokens / generated, device s / 1k tokens."""
  sums = collections.defaultdict(lambda: np.zeros(4))
  for r in records:
    sums[r["method"], r["budget"]] += (r["tokens_generated"], r["prm_tokens"], r["wall_s"], 1)
  width = max([14] + [len(method) + 1 for method, _ in sums])
  lines = [f"{'method':<{width}}{'budget':>7}{'tokens/problem':>16}{'PRM/generated':>15}"
           f"{'s per 1k tokens':>17}"]
  for (method, budget), (gen, prm, wall, n) in sorted(sums.items()):
    lines.append(f"{method:<{width}}{budget:>7}{gen / n:>16.0f}{prm / max(gen, 1):>15.3f}"
                 f"{1000 * wall / max(gen, 1):>17.4f}")
  return "\n".join(lines)


def format_diversity(records, rounds: int = 3) -> str:
  """Per method and budget: mean distinct surviving prefixes after rounds 1..`rounds`,
  over the problems that ran that round; "" when no record has any."""
  sums = collections.defaultdict(lambda: np.zeros((2, rounds)))
  for r in records:
    counts = r.get("distinct_prefixes") or []
    if counts:
      cell = sums[r["method"], r["budget"]]
      ran = min(len(counts), rounds)
      cell[0, :ran] += counts[:ran]
      cell[1, :ran] += 1
  if not sums:
    return ""
  width = max(14, 1 + max(len(method) for method, _ in sums))  # particles_t0.5_dedup
  lines = [f"{'method':<{width}}{'budget':>7}  distinct prefixes after round "
           + " / ".join(str(i + 1) for i in range(rounds))]
  for (method, budget), (total, n) in sorted(sums.items()):
    means = [f"{t / c:.1f}" if c else "-" for t, c in zip(total, n)]
    lines.append(f"{method:<{width}}{budget:>7}  " + " / ".join(means))
  return "\n".join(lines)
