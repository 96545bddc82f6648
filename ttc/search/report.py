"""Figures of a search sweep: accuracy vs generation budget per method.

Reads the results through `ttc.search.results` (the schema, accuracy with 95%
bootstrap intervals, text tables). Budgets are the paper's x-axis: generations
N * (k + 1) as requested in the sweep.
"""

import os

import gin
import numpy as np

from ttc import resumable
from ttc.search import results


def plot(records, path: str, title: str = "", group: str = "level",
         overall: bool = True) -> None:
  """Accuracy vs budget per method, overall and per level, with 95% bands, as a PNG.

  group: what the records' "level" field holds, in the panel titles (the report passes
  difficulty bins in its place: "bin"); overall: a first panel over all records.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  levels = sorted({r["level"] for r in records})
  panels = ([(f"all {group}s", None)] if overall else []) + [
      (f"{group} {lv}", lv) for lv in levels]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharey=True,
                           squeeze=False)
  for ax, (name, level) in zip(axes[0], panels):
    for method, row in results.accuracy_table(records, level).items():
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
  resumable.save_figure(fig, path)
  plt.close(fig)


@gin.configurable(denylist=["workdir"])
def plot_search(workdir: str, results_file: str = "search_test.jsonl",
                output: str = "search_test.png"):
  """Stage: draws `<workdir>/<output>` from a sweep's results and prints per-level tables,
  and each method's paired difference to best_of_n overall and on the two hardest levels."""
  records = results.read_results(os.path.join(workdir, results_file))
  levels = sorted({r["level"] for r in records})
  for level in levels:
    print(f"level {level}:")
    print(results.format_table(results.accuracy_table(records, level)))
  for name, level in (("all levels", None), (f"levels {levels[-2:]}", tuple(levels[-2:]))):
    print(f"difference to best_of_n, {name} (paired 95% bootstrap intervals):")
    print(results.format_table(results.difference_table(records, level=level)))
  path = os.path.join(workdir, output)
  plot(records, path, title=f"{results_file}: weighted best-of-N pick, 95% intervals")
  print(f"plot_search: wrote {path}")
  return path
