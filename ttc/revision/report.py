"""Tables and figures of a revision sweep (paper §6.2, Figs. 6 and 7).

Two files feed them, both written by `ttc.revision.sweep`:

  * the chains file: one line per (problem, chain count C, seed) holding C chains of
    `length` attempts, per attempt its answer, answer id, finished, correct, tokens,
    ORM score and ORM tokens (`CHAIN_FIELDS`; this module owns the schema);
  * the results file: one line per (problem, method, budget, seed) in the search
    sweep's schema (`ttc.search.results`), method `revise_c{C}_l{L}_{rule}`.

Tables, each with a 95% bootstrap interval over problems (`ttc.stats`):

  a. `pass_at_1_by_position`: accuracy of attempt l (1 = first), from the chains file.
     Every chain of every C and seed is pooled per position: a chain's first l attempts
     are drawn the same way whatever its final length or its number of siblings, so
     each is an unbiased sample at position l. Position l has the chains with
     length >= l (with budgets up to M: 2M - 1 chains per problem and seed at position
     1, only the C = 1 chain past M / 2); `chains_by_position` says how many.
  b. `flip_shares`: of the attempts correct at position l, the share incorrect at l + 1
     in the same chain (the paper saw ~38%), and of the incorrect ones, the share
     correct at l + 1; pooled over chains, seeds and l ("all") and per l. An attempt
     without an answer is incorrect. The share is a ratio of sums over problems, its
     interval a bootstrap over problems (the chains of one problem move together).
  c. `budget_table`: at each budget N, sequential (C = 1, L = N) against parallel
     (C = N, L = 1), each with every rule of the sweep. Hierarchical and flat selection
     choose the same answer at both extremes (one chain, or chains of one attempt; with
     one chain they may name different attempts of it); they differ only at the mixed
     splits of table d.
  d. `split_table`: accuracy of every split C x L = N at each budget, overall and per
     difficulty level, for one rule; the figure plots it against log2(L / C), the
     sequential:parallel ratio.

Accuracy of a (method, budget) averages a problem's seeds first (`accuracy_table`).
Budgets of one C share chain prefixes, so their estimates are correlated (each is
unbiased); a difference between two budgets of one split is better estimated than
the intervals suggest.
"""

import collections
import math
import os

import gin
import numpy as np

from ttc import resumable, stats
from ttc.errors import UserError
from ttc.search import results

CHAIN_FIELDS = ("uid", "level", "seed", "chains", "length", "answers", "ids", "finished",
                "correct", "tokens", "scores", "orm_tokens", "generate_s", "score_s")
# Per-attempt fields: [chains][length] lists; scores / orm_tokens are null without an ORM.
ATTEMPT_FIELDS = ("answers", "ids", "finished", "correct", "tokens", "scores", "orm_tokens")
RULE_NAMES = {"maj": "majority", "hier": "hierarchical", "flat": "flat weighted"}
HINT = resumable.REPAIR_HINT


# ----------------------------------------------------------------------------- the chains file


def chain_key(line: dict) -> tuple:
  """The unit of work a chains line records: (uid, chains, seed)."""
  return (line["uid"], line["chains"], line["seed"])


def parse_chain_line(line: bytes, path: str, lineno: int) -> dict:
  """One chains line; UserError naming the file and line if it is not one."""
  record = resumable.parse_record(line, path, lineno, CHAIN_FIELDS, HINT)
  shape = [record["chains"], record["length"]]
  for k in ATTEMPT_FIELDS:
    value = record[k]
    if value is not None and [len(value), *{len(chain) for chain in value}] != shape:
      raise UserError(f"{path} line {lineno}: {k} is not [chains][length] = {shape}; {HINT}")
  return record


def read_chains(path: str) -> list[dict]:
  """Every line of a chains file; UserError for a missing file or a bad line."""
  return resumable.read_records(path, lambda line, n: parse_chain_line(line, path, n),
                                "revision_sweep", "revision chains")


# ----------------------------------------------------------------------------- a, b: chains


def _by_problem(lines):
  per_uid = collections.defaultdict(list)
  for line in lines:
    per_uid[line["uid"]].append(np.asarray(line["correct"], bool))  # [C, length]
  return per_uid


def chains_by_position(lines) -> dict:
  """{position (1-based): chains per problem reaching that position, all seeds together},
  averaged over problems."""
  counts = collections.defaultdict(list)
  for correct in _by_problem(lines).values():
    longest = max(c.shape[1] for c in correct)
    for l in range(longest):
      counts[l + 1].append(sum(c.shape[0] for c in correct if c.shape[1] > l))
  return {l: float(np.mean(v)) for l, v in sorted(counts.items())}


def pass_at_1_by_position(lines) -> dict:
  """{position (1-based): (mean, low, high)}: a problem's share of correct attempts at
  that position over all its chains reaching it (every C, every seed), then the mean
  over problems with its bootstrap interval."""
  values = collections.defaultdict(list)
  for correct in _by_problem(lines).values():
    longest = max(c.shape[1] for c in correct)
    for l in range(longest):
      at_l = np.concatenate([c[:, l] for c in correct if c.shape[1] > l])
      values[l + 1].append(at_l.mean())
  return {l: stats.bootstrap_interval(v) for l, v in sorted(values.items())}


def ratio_interval(numerators, denominators, level: float = 0.95, num_resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
  """(ratio, low, high): sum(numerators) / sum(denominators), one pair per problem, with a
  percentile bootstrap over problems (resamples with no denominator are skipped)."""
  num, den = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)
  if num.shape != den.shape or num.ndim != 1 or den.sum() <= 0:
    raise ValueError("ratio_interval needs one numerator and denominator per problem and a "
                     "positive total denominator")
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, num.size, (num_resamples, num.size))
  totals = den[rows].sum(axis=1)
  ratios = num[rows].sum(axis=1)[totals > 0] / totals[totals > 0]
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(ratios, [tail, 100 - tail])
  return float(num.sum() / den.sum()), float(low), float(high)


def flip_shares(lines) -> dict:
  """{"correct_to_incorrect" | "incorrect_to_correct": {"all" | l: (share, low, high)}}.

  For a transition from position l to l + 1 (1-based l) in one chain: of the attempts
  correct at l, the share incorrect at l + 1, and of those incorrect at l, the share
  correct at l + 1. "all" pools every l. Counts are summed over a problem's chains
  (every C and seed); a cell whose problems have no such attempt is left out.
  """
  # counts[direction][l][problem] = (flips, attempts that could flip)
  counts = {d: collections.defaultdict(dict) for d in ("correct_to_incorrect",
                                                       "incorrect_to_correct")}
  per_uid = _by_problem(lines)
  for uid, correct in per_uid.items():
    longest = max(c.shape[1] for c in correct)
    for l in range(longest - 1):
      now = np.concatenate([c[:, l] for c in correct if c.shape[1] > l + 1])
      nxt = np.concatenate([c[:, l + 1] for c in correct if c.shape[1] > l + 1])
      counts["correct_to_incorrect"][l + 1][uid] = ((now & ~nxt).sum(), now.sum())
      counts["incorrect_to_correct"][l + 1][uid] = ((~now & nxt).sum(), (~now).sum())
  out = {}
  for direction, per_l in counts.items():
    table, pooled = {}, collections.defaultdict(lambda: np.zeros(2))
    for l, per_problem in sorted(per_l.items()):
      pairs = np.asarray([per_problem[u] for u in per_uid if u in per_problem], np.float64)
      for u, pair in per_problem.items():
        pooled[u] += pair
      if pairs[:, 1].sum() > 0:
        table[l] = ratio_interval(pairs[:, 0], pairs[:, 1])
    pairs = np.asarray([pooled[u] for u in per_uid if u in pooled]).reshape(-1, 2)
    if pairs.size and pairs[:, 1].sum() > 0:
      table = {"all": ratio_interval(pairs[:, 0], pairs[:, 1]), **table}
    out[direction] = table
  return out


# ----------------------------------------------------------------------------- c, d: results


def _methods(records) -> dict:
  """{method: (chains C, length L, rule)} from the records' own fields."""
  return {r["method"]: (r["rows"], r["rounds"], r["rule"]) for r in records}


def rules_of(records) -> list[str]:
  """The selection rules a results file holds, in `RULE_NAMES` order."""
  present = {rule for _, _, rule in _methods(records).values()}
  return [rule for rule in RULE_NAMES if rule in present]


def budget_table(records) -> dict:
  """{"sequential_<rule>" | "parallel_<rule>": {budget N: (mean, low, high)}}: C = 1,
  L = N against C = N, L = 1."""
  methods = _methods(records)
  accuracy = results.accuracy_table(records)
  table = {}
  for arrangement in ("sequential", "parallel"):
    for rule in rules_of(records):
      row = {}
      for method, (c, l, r) in methods.items():
        if r == rule and (c if arrangement == "sequential" else l) == 1:
          row.update(accuracy.get(method, {}))
      table[f"{arrangement}_{rule}"] = dict(sorted(row.items()))
  return table


def split_table(records, rule: str, level=None) -> dict:
  """{budget N: {(C, L): (mean, low, high)}}, C ascending (most sequential first), over
  problems of one level if given."""
  methods = _methods(records)
  table = collections.defaultdict(dict)
  for method, row in results.accuracy_table(records, level).items():
    c, l, r = methods[method]
    if r == rule:
      for budget, interval in row.items():
        table[budget][c, l] = interval
  return {n: dict(sorted(cells.items())) for n, cells in sorted(table.items())}


def summarize(lines, records) -> dict:
  """Every table: {"pass_at_1_by_position", "chains_by_position", "flips", "budget",
  "splits": {rule: {"all" | level: split_table}}}, and "split_rule" (the figure's)."""
  rules = rules_of(records)
  levels = sorted({r["level"] for r in records})
  return {
      "pass_at_1_by_position": pass_at_1_by_position(lines),
      "chains_by_position": chains_by_position(lines),
      "flips": flip_shares(lines),
      "budget": budget_table(records),
      "splits": {rule: {"all": split_table(records, rule),
                        **{lv: split_table(records, rule, lv) for lv in levels}}
                 for rule in rules},
      "split_rule": "hier" if "hier" in rules else rules[0],
  }


def to_json(tables: dict) -> dict:
  """`summarize`'s tables with string keys ((C, L) as "c{C}_l{L}") and lists."""
  def convert(value):
    if isinstance(value, dict):
      return {(f"c{k[0]}_l{k[1]}" if isinstance(k, tuple) else str(k)): convert(v)
              for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value
  return convert(tables)


# ----------------------------------------------------------------------------- text


def _cell(interval) -> str:
  return stats.format_interval(*interval) if interval else "-"


def _shown_positions(positions) -> list[int]:
  """1..8, then powers of two: the text table stays short at M = 64; the JSON has all."""
  return [p for p in positions if p <= 8 or p & (p - 1) == 0 or p == max(positions)]


def format_tables(tables: dict) -> str:
  """All tables as text, intervals as 'mean [low, high]'."""
  out = ["pass@1 by position in the chain (every chain of every C and seed reaching it):",
         f"{'position':<10}{'chains':>8}  accuracy"]
  positions = tables["pass_at_1_by_position"]
  for p in _shown_positions(list(positions)):
    out.append(f"{p:<10}{tables['chains_by_position'][p]:>8.0f}  {_cell(positions[p])}")
  for direction, label in (("correct_to_incorrect", "correct at l, incorrect at l+1"),
                           ("incorrect_to_correct", "incorrect at l, correct at l+1")):
    row = tables["flips"][direction]
    shown = ["all"] + _shown_positions([l for l in row if l != "all"])
    out.append(f"share {label}: " + "; ".join(
        f"{'all l' if l == 'all' else f'l={l}'} {_cell(row[l])}" for l in shown if l in row))
  budgets = sorted({n for row in tables["budget"].values() for n in row})
  out.append("sequential (C=1, L=N) vs parallel (C=N, L=1) at budget N:")
  out.append(f"{'':<18}" + "".join(f"{f'N={n}':<23}" for n in budgets))
  for name, row in tables["budget"].items():
    out.append(f"{name:<18}" + "".join(f"{_cell(row.get(n)):<23}" for n in budgets))
  rule = tables["split_rule"]
  for level, table in tables["splits"][rule].items():
    where = "all levels" if level == "all" else f"level {level}"
    out.append(f"every split C x L = N, {RULE_NAMES[rule]} selection, {where}:")
    out.append(f"{'L/C':<10}" + "".join(f"{f'N={n}':<23}" for n in table))
    ratios = sorted({l // c if l >= c else -(c // l) for cells in table.values()
                     for c, l in cells}, reverse=True)
    for ratio in ratios:
      cells = [next((iv for (c, l), iv in table[n].items()
                     if (l // c if l >= c else -(c // l)) == ratio), None) for n in table]
      label = f"{ratio}:1" if ratio > 0 else f"1:{-ratio}"
      out.append(f"{label:<10}" + "".join(f"{_cell(iv):<23}" for iv in cells))
  return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _band(ax, xs, intervals, **kwargs):
  mean, low, high = (np.array([iv[i] for iv in intervals]) for i in range(3))
  line, = ax.plot(xs, mean, marker="o", markersize=3, **kwargs)
  ax.fill_between(xs, low, high, alpha=0.15, color=line.get_color())


def plot_positions(tables: dict, path: str, title: str = "") -> None:
  """pass@1 by position (left) and the flip shares by position (right), as a PNG."""
  plt = _plt()
  from matplotlib.ticker import MaxNLocator
  fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
  positions = tables["pass_at_1_by_position"]
  _band(left, list(positions), list(positions.values()), label="pass@1")
  left.set_xlabel("position in the chain")
  left.set_ylabel("accuracy")
  for direction, row in tables["flips"].items():
    ls = [l for l in row if l != "all"]
    if ls:
      _band(right, ls, [row[l] for l in ls], label=direction.replace("_", " "))
  right.set_xlabel("position l (share of attempts flipping at l+1)")
  right.legend(fontsize=8)
  for ax in (left, right):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole attempts
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  resumable.save_figure(fig, path)
  plt.close(fig)


def plot_budget(tables: dict, path: str, title: str = "") -> None:
  """Accuracy vs budget: sequential and parallel, each rule, with 95% bands, as a PNG."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3.8))
  for name, row in tables["budget"].items():
    if row:
      _band(ax, list(row), list(row.values()), label=name.replace("_", " "),
            linestyle="-" if name.startswith("sequential") else "--")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("generation budget N")
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  resumable.save_figure(fig, path)
  plt.close(fig)


def plot_splits(tables: dict, path: str, title: str = "") -> None:
  """Accuracy vs log2(L / C), one line per budget, one panel per level (and all), PNG."""
  plt = _plt()
  panels = tables["splits"][tables["split_rule"]]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharey=True,
                           squeeze=False)
  for ax, (level, table) in zip(axes[0], panels.items()):
    for budget, cells in table.items():
      xs = [math.log2(l / c) for c, l in cells]
      _band(ax, xs, list(cells.values()), label=f"N={budget}")
    ax.set_title("all levels" if level == "all" else f"level {level}")
    ax.set_xlabel("log2(sequential : parallel)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"accuracy ({RULE_NAMES[tables['split_rule']]})")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the panels
  resumable.save_figure(fig, path)
  plt.close(fig)


def report(chains_path: str, results_path: str) -> dict:
  """Computes every table, prints them, and writes beside the results file
  `<stem>_tables.json`, `<stem>_positions.png`, `<stem>_budget.png` and
  `<stem>_splits.png`. Returns the tables (`summarize`)."""
  lines = read_chains(chains_path)
  records = [r for r in results.read_results(results_path, stage="revision_sweep")
             if r["method"].startswith("revise")]
  if not lines or not records:
    raise UserError(f"{chains_path} or {results_path} holds no results; run revision_sweep")
  tables = summarize(lines, records)
  print(format_tables(tables))
  stem = os.path.splitext(results_path)[0]
  resumable.write_json(f"{stem}_tables.json", to_json(tables))
  name = os.path.basename(results_path)
  plot_positions(tables, f"{stem}_positions.png", title=f"{name}: revisions by position")
  plot_budget(tables, f"{stem}_budget.png", title=f"{name}: sequential vs parallel, 95% CI")
  plot_splits(tables, f"{stem}_splits.png", title=f"{name}: sequential:parallel splits")
  print(f"wrote {stem}_tables.json and {stem}_{{positions,budget,splits}}.png")
  return tables


@gin.configurable(denylist=["workdir"])
def plot_revisions(workdir: str, chains_file: str = "revision_chains_test.jsonl",
                   results_file: str = "revisions_test.jsonl") -> dict:
  """Stage: prints a revision sweep's tables and writes its JSON and figures (`report`)."""
  return report(os.path.join(workdir, chains_file), os.path.join(workdir, results_file))
