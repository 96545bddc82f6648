"""Stage `search_sweep`: methods x budgets x seeds over a task's split, one JSON line each.

    search_sweep(workdir, task=..., policy="")   # "" = the work dir's own trained policy

For every (seed, method, budget) the split's problems run through
`tree_search.search` in fixed batches of `rows_per_batch // N` problems (levels
kept together, so rows in a batch have similar step lengths). Each problem's N
final candidates are read on the host, decoded by the policy's codec, their answers
extracted by the task, and weighted best-of-N (`aggregation.choose_answer`, scores =
last-step PRM scores, equal answers as `Task.answer_ids` says) picks one. One line
per problem is appended; `ttc.search.results` has the schema.

wall_s is the batch's device time (compilation excluded: each program is compiled
ahead, and its compile time printed) divided evenly over the batch's problems.

Resuming after `kill -9`: a batch's lines are written with one write and fsync,
a cut last line is dropped, and a batch draws from a key derived from (seed,
method, budget, batch index) only, so recomputing it gives the same lines.
Problems already in the file are not written again. The task, the policy and the
settings are pinned beside the file: a rerun with others is refused.
"""

import os
import time
import zlib

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
from ttc.search import methods, oracle, results, tree_search
from ttc.search.callbacks import ConstantCallbacks, PolicyCallbacks, PrmCallbacks
from ttc.verifiers import aggregation


def batch_key(seed: int, method: str, budget: int, batch_index: int):
  """The key of one batch of a sweep: (seed, method, budget, batch index) only, so a batch
  recomputed after a kill draws the same."""
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(method.encode()) & 0x7FFFFFFF)
  return jax.random.fold_in(jax.random.fold_in(key, budget), batch_index)


def _choose(task: task_lib.Task, codec: workdir_lib.Codec, problem: task_lib.Problem,
            result, q: int) -> dict:
  """The weighted best-of-N answer of problem q of a batch (host arrays), from its N rows,
  and whether a majority vote over the same rows would be right (the paper's baseline)."""
  tokens, lengths = result.tokens_QxNxW[q], result.lengths_QxN[q]
  complete = result.complete_QxN[q]
  texts = [codec.decode(tokens[n, :lengths[n]].tolist()) for n in range(len(lengths))]
  # Like evaluate_verifiers: a solution that never ended (no EOS) has no answer.
  answers = [task.extract_answer(t) if done else None for t, done in zip(texts, complete)]
  ids = np.asarray(task.answer_ids(answers), np.int32)
  row = int(aggregation.choose_answer(ids, result.scores_QxN[q], "weighted"))
  right = lambda a: a is not None and task.is_correct(a, problem)
  voted = answers[int(aggregation.choose_answer(ids, result.scores_QxN[q], "majority"))]
  return {"answer": answers[row], "correct": right(answers[row]),
          "majority_correct": right(voted), "complete": int(complete.sum())}


def task_policy(task: task_lib.Task, policy: workdir_lib.Policy) -> PolicyCallbacks:
  """The policy's callbacks for `task`: a step ends at the task's step delimiter (one
  token or two, `Codec.stop_rule`), a solution at EOS (and, for chat prompts, at the end
  of the turn)."""
  return PolicyCallbacks(policy.model, policy.codec.stop_rule(task.chat, task.step_delimiter))


class SearchPrograms:
  """Search programs compiled ahead of time, one per (config, batch shape)."""

  def __init__(self, policy, prm, policy_params, prm_params):
    self.policy, self.prm = policy, prm
    self.params = (policy_params, prm_params)
    self._compiled = {}

  def prepare(self, config, prompts, lengths, live, rng, sampler):
    """Compiles the program for (config, prompts' shape) unless it is compiled already,
    so that the run that follows is timed without compilation."""
    key = (config, prompts.shape)
    if key not in self._compiled:
      started = time.perf_counter()
      self._compiled[key] = tree_search.search.lower(
          self.policy, self.prm, *self.params, prompts, lengths, live, rng, sampler,
          config).compile()
      print(f"compiled a search of {prompts.shape[0]} x {config.num_rows} rows in "
            f"{time.perf_counter() - started:.0f} s", flush=True)

  def __call__(self, config, prompts, lengths, live, rng, sampler):
    self.prepare(config, prompts, lengths, live, rng, sampler)
    return self._compiled[(config, prompts.shape)](*self.params, prompts, lengths, live,
                                                    rng, sampler)


def search_batch(programs: SearchPrograms, config, prompts: list[list[int]], rng, sampler):
  """(the SearchResult as host arrays, device seconds per problem) of one batch: the
  prompts (token ids, one per problem) left-padded, and padded with copies to a power
  of two problems that are not live, so a run compiles a few batch shapes."""
  num_problems = len(prompts)
  padded = sampling.bucket(num_problems)
  prompts = list(prompts) + [prompts[0]] * (padded - num_problems)
  tokens, lengths = sampling.left_pad(prompts, sampling.bucket(max(map(len, prompts)), 16))
  live = np.arange(padded) < num_problems
  programs.prepare(config, tokens, lengths, live, rng, sampler)  # compile off the clock
  started = time.perf_counter()
  result = jax.block_until_ready(programs(config, tokens, lengths, live, rng, sampler))
  wall = (time.perf_counter() - started) / num_problems
  return jax.device_get(result), wall  # one transfer; the answers are read on the host


def run_batch(programs: SearchPrograms, config, task: task_lib.Task,
              codec: workdir_lib.Codec, problems, prompts: list[list[int]], rng,
              sampler) -> list[dict]:
  """Searches a batch of problems (padded to a power of two); one partial record each.

  prompts: each problem's prompt ids (`codec.encode_prompt`), encoded once per run.
  """
  result, wall = search_batch(programs, config, prompts, rng, sampler)
  out = []
  for q, problem in enumerate(problems):
    out.append({**_choose(task, codec, problem, result, q), "rows": config.num_rows,
                "generations": config.generations,
                "tokens_generated": int(result.tokens_generated_Q[q]),
                "prm_tokens": int(result.prm_tokens_Q[q]), "rounds": int(result.rounds),
                "wall_s": wall, "prm_overflowed": bool(result.prm_overflowed),
                # -1 marks rounds the problem did not run (and all of best-of-N's)
                "distinct_prefixes": [int(d) for d in result.distinct_QxR[q] if d >= 0]})
  return out


@gin.configurable(denylist=["workdir"])
def search_sweep(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "test",
                 method_names=("best_of_n", "beam_m4", "beam_sqrt", "lookahead_k1",
                               "lookahead_k3", "dvts_m4"),
                 budgets=(4, 16, 64, 256), seeds=(0,), max_problems_per_level: int = 0,
                 temperature: float = 1.0, max_solution_tokens: int = 144,
                 max_step_tokens: int = 32, max_rounds: int = tree_search.PAPER_MAX_ROUNDS,
                 rows_per_batch: int = 1024, prm_dir: str = "prm", verifier: str = "prm",
                 results_file: str = "search_test.jsonl"):
  """Runs every method at every budget and seed on `split`; see the module docstring.

  task: a `ttc.data.task.Task` (or a registered task name).
  policy: the checkpoint to search with ("" = this work dir's; a path or "smollm2").
  method_names: see `ttc.search.methods` (best_of_n, beam_m4, beam_sqrt, lookahead_k1, ...).
  temperature: what every method samples at, but greedy (0).
  budgets: generation budgets N (k + 1); methods that cannot use a budget exactly
    (lookahead at 4 with k = 3 runs N = 1) record the generations they used.
  rows_per_batch: search rows (problems x N) per program run.
  verifier: "prm" (the trained PRM in `<workdir>/<prm_dir>`), "oracle" (the task's
    ground-truth step checker, `ttc.search.oracle`: what search achieves with a
    perfect verifier; only for tasks with one) or "constant" (every step scores 0.5,
    `ConstantCallbacks`: majority voting and blind selection, the floor a verifier
    must beat; prm_tokens then counts the tokens it was passed, not run).
  Returns the accuracy table {method: {budget: (mean, low, high)}}.
  """
  task = task_lib.get(task)
  if verifier not in ("prm", "oracle", "constant"):
    raise UserError(f"search_sweep.verifier must be 'prm', 'oracle' or 'constant', got "
                    f"{verifier!r}")
  if verifier == "oracle" and not task.has_step_checker:
    raise UserError(f"search_sweep: task {task.name!r} has no step checker, so no oracle "
                    "verifier; set search_sweep.verifier = 'prm'")
  if rows_per_batch < 1 or temperature < 0:
    raise UserError("search_sweep.rows_per_batch must be >= 1 and temperature >= 0")
  if not seeds or not budgets or not method_names or max_problems_per_level < 0:
    raise UserError("search_sweep needs at least one seed, budget and method, and "
                    "max_problems_per_level >= 0 (0 = all)")
  configs = {}
  for name in method_names:
    for budget in budgets:
      try:
        configs[name, budget] = methods.make_config(
            name, budget, max_solution_tokens=max_solution_tokens,
            max_step_tokens=max_step_tokens, max_rounds=max_rounds)
      except ValueError as e:
        raise UserError(f"search_sweep: {e}") from e
  problems = task.select(split, max_problems_per_level)
  problems = sorted(problems, key=lambda p: p.level)  # stable: file order within a level
  path = os.path.join(workdir, results_file)
  # With several processes each runs every count-th batch into a part file (merged at
  # the end); a batch draws from batch_key, whichever process runs it.
  result_file = (path, lambda line, n: results.parse_line(line, path, n), results.record_key,
                 results.HINT)
  own, done = multihost.open_results(*result_file)
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    if verifier == "prm":
      prm_model, prm_params = workdir_lib.load_reward_model(os.path.join(workdir, prm_dir),
                                                            devices, loaded.codec)
      prm = PrmCallbacks(prm_model)
    elif verifier == "constant":
      prm, prm_params = ConstantCallbacks(), None
    else:
      prm, prm_params = oracle.OracleCallbacks.for_problems(
          task, loaded.codec, problems, max_tokens=max_solution_tokens), None
    # Results of other settings are not comparable: refuse to mix them in one file.
    resumable.pin_settings(path, dict(
        task=task.name, split=split, max_problems_per_level=max_problems_per_level,
        temperature=temperature, max_solution_tokens=max_solution_tokens,
        max_step_tokens=max_step_tokens, max_rounds=max_rounds, rows_per_batch=rows_per_batch,
        prm_dir=prm_dir, verifier=verifier, **loaded.describe()), epath.Path(path).exists(),
        "set search_sweep.results_file to a new name")
    programs = SearchPrograms(task_policy(task, loaded), prm, loaded.params, prm_params)
    sampler_of = {name: samplers.Temperature(jnp.float32(
        methods.sampling_temperature(name, temperature))) for name in method_names}
    prompt_ids = {p.uid: loaded.codec.encode_prompt(task.prompt(p), task.chat)
                  for p in problems}
    todo = [(seed, name, budget) for seed in seeds for name in method_names for budget in budgets]
    unit = -1  # the batch's index over the whole sweep, which multihost deals out
    with tqdm.tqdm(total=len(todo) * len(problems), desc=f"search {split}", unit="problem",
                   disable=None) as progress:
      for seed, name, budget in todo:
        config = configs[name, budget]
        per_batch = max(1, rows_per_batch // config.num_rows)
        for index, start in enumerate(range(0, len(problems), per_batch)):
          batch = problems[start:start + per_batch]
          missing = [(p.uid, name, budget, seed) not in done for p in batch]
          unit += 1
          if multihost.owns(unit) and any(missing):
            rows = run_batch(programs, config, task, loaded.codec, batch,
                             [prompt_ids[p.uid] for p in batch],
                             batch_key(seed, name, budget, index), sampler_of[name])
            resumable.append_lines(own, [
                {"uid": p.uid, "level": p.level, "method": name, "budget": budget,
                 "seed": seed, **row} for p, row, new in zip(batch, rows, missing) if new])
          progress.update(len(batch))
  multihost.close_results(*result_file)

  records = results.read_results(path)
  table = results.accuracy_table(records)
  print(f"search_sweep: {task.name} {split}, policy {loaded.source}: {len(records)} results "
        f"in {path}; accuracy (weighted best-of-N pick), 95% bootstrap intervals over problems:")
  print(results.format_table(table))
  print(f"difference to best_of_n on the same problems (paired 95% bootstrap intervals):\n"
        f"{results.format_table(results.difference_table(records))}")
  print(results.format_costs(records))
  diversity = results.format_diversity(records)
  if diversity:
    print(diversity)
  return table
