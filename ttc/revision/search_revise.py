"""Stage `search_revise_sweep`: revisions that start from a PRM-guided search (issue 19, 5c).

The paper tries search against a verifier and sequential revisions apart, and leaves
their combination as future work. Here a budget of B generations per question is
split: a search (`search_method`, e.g. beam_m4, with the base policy and the PRM)
spends S = round(B x search_share) of them; its C best distinct final solutions (by
last-step PRM score) open C revision chains; the revision model then writes R =
(B - S) / C revisions in each chain (the last 4 attempts in context, as in
`ttc.revision.chains`), and the revision ORM picks among all C x (R + 1) attempts.
C runs over the powers of two that divide B - S, so one budget offers several
sequential:parallel splits, as the revision sweep does.

Each (problem, method, budget, seed) gives one line in the search sweep's schema
(`ttc.search.results`), so `compute_optimal` pools them with the search and revision
sweeps at equal total compute. method = '{search_method}_rev_c{C}_r{R}_{rule}', rule
`maj` (majority over all attempts) or `hier` (the ORM's best within each chain, then
weighted across chains; `ttc.revision.selection`). generations = budget = S + C x R;
rows = C; rounds = R + 1; tokens_generated = the search's policy tokens plus the
revisions'; prm_tokens = the PRM's tokens plus, for hier, the ORM's.

Resuming after `kill -9`: a batch draws from a key derived from (seed, budget, batch
index) only, its lines are appended with one write, and only missing lines are
written; settings are pinned beside the file. With several processes
(`ttc.multihost`) batches are dealt out round-robin into part files that process 0
merges: the file a one-process run writes.
"""

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
from ttc.decoding import samplers
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, selection, verifier as verifier_lib
from ttc.search import methods, results, sweep as search_sweep_lib
from ttc.search.callbacks import PrmCallbacks

RULES = {"maj": "majority", "hier": "hierarchical"}


def method_name(search_method: str, num_chains: int, revisions: int, rule: str) -> str:
  return f"{search_method}_rev_c{num_chains}_r{revisions}_{rule}"


def splits(budget: int, search_generations: int) -> list[tuple[int, int]]:
  """Every (chains C, revisions per chain R) with C x R = budget - search_generations,
  C a power of two; C ascending. [] when the search leaves nothing to revise."""
  rest = budget - search_generations
  return [(1 << i, rest >> i) for i in range(max(rest, 0).bit_length()) if rest % (1 << i) == 0]


def ranked_solutions(task: task_lib.Task, codec, result, q: int) -> list[chains_lib.Attempt]:
  """Problem q's distinct final solutions of the search (host arrays), as attempts, in
  descending PRM score (rows in order on ties); each distinct text once."""
  lengths, complete = result.lengths_QxN[q], result.complete_QxN[q]
  order = np.argsort(-np.asarray(result.scores_QxN[q], np.float64), kind="stable")
  seen, distinct = set(), []
  for n in order:
    length, done = int(lengths[n]), bool(complete[n])
    # A complete row's last token is its EOS; an attempt's text stops before it.
    text = codec.decode(result.tokens_QxNxW[q, n, :length - int(done)].tolist())
    if text not in seen:
      seen.add(text)
      distinct.append(chains_lib.Attempt(
          text=text, finished=done, num_tokens=length,
          answer=task.extract_answer(text) if done else None))
  return distinct


def first_attempts(task: task_lib.Task, codec, result, q: int,
                   num_chains: int) -> list[chains_lib.Attempt]:
  """The C attempts that open problem q's chains: `ranked_solutions`, and if fewer than
  C are distinct, the best ones again, in the same order."""
  return _cycled(ranked_solutions(task, codec, result, q), num_chains)


def _cycled(ranked: list, count: int) -> list:
  return [ranked[c % len(ranked)] for c in range(count)]


def _records(task, problems, out: chains_lib.Chains, scores, search: dict, name_of,
             orm_tokens, wall_s: float) -> list[dict]:
  """One line per problem and rule of chains `out` (after a search that cost `search`);
  wall_s: device seconds per problem, the search's and these revisions'."""
  lines = []
  for q, problem in enumerate(problems):
    attempts = out.attempts[q]
    num_chains, length = len(attempts), len(attempts[0])
    ids = np.asarray(task.answer_ids([a.answer for chain in attempts for a in chain]),
                     np.int32).reshape(num_chains, length)
    revision_tokens = sum(a.num_tokens for chain in attempts for a in chain[1:])
    for rule, how in RULES.items():
      chain, position = (int(i) for i in jax.device_get(selection.choose(
          ids, np.asarray(scores[q], np.float32), how)))
      chosen = attempts[chain][position]
      lines.append({
          "uid": problem.uid, "level": problem.level, "method": name_of(rule),
          "budget": search["budget"], "seed": search["seed"], "rows": num_chains,
          "generations": search["generations"] + num_chains * (length - 1),
          "answer": chosen.answer,
          "correct": chosen.answer is not None and task.is_correct(chosen.answer, problem),
          "complete": sum(a.finished for chain_ in attempts for a in chain_),
          "tokens_generated": search["tokens"][q] + revision_tokens,
          "prm_tokens": search["prm_tokens"][q] + (orm_tokens[q] if rule == "hier" else 0),
          "rounds": length, "wall_s": wall_s, "prm_overflowed": search["prm_overflowed"],
          "rule": rule, "chosen": [chain, position]})
  return lines


@gin.configurable(denylist=["workdir"])
def search_revise_sweep(workdir: str, task=gin.REQUIRED, policy: str = "",
                        revision_model: str = verifier_lib.REVISION_MODEL,
                        prm_dir: str = "prm", orm_dir: str = "revision_orm",
                        search_method: str = "beam_m4", budgets=(4, 16, 64),
                        search_share: float = 0.5, split: str = "test", seeds=(0,),
                        max_problems_per_level: int = 0, temperature: float = 1.0,
                        max_solution_tokens: int = 144, max_step_tokens: int = 32,
                        rows_per_batch: int = 1024, rows_per_call: int = 256,
                        orm_batch_size: int = 64,
                        results_file: str = "search_revise_test.jsonl") -> dict:
  """Searches, then revises the search's best solutions; see the module docstring.

  policy: the base policy that searches ("" = the work dir's own). revision_model,
  prm_dir, orm_dir: under the work dir. search_share: the share of each budget the
  search spends (rounded to whole generations; the rest is revisions).
  rows_per_batch: search rows (problems x S) per program run. rows_per_call: about
  how many chains one revision sampling call decodes.
  Returns the accuracy table {method: {budget: (mean, low, high)}}.
  """
  task = task_lib.get(task)
  if not 0 < search_share < 1:
    raise UserError(f"search_revise_sweep.search_share must be in (0, 1), got {search_share}")
  if not budgets or not seeds or max_problems_per_level < 0 or temperature < 0:
    raise UserError("search_revise_sweep needs budgets and seeds, max_problems_per_level "
                    ">= 0 and temperature >= 0")
  plans = {}
  for budget in sorted({int(b) for b in budgets}):
    try:
      config = methods.make_config(search_method, max(1, round(budget * search_share)),
                                   max_solution_tokens=max_solution_tokens,
                                   max_step_tokens=max_step_tokens)
    except ValueError as e:
      raise UserError(f"search_revise_sweep: {e}") from e
    if not splits(budget, config.generations):
      raise UserError(f"search_revise_sweep: budget {budget} leaves no revision after a "
                      f"search of {config.generations} generations; raise the budget or "
                      "lower search_share")
    plans[budget] = config
  for name, path in (("revision model", revision_model), ("PRM", prm_dir), ("ORM", orm_dir)):
    if not epath.Path(workdir, path).exists():
      raise UserError(f"search_revise_sweep: the {name} {os.path.join(workdir, path)} is "
                      "not there; run its stage first (see configs/arith/study.gin)")
  problems = sorted(task.select(split, max_problems_per_level), key=lambda p: p.level)
  path = os.path.join(workdir, results_file)
  # With several processes each runs every count-th batch into a part file, merged at
  # the end; a batch draws from its (seed, method, budget, index) key, whoever runs it.
  result_file = (path, lambda line, n: results.parse_line(line, path, n), results.record_key,
                 results.HINT)
  own, done = multihost.open_results(*result_file)
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    base = workdir_lib.load_policy(policy, devices, workdir)
    reviser = workdir_lib.load_policy(os.path.join(workdir, revision_model), devices, workdir)
    prm_model, prm_params = workdir_lib.load_reward_model(os.path.join(workdir, prm_dir),
                                                          devices, base.codec)
    orm = workdir_lib.load_reward_model(os.path.join(workdir, orm_dir), devices, reviser.codec)
    resumable.pin_settings(path, dict(
        task=task.name, split=split, max_problems_per_level=max_problems_per_level,
        temperature=temperature, max_solution_tokens=max_solution_tokens,
        max_step_tokens=max_step_tokens, rows_per_batch=rows_per_batch,
        rows_per_call=rows_per_call, search_method=search_method, search_share=search_share,
        revision_model=revision_model, prm_dir=prm_dir, orm_dir=orm_dir,
        **base.describe()), epath.Path(path).exists(), "set search_revise_sweep.results_file to a "
        "new name")
    programs = search_sweep_lib.SearchPrograms(search_sweep_lib.task_policy(task, base),
                                               PrmCallbacks(prm_model), base.params, prm_params)
    sampler = samplers.Temperature(jnp.float32(temperature))
    prompt_ids = {p.uid: base.codec.encode_prompt(task.prompt(p), task.chat) for p in problems}
    todo = [(seed, budget) for seed in seeds for budget in plans]
    unit = -1  # the batch's index over the whole sweep, which multihost deals out
    with tqdm.tqdm(total=len(todo) * len(problems), desc=f"search+revise {split}",
                   unit="problem", disable=None) as progress:
      for seed, budget in todo:
        config = plans[budget]
        names = [method_name(search_method, c, r, rule)
                 for c, r in splits(budget, config.generations) for rule in RULES]
        per_batch = max(1, rows_per_batch // config.num_rows)
        for index, start in enumerate(range(0, len(problems), per_batch)):
          batch = problems[start:start + per_batch]
          unit += 1
          if not multihost.owns(unit) or all((p.uid, n, budget, seed) in done
                                             for p in batch for n in names):
            progress.update(len(batch))
            continue
          lines = _run_batch(programs, config, task, base, reviser, orm, batch,
                             [prompt_ids[p.uid] for p in batch], budget=budget, seed=seed,
                             rng=search_sweep_lib.batch_key(seed, search_method, budget, index),
                             sampler=sampler, search_method=search_method,
                             max_new_tokens=max_solution_tokens,
                             rows_per_call=rows_per_call, orm_batch_size=orm_batch_size)
          new = [line for line in lines if results.record_key(line) not in done]
          resumable.append_lines(own, new)
          done.update(map(results.record_key, new))
          progress.update(len(batch))
  multihost.close_results(*result_file)
  records = results.read_results(path, "search_revise_sweep")
  table = results.accuracy_table(records)
  print(f"search_revise_sweep: {task.name} {split}, {search_method} then revisions: "
        f"{len(records)} results in {path}; accuracy, 95% bootstrap intervals over problems:")
  print(results.format_table(table))
  return table


def _run_batch(programs, config, task, base, reviser, orm, problems, prompts, *, budget: int,
               seed: int, rng, sampler, search_method: str, max_new_tokens: int,
               rows_per_call: int, orm_batch_size: int) -> list[dict]:
  """Every line of one batch: one search, then each chain count's revisions."""
  result, search_s = search_sweep_lib.search_batch(programs, config, prompts,
                                                   jax.random.fold_in(rng, 0), sampler)
  search = {"budget": budget, "seed": seed, "generations": config.generations,
            "tokens": [int(t) for t in result.tokens_generated_Q],
            "prm_tokens": [int(t) for t in result.prm_tokens_Q],
            "prm_overflowed": bool(result.prm_overflowed)}
  ranked = [ranked_solutions(task, base.codec, result, q) for q in range(len(problems))]
  lines = []
  for num_chains, revisions in splits(budget, config.generations):
    started = time.perf_counter()
    out = chains_lib.revise(reviser, task, problems, num_chains=num_chains,
                            chain_length=revisions, rng=jax.random.fold_in(rng, num_chains),
                            sampler=sampler, max_new_tokens=max_new_tokens,
                            rows_per_call=rows_per_call,
                            first=[_cycled(r, num_chains) for r in ranked])
    scores = verifier_lib.score_chains(*orm, task, reviser.codec, out, batch_size=orm_batch_size)
    orm_tokens = [sum(map(sum, per_problem))
                  for per_problem in verifier_lib.attempt_token_counts(task, reviser.codec, out)]
    wall_s = search_s + (time.perf_counter() - started) / len(problems)
    lines += _records(task, problems, out, scores, search,
                      lambda rule: method_name(search_method, num_chains, revisions, rule),
                      orm_tokens, wall_s)
  return lines
