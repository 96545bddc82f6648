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

  1. Findings: one line per finding of the paper (F1 ... F8, `ttc.allocation.findings`),
     what this run measured with a 95% interval, and whether it reproduced it.
  2. Figures (PNGs beside report.md, `<stem>_*.png`): accuracy vs budget per method,
     per oracle difficulty bin, sequential vs parallel revisions and their
     sequential:parallel ratios, compute-optimal vs its baselines.
  3. Tables: accuracies, efficiency ratios per budget, the FLOPs-matched table and the
     configurations compute-optimal chose per bin and budget.
  4. Costs per method and budget: generations, generated and verifier tokens per
     problem and inference FLOPs 2·P·tokens (`ttc.allocation.flops`).
"""

import collections
import json
import math
import os
from typing import Optional, Sequence

import gin
import numpy as np
from etils import epath

from ttc import resumable, stats, workdir as workdir_lib
from ttc.allocation import compute_optimal, difficulty, efficiency, findings as findings_lib, flops
from ttc.errors import UserError
from ttc.revision import report as revision_report, verifier as verifier_lib
from ttc.search import report as search_report, results

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
    if epath.Path(directory, workdir_lib.MODEL_CONFIG).exists():
      config = workdir_lib.load_model_config(directory)
    elif name and not verifier:
      source = directory if epath.Path(directory).exists() else name
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


# ----------------------------------------------------------------------------- markdown


def _md_table(header: Sequence[str], rows) -> str:
  # A cell's own "|" would split it into two columns.
  clean = lambda x: str(x).replace("|", "/")
  return "\n".join(["| " + " | ".join(map(clean, header)) + " |",
                    "|" + "---|" * len(header)]
                   + ["| " + " | ".join(map(clean, row)) + " |" for row in rows])


def format_findings(findings: Sequence[findings_lib.Finding]) -> str:
  """The summary table, markdown."""
  return _md_table(("#", "finding (paper)", "measured here (95% interval)", "reproduced?",
                    "source"),
                   [(f.key, f.claim, f.measured, f.verdict, f.source) for f in findings])


def _code(text: str) -> str:
  return f"```text\n{text}\n```"


def _allocation_tables(allocation: dict) -> list[str]:
  baseline = allocation.get("baseline", findings_lib.BASELINE)
  out = ["### Compute-optimal vs baselines (accuracy, 95% bootstrap over questions, "
         "selection redone)", ""]
  for pool, kind, c in findings_lib.pool_kinds(allocation):
    rows = [(curve, *(stats.format_interval(m, lo, hi) if math.isfinite(m) else "-"
                      for m, lo, hi in zip(mean, c["low"][curve], c["high"][curve])))
            for curve, mean in c["accuracy"].items()]
    out += [f"{pool}, {kind} bins, {c['questions']} questions:", "",
            _md_table(("curve", *(f"N={b}" for b in c["budgets"])), rows), ""]
  out += [f"### Efficiency ratios B / b* against {baseline} (95% bootstrap)", ""]
  rows = []
  for pool, kind, c in findings_lib.pool_kinds(allocation):
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
  for pool, kind, c in findings_lib.pool_kinds(allocation):
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
  if not epath.Path(path).exists():
    raise UserError(f"{path} not found; run {stage} first")
  try:
    return json.loads(epath.Path(path).read_text())
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
    elif not epath.Path(path).exists():
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
                bins_note: str = "") -> list[findings_lib.Finding]:
  """Every finding, in the summary's order, from what `_load` found.

  found: {input: content or None}; files: {input: file name}; notes: {input: why it is
  missing}; bins: {uid: oracle bin} (None: no F1 on hard bins, `bins_note` says why).
  """
  source = lambda name: files[name] if found[name] is not None else notes[name]
  search, allocation = found["search"], found["allocation"]
  findings: list[findings_lib.Finding] = []
  if search:
    findings += findings_lib.beam_vs_best_of_n(search, files["search"], bins)
    if bins is None:
      findings.insert(1, findings_lib.absent("F1 hard bins", bins_note or notes["difficulty"]))
    findings += findings_lib.lookahead_vs_beam(search, files["search"])
  else:
    findings += [findings_lib.absent(k, source("search")) for k in ("F1", "F2", "F3")]
  findings.append(findings_lib.sequential_vs_parallel(found["revisions"], files["revisions"])
                  if found["revisions"] else findings_lib.absent("F4", source("revisions")))
  if allocation:
    findings += findings_lib.compute_optimal_vs_best_of_n(allocation, files["allocation"])
    findings += findings_lib.efficiency_ratio(allocation, files["allocation"])
  else:
    findings += [findings_lib.absent(k, source("allocation")) for k in ("F5", "F6")]
  findings.append(findings_lib.prm_vs_orm(found["verifiers"], files["verifiers"])
                  if found["verifiers"] else findings_lib.absent("F7", source("verifiers")))
  findings += (findings_lib.flops_matched(allocation, files["allocation"]) if allocation
               else [findings_lib.Finding("F8", findings_lib.CLAIMS["F8 easy"],
                                          findings_lib.NOT_RUN, "-", source("allocation"))])
  return findings


def _figures_and_tables(workdir: str, stem: str, found: dict, files: dict,
                        bins: Optional[dict]) -> tuple[list, list]:
  """([(caption, PNG name)], [markdown lines]): draws each figure the inputs allow into
  `<workdir>/<stem>_*.png` and formats the tables."""
  search, revisions, allocation = found["search"], found["revisions"], found["allocation"]
  search_file, revisions_file, chains_file, difficulty_file, verifiers_file = (
      files[k] for k in ("search", "revisions", "chains", "difficulty", "verifiers"))
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
      # The plot groups by a record's "level": give it the bin (1 = easiest) in its place.
      binned = [{**r, "level": bins[r["uid"]]} for r in search if r["uid"] in bins]
      search_report.plot(binned, path, title=f"{search_file} by oracle difficulty bin "
                         "(1 = easiest)", group="bin", overall=False)
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
    compute_optimal.plot(allocation, path)
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
  Returns {key: findings_lib.Finding} in the table's order.
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
      f"# Test-time compute report: {resumable.absolute(workdir)}", "",
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
  resumable.write_atomic(path, "\n".join(lines))
  print(summary)
  print(f"report: wrote {path} and {len(figures)} figures")
  return {f.key: f for f in findings}
