"""Stage `revision_sweep`: sequential revisions against parallel sampling (paper §6.2).

    revision_sweep(workdir, task=..., policy="revision_model", orm_dir="revision_orm")

A budget of N attempts splits as C chains x L attempts, both powers of two (`splits`).
Per seed and per chain count C = 1, 2, 4, ... M (M the largest budget) the revision
model writes C chains of M // C attempts for every problem (`chains.revise`, one call
per batch of `max(1, rows_per_call // C)` problems), and the revision ORM scores every
attempt in its own context (`ttc.revision.verifier.score_chains`). Every (C, L) at
every budget N = C x L <= M is then read off the first L attempts of those C chains,
so the budgets of one C share chain prefixes: their estimates are correlated, each
unbiased. A problem costs M (log2 M + 1) attempts per seed (448 at M = 64).

Three files, all resumable after `kill -9` (`ttc.resumable`; settings pinned beside
the first and last, a rerun with others refused):

  * `chains_file`: the raw chains, one line per (problem, C, seed), the schema in
    `ttc.revision.report` (answers, ids, finished, correct, tokens, ORM score and ORM
    tokens per attempt; device seconds). Every table is computed from it.
  * `texts_file` ("" = none): the attempt texts of those lines, {"uid", "chains",
    "seed", "texts": [C][L]}, kept apart because they are most of the bytes (MATH-500
    at M = 64: ~0.3 GB per seed) and no table reads them; they allow rescoring with
    another ORM, or reading what the model wrote, without sampling again.
  * `results_file`: one line per (problem, method, budget, seed) in the search sweep's
    schema (`ttc.search.results`), method `revise_c{C}_l{L}_{rule}`, rule `maj`
    (majority over all C x L), and with an ORM `hier` (hierarchical) and `flat` (flat
    weighted), as `ttc.revision.selection` defines them. Fields: rows = C,
    generations = budget = N, rounds = L, complete = finished attempts, tokens_generated
    = policy tokens of the C x L attempts, prm_tokens = tokens the ORM read for them (0
    for maj), prm_overflowed False; extra "rule" and "chosen" = [chain, position].
    These are derived from the chains file only; a rerun derives what is missing (a
    new budget up to M needs no sampling).

wall_s: a batch's device seconds (sampling, and scoring for hier / flat) per problem,
times the record's share of that problem's tokens (policy tokens; ORM tokens for the
scoring part). Unlike the search sweep's, it includes compilation, the first time a
batch shape is seen, and host-side decoding.

A batch draws from fold_in(fold_in(key(seed), C), batch index) only, so recomputing a
batch after a kill gives the same lines; only the missing ones are appended. With
several processes (`ttc.multihost`) batches are dealt out round-robin; each process
appends its texts and chains to part files that process 0 merges, and process 0 then
derives the records from the merged chains: the files a one-process run writes.
"""

import functools
import os
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

from ttc import multihost, resumable, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.decoding import samplers, sampling
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, report, selection, verifier as verifier_lib
from ttc.search import results

RULES = {"maj": "majority", "hier": "hierarchical", "flat": "flat_weighted"}  # name: selection


def _is_power_of_two(n) -> bool:
  return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 and (
      n & (n - 1)) == 0


def chain_counts(max_budget: int) -> list[int]:
  """The chain counts C sampled for budgets up to `max_budget`: 1, 2, 4, ..., max_budget."""
  return [1 << i for i in range(max_budget.bit_length())]


def splits(budget: int) -> list[tuple[int, int]]:
  """Every (chains C, length L) with C x L = budget, both powers of two; C ascending
  (all sequential first, all parallel last)."""
  return [(c, budget // c) for c in chain_counts(budget)]


def method_name(num_chains: int, length: int, rule: str) -> str:
  """'revise_c{C}_l{L}_{rule}', rule in `RULES`."""
  return f"revise_c{num_chains}_l{length}_{rule}"


# ----------------------------------------------------------------------------- sampling


def _batch_key(seed: int, num_chains: int, batch_index: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), num_chains), batch_index)


def run_batch(policy, orm, task: task_lib.Task, problems, *, num_chains: int, length: int,
              seed: int, rng, sampler, max_new_tokens: int, rows_per_call: int,
              orm_batch_size: int) -> tuple[list[dict], list[dict]]:
  """(chains lines, texts lines) of `problems`: `num_chains` chains of `length` attempts
  each, scored by `orm` = (model, params) unless None."""
  started = time.perf_counter()
  out = chains_lib.revise(policy, task, problems, num_chains=num_chains, chain_length=length,
                          rng=rng, sampler=sampler, max_new_tokens=max_new_tokens,
                          rows_per_call=rows_per_call)
  generate_s = (time.perf_counter() - started) / len(problems)
  scores, orm_tokens, score_s = [None] * len(problems), [None] * len(problems), 0.0
  if orm is not None:
    started = time.perf_counter()
    scores = verifier_lib.score_chains(*orm, task, policy.codec, out, batch_size=orm_batch_size)
    score_s = (time.perf_counter() - started) / len(problems)
    # What the ORM read: each attempt after its own context, up to its end token.
    orm_tokens = verifier_lib.attempt_token_counts(task, policy.codec, out)
  lines, texts = [], []
  for q, problem in enumerate(problems):
    attempts = out.attempts[q]  # [C][L]
    flat_ids = task.answer_ids([a.answer for chain in attempts for a in chain])
    lines.append({
        "uid": problem.uid, "level": problem.level, "seed": seed, "chains": num_chains,
        "length": length,
        "answers": [[a.answer for a in chain] for chain in attempts],
        "ids": [flat_ids[c * length:(c + 1) * length] for c in range(num_chains)],
        "finished": [[a.finished for a in chain] for chain in attempts],
        "correct": [[a.answer is not None and task.is_correct(a.answer, problem)
                     for a in chain] for chain in attempts],
        "tokens": [[a.num_tokens for a in chain] for chain in attempts],
        "scores": scores[q], "orm_tokens": orm_tokens[q],
        "generate_s": generate_s, "score_s": score_s})
    texts.append({"uid": problem.uid, "chains": num_chains, "seed": seed,
                  "texts": [out.texts(q, c) for c in range(num_chains)]})
  return lines, texts


# ----------------------------------------------------------------------------- records


@functools.partial(jax.jit, static_argnames="how")
def _choose_Q(ids_QxCxL, scores_QxCxL, how: str):
  """(chain [Q], position [Q]) of each problem's chosen attempt by the rule `how`."""
  return jax.vmap(lambda ids, scores: selection.choose(ids, scores, how))(ids_QxCxL,
                                                                         scores_QxCxL)


def derive_records(lines: list[dict], budgets, rules) -> list[dict]:
  """The results records of chains `lines` at every budget N with C <= N <= C x length,
  for every rule in `rules` (names of `RULES`); see the module docstring."""
  out = []
  by_shape = {}
  for line in lines:
    by_shape.setdefault((line["chains"], line["length"]), []).append(line)
  for (num_chains, longest), group in sorted(by_shape.items()):
    padded = sampling.bucket(len(group))  # a few batch shapes, so a few compilations
    ids = np.full((padded, num_chains, longest), selection.NO_ANSWER, np.int32)
    scores = np.zeros((padded, num_chains, longest), np.float32)
    for q, line in enumerate(group):
      ids[q] = line["ids"]
      if line["scores"] is not None:
        scores[q] = line["scores"]
    for budget in budgets:
      length = budget // num_chains
      if budget < num_chains or length > longest:
        continue
      for rule in rules:
        if rule != "maj" and any(line["scores"] is None for line in group):
          raise ValueError(f"rule {rule!r} needs ORM scores; these chains have none")
        chain_Q, position_Q = jax.device_get(
            _choose_Q(ids[:, :, :length], scores[:, :, :length], RULES[rule]))
        for q, line in enumerate(group):
          out.append(_record(line, budget, length, rule, int(chain_Q[q]), int(position_Q[q])))
  return out


def _record(line: dict, budget: int, length: int, rule: str, chain: int, position: int) -> dict:
  def prefix_sum(key):
    return int(sum(sum(row[:length]) for row in line[key]))
  tokens = prefix_sum("tokens")
  wall = line["generate_s"] * tokens / sum(map(sum, line["tokens"]))
  orm_tokens = 0
  if rule != "maj":
    orm_tokens = prefix_sum("orm_tokens")
    wall += line["score_s"] * orm_tokens / max(1, sum(map(sum, line["orm_tokens"])))
  return {"uid": line["uid"], "level": line["level"],
          "method": method_name(line["chains"], length, rule), "budget": budget,
          "seed": line["seed"], "rows": line["chains"], "generations": budget,
          "answer": line["answers"][chain][position],
          "correct": bool(line["correct"][chain][position]),
          "complete": prefix_sum("finished"), "tokens_generated": tokens,
          "prm_tokens": orm_tokens, "rounds": length, "wall_s": wall,
          "prm_overflowed": False, "rule": rule, "chosen": [chain, position]}


def _append_records(path: str, lines: list[dict], budgets, rules, done: set) -> None:
  """Appends the records of `lines` not in `done` (one write), and notes them done."""
  new = [r for r in derive_records(lines, budgets, rules) if results.record_key(r) not in done]
  if new:
    resumable.append_lines(path, new)
    done.update(map(results.record_key, new))


# ----------------------------------------------------------------------------- the stage


def _texts_key(line: dict) -> tuple:
  return (line["uid"], line["chains"], line["seed"])


def _parse_texts(line: bytes, path: str, lineno: int) -> dict:
  record = resumable.parse_json_line(line, path, lineno, report.HINT)
  if not isinstance(record, dict) or any(k not in record for k in ("uid", "chains", "seed",
                                                                   "texts")):
    raise UserError(f"{path} line {lineno} is not a texts line; {report.HINT}")
  return record


def _check(budgets, seeds, max_problems_per_level, temperature, max_new_tokens, rows_per_call,
           orm_batch_size) -> None:
  if not budgets or not seeds:
    raise UserError("revision_sweep needs at least one budget and one seed")
  if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
    raise UserError(f"revision_sweep.seeds must be integers, got {list(seeds)}")
  bad = [b for b in budgets if not _is_power_of_two(b)]
  if bad:
    raise UserError(f"revision_sweep.budgets must be powers of two (N = chains x length, "
                    f"both powers of two); got {bad}")
  for name, value in (("max_new_tokens", max_new_tokens), ("rows_per_call", rows_per_call),
                      ("orm_batch_size", orm_batch_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"revision_sweep.{name} must be an integer >= 1, got {value!r}")
  if max_problems_per_level < 0 or temperature < 0:
    raise UserError("revision_sweep.max_problems_per_level (0 = all) and temperature must be "
                    ">= 0")


@gin.configurable(denylist=["workdir"])
def revision_sweep(workdir: str, task=gin.REQUIRED, policy: str = verifier_lib.REVISION_MODEL,
                   split: str = "test", budgets=(4, 8, 16, 32, 64), seeds=(0,),
                   max_problems_per_level: int = 0, temperature: float = 1.0,
                   max_new_tokens: int = 144, rows_per_call: int = 256,
                   orm_dir: str = "revision_orm", orm_batch_size: int = 64,
                   chains_file: str = "revision_chains_test.jsonl",
                   texts_file: str = "revision_chains_test_texts.jsonl",
                   results_file: str = "revisions_test.jsonl") -> dict:
  """Samples, scores and selects revision chains on `split`; see the module docstring.

  task: a `ttc.data.task.Task` or a registered name.
  policy: the revision model (`train_revision`'s output dir), relative to the work dir
    unless absolute; "" = the work dir's own policy (a baseline without revision training).
  budgets: generation budgets N (attempts per problem), powers of two.
  max_new_tokens: per attempt. rows_per_call: about how many chains one sampling call
    decodes; a batch holds max(1, rows_per_call // C) problems.
  orm_dir: the revision ORM (`train_orm` on `label_revision_orm`'s labels), relative to
    the work dir unless absolute; "" = no verifier, majority selection only.
  Returns the tables of `ttc.revision.report.summarize` (also printed, written as JSON
  and drawn beside the results file).
  """
  task = task_lib.get(task)
  _check(budgets, seeds, max_problems_per_level, temperature, max_new_tokens, rows_per_call,
         orm_batch_size)
  # A budget or seed named twice would write its records twice.
  budgets, seeds = sorted({int(b) for b in budgets}), list(dict.fromkeys(map(int, seeds)))
  max_budget = max(budgets)
  rules = ("maj", "hier", "flat") if orm_dir else ("maj",)
  policy_path = os.path.join(workdir, policy) if policy else ""
  if policy and not epath.Path(policy_path).exists():
    raise UserError(f"revision model {policy_path} not found: run train_revision first, or set "
                    "revision_sweep.policy to a checkpoint ('' = the work dir's own policy)")
  problems = task.select(split, max_problems_per_level)
  problems = sorted(problems, key=lambda p: p.level)  # stable: file order within a level
  chains_path = os.path.join(workdir, chains_file)
  texts_path = os.path.join(workdir, texts_file) if texts_file else ""
  results_path = os.path.join(workdir, results_file)
  # With several processes each runs every count-th batch into part files of the texts
  # and chains files, merged at the end (texts first, as they are written); the records
  # are then derived from the merged chains by process 0 alone. A batch draws from
  # _batch_key, whichever process runs it.
  texts_file_ = (texts_path, lambda line, n: _parse_texts(line, texts_path, n), _texts_key,
                 report.HINT)
  chains_file_ = (chains_path, lambda line, n: report.parse_chain_line(line, chains_path, n),
                  report.chain_key, report.HINT)
  texts_own, texts_done = multihost.open_results(*texts_file_) if texts_path else ("", set())
  chains_own, chains_done = multihost.open_results(*chains_file_)
  records_live = multihost.count() == 1  # else written once the chains are merged
  results_done = resumable.repair(
      results_path, lambda line, n: results.parse_line(line, results_path, n),
      results.record_key, results.HINT) if multihost.is_writer() else set()
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    loaded = workdir_lib.load_policy(policy_path, devices, workdir)
    orm = None
    if orm_dir:
      orm = workdir_lib.load_reward_model(os.path.join(workdir, orm_dir), devices, loaded.codec)
    # Chains of other settings are not comparable: refuse to mix them in one file. The
    # policy is pinned as set (relative to the work dir), so a moved work dir resumes.
    settings = {**dict(task=task.name, split=split,
                       max_problems_per_level=max_problems_per_level, temperature=temperature,
                       max_new_tokens=max_new_tokens, rows_per_call=rows_per_call,
                       max_budget=max_budget, orm_dir=orm_dir, texts_file=texts_file),
                **loaded.describe(), "policy": policy}
    hint = "set revision_sweep.chains_file, texts_file and results_file to new names"
    resumable.pin_settings(chains_path, settings, epath.Path(chains_path).exists(), hint)
    resumable.pin_settings(results_path, {**settings, "chains_file": chains_file},
                           epath.Path(results_path).exists(), hint)
    # Chains written before a kill (or budgets added since) may lack their records.
    if multihost.is_writer() and epath.Path(chains_path).exists():
      _append_records(results_path, report.read_chains(chains_path), budgets, rules,
                      results_done)
    sampler = samplers.Temperature(jnp.float32(temperature))
    todo = [(seed, c) for seed in seeds for c in chain_counts(max_budget)]
    unit = -1  # the batch's index over the whole sweep, which multihost deals out
    with tqdm.tqdm(total=len(todo) * len(problems), desc=f"revise {split}", unit="problem",
                   disable=None) as progress:
      for seed, num_chains in todo:
        per_batch = max(1, rows_per_call // num_chains)
        for index, start in enumerate(range(0, len(problems), per_batch)):
          batch = problems[start:start + per_batch]
          missing = [(p.uid, num_chains, seed) not in chains_done for p in batch]
          unit += 1
          if multihost.owns(unit) and any(missing):
            lines, texts = run_batch(
                loaded, orm, task, batch, num_chains=num_chains,
                length=max_budget // num_chains, seed=seed,
                rng=_batch_key(seed, num_chains, index), sampler=sampler,
                max_new_tokens=max_new_tokens, rows_per_call=rows_per_call,
                orm_batch_size=orm_batch_size)
            # Texts first: a chains line is never without its texts after a kill.
            if texts_path:
              new_texts = [t for t in texts if _texts_key(t) not in texts_done]
              if new_texts:
                resumable.append_lines(texts_own, new_texts)
                texts_done.update(map(_texts_key, new_texts))
            new = [line for line, m in zip(lines, missing) if m]
            resumable.append_lines(chains_own, new)
            chains_done.update(map(report.chain_key, new))
            if records_live:
              _append_records(results_path, new, budgets, rules, results_done)
          progress.update(len(batch))
  if texts_path:
    multihost.close_results(*texts_file_)
  multihost.close_results(*chains_file_)
  if not records_live:
    if multihost.is_writer():
      _append_records(results_path, report.read_chains(chains_path), budgets, rules,
                      results_done)
    multihost.barrier(f"records {results_path}")

  print(f"revision_sweep: {task.name} {split}, policy {policy or workdir}, "
        f"{'ORM ' + orm_dir if orm_dir else 'no verifier'}: chains in {chains_path}, "
        f"results in {results_path}; 95% bootstrap intervals over problems:")
  return report.report(chains_path, results_path)
