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


_PANEL_INCHES = 3.4
_LEGEND_COLUMN_INCHES = 1.9  # fits a name such as beam_m4_lik8_dedup at font size 8
_LEGEND_ROW_INCHES = 0.22


def figure(records, title: str = "", group: str = "level", overall: bool = True):
  """The matplotlib figure of `plot`: one panel per level (and overall), one line per
  method with its 95% band, and a legend below in as many rows as the names need.

  Colours come from a 20-colour map and each further 20 methods change the line style,
  so no two methods share both.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  levels = sorted({r["level"] for r in records})
  panels = ([(f"all {group}s", None)] if overall else []) + [
      (f"{group} {lv}", lv) for lv in levels]
  methods = list(results.accuracy_table(records))
  width = _PANEL_INCHES * len(panels)
  columns = max(1, min(len(methods), int(width // _LEGEND_COLUMN_INCHES)))
  legend_inches = _LEGEND_ROW_INCHES * -(-len(methods) // columns) + 0.15
  height = _PANEL_INCHES + legend_inches
  fig, axes = plt.subplots(1, len(panels), figsize=(width, height), sharey=True,
                           squeeze=False)
  colours = plt.get_cmap("tab20").colors
  styles = ("-", "--", ":", "-.")
  for ax, (name, level) in zip(axes[0], panels):
    table = results.accuracy_table(records, level)
    for i, method in enumerate(methods):
      if method not in table:
        continue
      row = table[method]
      budgets = list(row)
      mean, low, high = (np.array([row[b][k] for b in budgets]) for k in range(3))
      colour, style = colours[i % len(colours)], styles[(i // len(colours)) % len(styles)]
      ax.plot(budgets, mean, marker="o", markersize=3, label=method, color=colour,
              linestyle=style)
      ax.fill_between(budgets, low, high, alpha=0.12, color=colour)
    ax.set_xscale("log", base=2)
    ax.set_title(name)
    ax.set_xlabel("generation budget")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, legend_inches / height, 1, 1))  # the legend's rows below
  return fig


def plot(records, path: str, title: str = "", group: str = "level",
         overall: bool = True) -> None:
  """Accuracy vs budget per method, overall and per level, with 95% bands, as a PNG.

  group: what the records' "level" field holds, in the panel titles (the report passes
  difficulty bins in its place: "bin"); overall: a first panel over all records.
  """
  import matplotlib.pyplot as plt

  fig = figure(records, title, group, overall)
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
