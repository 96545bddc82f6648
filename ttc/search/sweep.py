"""Stage `search_sweep`: methods x budgets x seeds over a split, one JSON line each.

For every (seed, method, budget) the split's problems run through
`tree_search.search` in fixed batches of `rows_per_batch // N` problems (levels
kept together, so rows in a batch have similar step lengths). Each problem's N
final candidates are read on the host, their answers extracted, and weighted
best-of-N (`aggregation.choose_answer`, scores = last-step PRM scores) picks one.
Appended per problem:

  {"uid", "level", "method", "budget", "seed", "rows": N, "generations": N (k + 1),
   "answer": str | null, "correct": bool, "complete": rows that ended with EOS,
   "tokens_generated", "prm_tokens", "rounds", "wall_s", "prm_overflowed"}

wall_s is the batch's device time (compilation excluded: each program is compiled
ahead, and its compile time printed) divided evenly over the batch's problems.

Resuming after `kill -9`: a batch's lines are written with one write and fsync,
a cut last line is dropped, and a batch draws from a key derived from (seed,
method, budget, batch index) only, so recomputing it gives the same lines.
Problems already in the file are not written again.
"""

import os
import time
import zlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ttc import resumable
from ttc.data import arith, tasks, vocab
from ttc.decoding import samplers, sampling
from ttc.errors import UserError
from ttc.evaluate import load_policy, select_problems
from ttc.search import methods, oracle, report, tree_search
from ttc.search.callbacks import PolicyCallbacks, PrmCallbacks
from ttc.train import partitioning
from ttc.verifiers import aggregation, reward_model

_FIELDS = ("uid", "level", "method", "budget", "seed", "rows", "generations", "answer",
           "correct", "complete", "tokens_generated", "prm_tokens", "rounds", "wall_s",
           "prm_overflowed")
_HINT = ("only a cut last line is repaired: fix or delete that line, or the file")


def record_key(record: dict) -> tuple:
  return (record["uid"], record["method"], record["budget"], record["seed"])


def parse_line(line: bytes, path: str, lineno: int) -> dict:
  """One result line; UserError naming the file and line if it is not one."""
  record = resumable.parse_json_line(line, path, lineno, _HINT)
  missing = [k for k in _FIELDS if not isinstance(record, dict) or k not in record]
  if missing:
    raise UserError(f"{path} line {lineno} lacks {missing}; {_HINT}")
  return record


def read_results(path: str) -> list[dict]:
  """Every record of a results file; UserError for a missing file or a bad line."""
  if not os.path.exists(path):
    raise UserError(f"search results {path} not found; run search_sweep first")
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  if lines[-1]:
    raise UserError(f"{path} line {len(lines)} is cut mid-line; rerun search_sweep")
  return [parse_line(line, path, n) for n, line in enumerate(lines[:-1], start=1)]


def _batch_key(seed: int, method: str, budget: int, batch_index: int):
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(method.encode()) & 0x7FFFFFFF)
  return jax.random.fold_in(jax.random.fold_in(key, budget), batch_index)


def _choose(problem, result, q: int) -> dict:
  """The weighted best-of-N answer of problem q of a batch (host arrays), from its N rows."""
  char_vocab = vocab.CharVocabulary()
  tokens, lengths = result.tokens_QxNxW[q], result.lengths_QxN[q]
  complete = result.complete_QxN[q]
  texts = [char_vocab.decode(tokens[n, :lengths[n]].tolist()) for n in range(len(lengths))]
  # Like evaluate_verifiers: a solution that never ended (no EOS) has no answer.
  answers = [arith.extract_answer(t) if done else None for t, done in zip(texts, complete)]
  ids = aggregation.canonical_ids(answers, arith.answer_key)
  row = int(aggregation.choose_answer(ids, result.scores_QxN[q], "weighted"))
  answer = answers[row]
  return {"answer": answer, "correct": answer is not None and arith.grade(texts[row],
                                                                          problem.answer),
          "complete": int(complete.sum())}


def task_policy(model) -> PolicyCallbacks:
  """The embedded task's policy: a step ends at its delimiter, a solution at EOS."""
  delimiter = vocab.CharVocabulary().encode(arith.STEP_DELIMITER)[0]
  return PolicyCallbacks(model, (delimiter,), vocab.EOS_ID)


class SearchPrograms:
  """Search programs compiled ahead of time, one per (config, batch shape)."""

  def __init__(self, policy, prm, policy_params, prm_params):
    self.policy, self.prm = policy, prm
    self.params = (policy_params, prm_params)
    self._compiled = {}

  def __call__(self, config, prompts, lengths, live, rng, sampler):
    key = (config, prompts.shape)
    if key not in self._compiled:
      started = time.perf_counter()
      self._compiled[key] = tree_search.search.lower(
          self.policy, self.prm, *self.params, prompts, lengths, live, rng, sampler,
          config).compile()
      print(f"compiled a search of {prompts.shape[0]} x {config.num_rows} rows in "
            f"{time.perf_counter() - started:.0f} s", flush=True)
    return self._compiled[key](*self.params, prompts, lengths, live, rng, sampler)


def run_batch(programs: SearchPrograms, config, problems, rng, sampler) -> list[dict]:
  """Searches a batch of problems (padded to a power of two); one partial record each."""
  padded = sampling.bucket(len(problems))
  prompts = [tasks.encode_prompt(p.prompt) for p in problems]
  prompts += [prompts[0]] * (padded - len(problems))
  tokens, lengths = sampling.left_pad(prompts, sampling.bucket(max(map(len, prompts)), 16))
  live = np.arange(padded) < len(problems)
  started = time.perf_counter()
  result = jax.block_until_ready(programs(config, tokens, lengths, live, rng, sampler))
  wall = (time.perf_counter() - started) / len(problems)
  result = jax.device_get(result)  # one transfer; the answers are read on the host
  out = []
  for q, problem in enumerate(problems):
    out.append({**_choose(problem, result, q), "rows": config.num_rows,
                "generations": config.generations,
                "tokens_generated": int(result.tokens_generated_Q[q]),
                "prm_tokens": int(result.prm_tokens_Q[q]), "rounds": int(result.rounds),
                "wall_s": wall, "prm_overflowed": bool(result.prm_overflowed)})
  return out


@gin.configurable(denylist=["workdir"])
def search_sweep(workdir: str, task_name: str = gin.REQUIRED, split: str = "test",
                 method_names=("best_of_n", "beam_m4", "beam_sqrt", "lookahead_k1",
                               "lookahead_k3", "dvts_m4"),
                 budgets=(4, 16, 64, 256), seeds=(0,), max_problems_per_level: int = 0,
                 temperature: float = 1.0, max_solution_tokens: int = 144,
                 max_step_tokens: int = 32, max_rounds: int = tree_search.PAPER_MAX_ROUNDS,
                 rows_per_batch: int = 1024, prm_dir: str = "prm", verifier: str = "prm",
                 results_file: str = "search_test.jsonl"):
  """Runs every method at every budget and seed on `split`; see the module docstring.

  method_names: see `ttc.search.methods` (best_of_n, beam_m4, beam_sqrt, lookahead_k1, ...).
  budgets: generation budgets N (k + 1); methods that cannot use a budget exactly
    (lookahead at 4 with k = 3 runs N = 1) record the generations they used.
  rows_per_batch: search rows (problems x N) per program run.
  verifier: "prm" (the trained PRM in `prm_dir`) or "oracle" (the task's ground-truth
    step checker, `ttc.search.oracle`: what search achieves with a perfect verifier).
  Returns the accuracy table {method: {budget: (mean, low, high)}}.
  """
  problems = select_problems(task_name, split, max_problems_per_level)
  problems = sorted(problems, key=lambda p: p.level)  # stable: file order within a level
  configs = {}
  for name in method_names:
    for budget in budgets:
      try:
        configs[name, budget] = methods.make_config(
            name, budget, max_solution_tokens=max_solution_tokens,
            max_step_tokens=max_step_tokens, max_rounds=max_rounds)
      except ValueError as e:
        raise UserError(f"search_sweep: {e}") from e
  if verifier not in ("prm", "oracle"):
    raise UserError(f"search_sweep.verifier must be 'prm' or 'oracle', got {verifier!r}")
  if rows_per_batch < 1 or temperature < 0:
    raise UserError("search_sweep.rows_per_batch must be >= 1 and temperature >= 0")
  path = os.path.join(workdir, results_file)
  done = resumable.repair(path, lambda line, n: parse_line(line, path, n), record_key, _HINT)
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    policy_model, policy_params, step = load_policy(workdir, mesh, rules)
    if verifier == "prm":
      prm_model, prm_params = reward_model.load(os.path.join(workdir, prm_dir), mesh, rules)
      prm = PrmCallbacks(prm_model)
    else:
      prm, prm_params = oracle.OracleCallbacks(max_tokens=max_solution_tokens), None
    # Results of other settings are not comparable: refuse to mix them in one file.
    resumable.pin_settings(path, dict(
        task_name=task_name, split=split, max_problems_per_level=max_problems_per_level,
        temperature=temperature, max_solution_tokens=max_solution_tokens,
        max_step_tokens=max_step_tokens, max_rounds=max_rounds, rows_per_batch=rows_per_batch,
        prm_dir=prm_dir, verifier=verifier, policy_step=int(step)), os.path.exists(path),
        "set search_sweep.results_file to a new name")
    programs = SearchPrograms(task_policy(policy_model), prm, policy_params, prm_params)
    sampler = samplers.Temperature(jnp.float32(temperature))
    todo = [(seed, name, budget) for seed in seeds for name in method_names for budget in budgets]
    with tqdm.tqdm(total=len(todo) * len(problems), desc=f"search {split}", unit="problem",
                   disable=None) as progress:
      for seed, name, budget in todo:
        config = configs[name, budget]
        per_batch = max(1, rows_per_batch // config.num_rows)
        for index, start in enumerate(range(0, len(problems), per_batch)):
          batch = problems[start:start + per_batch]
          missing = [(p.uid, name, budget, seed) not in done for p in batch]
          if any(missing):
            rows = run_batch(programs, config, batch, _batch_key(seed, name, budget, index),
                             sampler)
            resumable.append_lines(path, [
                {"uid": p.uid, "level": p.level, "method": name, "budget": budget,
                 "seed": seed, **row} for p, row, new in zip(batch, rows, missing) if new])
          progress.update(len(batch))

  records = read_results(path)
  table = report.accuracy_table(records)
  print(f"search_sweep: {len(records)} results in {path}; accuracy (weighted best-of-N "
        "pick), 95% bootstrap intervals over problems:")
  print(report.format_table(table))
  print(report.format_costs(records))
  return table
