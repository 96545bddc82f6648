"""Tables and figures of a search sweep: accuracy vs generation budget per method.

Accuracy of a (method, budget) is the mean over problems of the chosen answer's
correctness (averaged over seeds first), with a 95% percentile-bootstrap interval
over problems (`ttc.stats`). Budgets are the paper's x-axis: generations
N * (k + 1) as requested in the sweep.
"""

import collections
import os

import gin
import numpy as np

from ttc import stats


def _per_problem(records):
  """{(method, budget): {uid: [correct per seed]}} and {uid: level}."""
  cells = collections.defaultdict(lambda: collections.defaultdict(list))
  levels = {}
  for r in records:
    cells[r["method"], r["budget"]][r["uid"]].append(float(r["correct"]))
    levels[r["uid"]] = r["level"]
  return cells, levels


def accuracy_table(records, level=None) -> dict:
  """{method: {budget: (mean, low, high)}} over problems (of one level, if given)."""
  cells, levels = _per_problem(records)
  table = collections.defaultdict(dict)
  for (method, budget), per_uid in cells.items():
    values = [np.mean(v) for uid, v in per_uid.items() if level in (None, levels[uid])]
    if values:
      table[method][budget] = stats.bootstrap_interval(values)
  return {m: dict(sorted(row.items())) for m, row in table.items()}


def format_table(table: dict) -> str:
  budgets = sorted({b for row in table.values() for b in row})
  lines = [f"{'method':<14}" + "".join(f"{f'N={b}':<23}" for b in budgets)]
  for method, row in table.items():
    lines.append(f"{method:<14}" + "".join(
        f"{stats.format_interval(*row[b]) if b in row else '-':<23}" for b in budgets))
  return "\n".join(lines)


def format_costs(records) -> str:
  """Per method and budget: tokens generated, PRM tokens / generated, device s / 1k tokens."""
  sums = collections.defaultdict(lambda: np.zeros(4))
  for r in records:
    sums[r["method"], r["budget"]] += (r["tokens_generated"], r["prm_tokens"], r["wall_s"], 1)
  lines = [f"{'method':<14}{'budget':>7}{'tokens/problem':>16}{'PRM/generated':>15}"
           f"{'s per 1k tokens':>17}"]
  for (method, budget), (gen, prm, wall, n) in sorted(sums.items()):
    lines.append(f"{method:<14}{budget:>7}{gen / n:>16.0f}{prm / max(gen, 1):>15.3f}"
                 f"{1000 * wall / max(gen, 1):>17.4f}")
  return "\n".join(lines)


def plot(records, path: str, title: str = "") -> None:
  """Accuracy vs budget per method, overall and per level, with 95% bands, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  levels = sorted({r["level"] for r in records})
  panels = [("all levels", None)] + [(f"level {lv}", lv) for lv in levels]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharey=True,
                           squeeze=False)
  for ax, (name, level) in zip(axes[0], panels):
    for method, row in accuracy_table(records, level).items():
      budgets = list(row)
      mean, low, high = (np.array([row[b][i] for b in budgets]) for i in range(3))
      ax.plot(budgets, mean, marker="o", markersize=3, label=method)
      ax.fill_between(budgets, low, high, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_title(name)
    ax.set_xlabel("generation budget")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the panels
  fig.savefig(path, dpi=120)
  plt.close(fig)


@gin.configurable(denylist=["workdir"])
def plot_search(workdir: str, results_file: str = "search_test.jsonl",
                output: str = "search_test.png"):
  """Stage: draws `<workdir>/<output>` from a sweep's results and prints per-level tables."""
  from ttc.search.sweep import read_results
  records = read_results(os.path.join(workdir, results_file))
  for level in sorted({r["level"] for r in records}):
    print(f"level {level}:")
    print(format_table(accuracy_table(records, level)))
  path = os.path.join(workdir, output)
  plot(records, path, title=f"{results_file}: weighted best-of-N pick, 95% intervals")
  print(f"plot_search: wrote {path}")
  return path
