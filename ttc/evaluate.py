"""Stage `evaluate`: sample a policy on a task's split, grade, report accuracy by level.

    evaluate(workdir, task=..., policy="")   # "" = the work dir's own trained policy

Per problem it draws `num_samples` solutions (temperature 0 = greedy) and reports, by
difficulty level and overall: pass@k for each k in `ks`, and majority-vote accuracy
over all the samples (`maj@N`: the most frequent extracted answer, grouped by the
task's answer equivalence, is graded). Also the tokens generated, the wall time and
tokens/s. Writes `<workdir>/<output_name>.json` and a per-problem JSONL beside it.
"""

import collections
import json
import os
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc import resumable, stats, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.decoding import generation, samplers
from ttc.errors import UserError
from ttc.verifiers import aggregation


def majority_correct(task: task_lib.Task, problem: task_lib.Problem, answers: list) -> bool:
  """Whether the most frequent answer among `answers` (None = no answer) is right."""
  ids = np.asarray(task.answer_ids(answers), np.int32)
  if (ids == task_lib.NO_ANSWER).all():
    return False
  row = int(aggregation.choose_answer(ids, np.ones(len(ids), np.float32), "majority"))
  return task.is_correct(answers[row], problem)


def format_table(rows: dict, columns) -> str:
  header = f"{'level':>7} {'problems':>8} " + " ".join(f"{c:>8}" for c in columns)
  lines = [header]
  for name, row in rows.items():
    lines.append(f"{name:>7} {row['problems']:>8} " +
                 " ".join(f"{row[c]:>8.3f}" for c in columns))
  return "\n".join(lines)


@gin.configurable(denylist=["workdir"])
def evaluate(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "test",
             num_samples: int = 16, temperature: float = 1.0, ks=(1, 16),
             max_new_tokens: int = 128, batch_size: int = 256, max_problems_per_level: int = 0,
             max_problems: int = 0, seed: int = 0, output_name: str = ""):
  """Samples `num_samples` solutions per problem; writes `<output_name>.json`.

  task: a `ttc.data.task.Task` (or a registered task name).
  policy: the checkpoint to sample ("" = this work dir's; a path or "smollm2").
  ks: pass@k columns (each <= num_samples). batch_size: sampled rows per call, i.e.
    batch_size // num_samples problems, each prefilled once and shared by its rows.
  max_problems_per_level / max_problems: the first so many of each level / of the
    split (0 = all). output_name: default `eval_<split>`.
  Returns {"overall": {...}, "level_1": {...}, ...}.
  """
  task = task_lib.get(task)
  for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens),
                      ("batch_size", batch_size)):
    if value < 1:
      raise UserError(f"evaluate.{name} must be >= 1, got {value}")
  if max_problems < 0 or max_problems_per_level < 0:
    raise UserError("evaluate.max_problems and max_problems_per_level must be >= 0 (0 = all)")
  if not ks or max(ks) > num_samples or min(ks) < 1:
    raise UserError(f"evaluate.ks={tuple(ks)} must lie in [1, num_samples={num_samples}]")
  if temperature < 0:
    raise UserError(f"evaluate.temperature must be >= 0 (0 = greedy), got {temperature}")
  sampler = samplers.Temperature(jnp.float32(temperature))  # greedy at 0
  problems = task.select(split, max_problems_per_level)
  problems = problems[:max_problems] if max_problems else problems
  output_name = output_name or f"eval_{split}"

  with workdir_lib.device_context() as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    prompts = [loaded.codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
    started = time.perf_counter()
    out = generation.generate_texts(
        loaded, prompts, jax.random.key(seed), sampler, num_samples=num_samples,
        max_new_tokens=max_new_tokens, prompts_per_call=batch_size // num_samples,
        stop_ids=loaded.codec.stop_ids(task.chat), progress=f"sample {split}")
    seconds = time.perf_counter() - started

  per_level = collections.defaultdict(list)  # level -> (correct count, majority right)
  records = []
  for q, problem in enumerate(problems):
    texts, finished = out.per_prompt(q, num_samples)
    # A sample that never ended (ran out of tokens) has no answer.
    answers = [task.extract_answer(t) if f else None for t, f in zip(texts, finished)]
    correct = [a is not None and task.is_correct(a, problem) for a in answers]
    majority = majority_correct(task, problem, answers)
    per_level[problem.level].append((sum(correct), majority))
    records.append({"uid": problem.uid, "level": problem.level, "answer": problem.answer,
                    "correct": sum(correct), "samples": num_samples, "majority": majority,
                    "answers": answers, "texts": texts})

  columns = [f"pass@{k}" for k in ks] + [f"maj@{num_samples}"]

  def summarize(rows):
    summary = {"problems": len(rows)}
    for k in ks:
      summary[f"pass@{k}"] = float(np.mean([stats.pass_at_k(num_samples, c, k)
                                            for c, _ in rows]))
    summary[f"maj@{num_samples}"] = float(np.mean([m for _, m in rows]))
    return summary

  results = {f"level_{lvl}": summarize(per_level[lvl]) for lvl in sorted(per_level)}
  results["overall"] = summarize([r for lvl in per_level for r in per_level[lvl]])
  cost = {"tokens_generated": out.num_tokens, "wall_s": seconds,
          "tokens_per_s": out.num_tokens / max(seconds, 1e-9)}
  print(f"{task.name} {split} split ({len(problems)} problems), policy {loaded.source}"
        f"{'' if loaded.step is None else f' step {loaded.step}'}, {num_samples} samples/problem"
        f" at temperature {temperature}:")
  print(format_table(results, columns))
  print(f"{cost['tokens_generated']} tokens in {seconds:.0f} s ({cost['tokens_per_s']:.1f} "
        "tokens/s, compilation included)")
  resumable.write_json(os.path.join(workdir, f"{output_name}.json"), {
      "task": task.name, **loaded.describe(), "temperature": temperature,
      "num_samples": num_samples, "max_new_tokens": max_new_tokens, **cost,
      "results": results})
  resumable.write_atomic(os.path.join(workdir, f"{output_name}_problems.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in records))
  return results
