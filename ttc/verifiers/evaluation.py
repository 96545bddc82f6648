"""Stage `evaluate_verifiers`: how well the PRM and ORM pick answers and find errors.

On a split of a task it samples K solutions per question from the policy, scores them
with both reward models (whole-sequence passes) and reports:

  * step-level, where the task has a ground-truth step checker (arith does, MATH does
    not; otherwise these are null): AUROC of the PRM's score on correct steps vs the
    first wrong step, the same AUROC within siblings (candidate next steps of one
    prefix, what beam search compares; `metrics.sibling_counts`), also for the
    policy's own mean log-probability per token of each step and for the PRM
    weighed with it as search's `_lik{w}` methods do, and
    ProcessBench-style first-error F1 at threshold 0.5 and at the threshold that
    maximises F1 on the labels' held-out questions (never on the evaluated split);
  * answer accuracy at N = 1, 4, 16, 64 (disjoint groups of the K samples) for
    majority vote, ORM-weighted best-of-N and PRM-weighted best-of-N with last /
    min / product step aggregation, with 95% bootstrap intervals over questions.

Every ranking metric is also reported for a constant verifier (all scores equal),
computed by the same code: the floor a verifier must beat (AUROC 0.5; weighted
best-of-N = majority vote).

Writes `<workdir>/verifiers_<split>.json` (or `output_name`) and prints the table.
Two runs with the same policy and seed but another `prm_dir` sample alike
(`samples_sha256` checks it), so their JSONs compare two PRMs on the same solutions.
"""

import hashlib
import os
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc import resumable, stats, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.decoding import generation, samplers
from ttc.errors import UserError
from ttc.search import selection
from ttc.verifiers import aggregation, labeling, metrics, scoring

PRM_AGGREGATIONS = ("last", "min", "prod")
CONSTANT_SCORE = 0.5  # of the constant verifier, the floor: any value ranks alike


def sample_solutions(policy: workdir_lib.Policy, task: task_lib.Task, problems, *,
                     num_samples: int, temperature: float, max_new_tokens: int,
                     batch_size: int, seed: int) -> list[list[dict]]:
  """K policy samples per problem: dicts with text, answer (None if unparsable), correct."""
  prompts = [policy.codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
  out = generation.generate_texts(
      policy, prompts, jax.random.key(seed), samplers.Temperature(jnp.float32(temperature)),
      num_samples=num_samples, max_new_tokens=max_new_tokens,
      prompts_per_call=max(1, batch_size // num_samples),
      stop_ids=policy.codec.stop_ids(task.chat), progress="sample")
  solutions = []
  for q, problem in enumerate(problems):
    rows = []
    for text, finished in zip(*out.per_prompt(q, num_samples)):
      # Like label_prm: a sample that never ended or gave no answer has no answer.
      answer = task.extract_answer(text) if finished else None
      rows.append({"text": text, "answer": answer,
                   "correct": answer is not None and task.is_correct(answer, problem)})
    solutions.append(rows)
  return solutions


def _step_texts(task: task_lib.Task, text: str) -> list[str]:
  """Each step of `task.split_steps(text)` as the verifier reads it: the text from the
  end of the previous step through this step's delimiter (or to the end, where EOS
  follows), so equal step texts after equal prefixes mean equal verifier inputs."""
  ends = task.step_end_offsets(text)
  return [text[start + 1:end + 1] for start, end in zip([-1] + ends[:-1], ends)]


def solution_sequences(task: task_lib.Task, codec, prompt_ids: list[int], texts: list[str]):
  """(token ids, step-end indices, [last index]) per solution (`labeling.solution_tokens`)."""
  pairs = [labeling.solution_tokens(task, codec, prompt_ids, t) for t in texts]
  return [p[0] for p in pairs], [p[1] for p in pairs], [[len(p[0]) - 1] for p in pairs]


def _padded(rows: list[list[float]]):
  """([N, S] float32 zero-padded, [N] int32 lengths) of ragged per-step scores."""
  width = max([1] + [len(r) for r in rows])
  out = np.zeros((len(rows), width), np.float32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out, np.asarray([len(r) for r in rows], np.int32)


def _threshold_from_labels(task, codec, prm, prm_params, labels_path, validation_percent,
                           batch_size) -> float:
  """The first-error threshold of best F1 on the labels' held-out questions (true labels)."""
  records = [r for r in labeling.read_labels(labels_path)
             if labeling.split_of_uid(r["uid"], validation_percent) == "validation"]
  seqs, ends, truth = [], [], []
  for r in records:
    samples = [s for s in r["samples"] if s["true"] is not None]
    s, e, _ = solution_sequences(task, codec, codec.encode_prompt(r["prompt"], task.chat),
                                 [sample["text"] for sample in samples])
    seqs += s
    ends += e
    truth += [sample["true"] for sample in samples]
  scores = scoring.score_solutions(prm, prm_params, seqs, ends, batch_size=batch_size)
  try:
    return metrics.best_threshold(scores, truth)
  except ValueError as e:
    raise UserError(f"no first-error threshold from the held-out questions of {labels_path}: "
                    f"{e}; label more questions") from None


def _auroc(scores, labels) -> float:
  """AUROC, or NaN where one class is missing (e.g. a weak policy never right)."""
  labels = np.asarray(labels, bool)
  return metrics.auroc(scores, labels) if 0 < labels.sum() < labels.size else float("nan")


def _constant(step_scores: list) -> list:
  """The scores of a verifier that cannot tell steps apart, ragged like step_scores."""
  return [[CONSTANT_SCORE] * len(s) for s in step_scores]


def _step_metrics(prm_steps: list, truth: list, threshold: float) -> dict:
  """Step-level metrics on the solutions with at least one step."""
  stepped = [i for i, t in enumerate(truth) if t]
  scores, labels = [prm_steps[i] for i in stepped], [truth[i] for i in stepped]
  return {"solutions": len(stepped),
          "auroc": _auroc(*metrics.first_error_steps(scores, labels)),
          "constant_auroc": _auroc(*metrics.first_error_steps(_constant(scores), labels)),
          "f1@0.5": metrics.first_error_f1(scores, labels),
          "f1@held_out": metrics.first_error_f1(scores, labels, threshold)}


def _step_mean_logprobs(token_logprobs: list, ends: list, first: int) -> list:
  """Per step, the mean of its tokens' log-probabilities: the tokens after the previous
  step's end (for the first step, from index `first`, the solution's first token)
  through its own end, as search's step samples hold them."""
  starts = [first] + [e + 1 for e in ends[:-1]]
  return [float(np.mean(token_logprobs[s:e + 1])) for s, e in zip(starts, ends)]


def _with_likelihood(prm_steps: list, likelihood_steps: list, weight: float) -> list:
  """Per step, the value search's `_lik{w}` methods select by
  (`selection.with_step_likelihood`), ragged like prm_steps."""
  flat = np.asarray([v for s in prm_steps for v in s], np.float32)
  mean = np.asarray([v for s in likelihood_steps for v in s], np.float32)
  values = np.asarray(selection.with_step_likelihood(
      jnp.asarray(flat), jnp.asarray(mean)[:, None], jnp.ones(flat.shape, jnp.int32), weight))
  out, begin = [], 0
  for s in prm_steps:
    out.append(values[begin:begin + len(s)].tolist())
    begin += len(s)
  return out


def _sibling_metrics(step_texts: list, step_scores: dict, truth: list, num_samples: int) -> dict:
  """{name: ...} for each verifier's step scores of `step_scores` and "constant":
  `metrics.sibling_auroc` over questions, whose solutions are consecutive runs of
  `num_samples` in the flat per-solution lists."""
  per_question = lambda a: [a[i:i + num_samples] for i in range(0, len(a), num_samples)]
  out = {}
  some = next(iter(step_scores.values()))
  for name, scores in (*step_scores.items(), ("constant", _constant(some))):
    counts = [metrics.sibling_counts(*q) for q in zip(per_question(step_texts),
                                                      per_question(scores), per_question(truth))]
    out[name] = metrics.sibling_auroc(counts)
  return out


def _samples_sha256(solutions: list[list[dict]]) -> str:
  """A digest of every sampled text, in order: equal in two runs that sampled alike."""
  digest = hashlib.sha256()
  for rows in solutions:
    for r in rows:
      digest.update(r["text"].encode() + b"\0")
  return digest.hexdigest()


@gin.configurable(denylist=["workdir"])
def evaluate_verifiers(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "test",
                       num_samples: int = 64, ns=(1, 4, 16, 64), temperature: float = 1.0,
                       max_new_tokens: int = 144, batch_size: int = 256,
                       max_problems_per_level: int = 0, score_batch_size: int = 64,
                       prm_dir: str = "prm", orm_dir: str = "orm",
                       labels_file: str = "prm_labels.jsonl", validation_percent: int = 10,
                       seed: int = 0, output_name: str = "", likelihood_weight: float = 8.0):
  """Samples `num_samples` solutions per problem of `split` and measures both verifiers.

  task: a `ttc.data.task.Task` (or a registered task name).
  policy: the checkpoint to sample ("" = this work dir's; a path or "smollm2"); the
    reward models in `prm_dir` / `orm_dir` (under the work dir) must read its tokens.
  output_name: the results file in the work dir ("" = `verifiers_<split>.json`), e.g.
    one per `prm_dir` when comparing PRMs on the same samples.
  likelihood_weight: w of the "PRM + w x likelihood" sibling AUROC (search's
    `_lik{w}` methods).
  Returns the results written there; the step-level entries are None where the task
  has no step checker.
  """
  task = task_lib.get(task)
  for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens),
                      ("batch_size", batch_size), ("score_batch_size", score_batch_size)):
    if value < 1:
      raise UserError(f"evaluate_verifiers.{name} must be >= 1, got {value}")
  if not ns or max(ns) > num_samples or min(ns) < 1:
    raise UserError(f"evaluate_verifiers.ns={tuple(ns)} must lie in [1, num_samples="
                    f"{num_samples}]")
  problems = task.select(split, max_problems_per_level)
  checked = task.has_step_checker
  with workdir_lib.device_context() as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    codec = loaded.codec
    # The reward models first: a mismatch is refused before minutes of sampling.
    prm, prm_params = workdir_lib.load_reward_model(os.path.join(workdir, prm_dir), devices,
                                                    codec)
    orm, orm_params = workdir_lib.load_reward_model(os.path.join(workdir, orm_dir), devices,
                                                    codec)
    solutions = sample_solutions(loaded, task, problems, num_samples=num_samples,
                                 temperature=temperature, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, seed=seed)
    seqs, ends, lasts, firsts = [], [], [], []
    for problem, rows in zip(problems, solutions):
      prompt_ids = codec.encode_prompt(task.prompt(problem), task.chat)
      s, e, l = solution_sequences(task, codec, prompt_ids, [r["text"] for r in rows])
      seqs += s
      ends += e
      lasts += l
      firsts += [len(prompt_ids)] * len(s)
    prm_steps = scoring.score_solutions(prm, prm_params, seqs, ends, batch_size=score_batch_size)
    orm_final = [s[0] for s in scoring.score_solutions(orm, orm_params, seqs, lasts,
                                                       batch_size=score_batch_size)]
    threshold = (_threshold_from_labels(task, codec, prm, prm_params,
                                        os.path.join(workdir, labels_file), validation_percent,
                                        score_batch_size) if checked else None)
    if checked:  # only sibling AUROC reads it, and that needs the step checker
      token_logprobs = scoring.score_solutions(
          loaded.model, loaded.params, seqs, [list(range(len(s))) for s in seqs],
          batch_size=score_batch_size, per_token=scoring.token_logprobs)
      likelihood_steps = [_step_mean_logprobs(*args)
                          for args in zip(token_logprobs, ends, firsts)]

  flat = [r for rows in solutions for r in rows]
  step_scores, num_steps = _padded(prm_steps)
  aggregation.validate_step_scores(step_scores, num_steps)
  aggregation.validate_step_scores(np.asarray(orm_final)[:, None], np.ones(len(flat), np.int32))
  steps: Optional[dict] = None
  siblings: Optional[dict] = None
  if checked:
    truth = [task.step_correctness(p, r["text"]) for p, rows in zip(problems, solutions)
             for r in rows]
    steps = _step_metrics(prm_steps, truth, threshold)
    verifiers = {"PRM": prm_steps, "policy likelihood": likelihood_steps,
                 f"PRM + {likelihood_weight:g} x likelihood": _with_likelihood(
                     prm_steps, likelihood_steps, likelihood_weight)}
    siblings = _sibling_metrics([_step_texts(task, r["text"]) for r in flat], verifiers, truth,
                                num_samples)

  # Answer level: [Q, K] arrays, answers made ids per question (equal ids = same answer).
  shape = (len(problems), num_samples)
  answer_ids = np.stack([np.asarray(task.answer_ids([r["answer"] for r in rows]), np.int32)
                         for rows in solutions])
  correct = np.asarray([r["correct"] for r in flat]).reshape(shape)
  # The constant verifier goes through the weighted rule like the others: it must come
  # out equal to majority vote, which checks the path rather than assuming it.
  scores = {"constant": np.full(shape, CONSTANT_SCORE, np.float32),
            "ORM weighted": np.asarray(orm_final, np.float32).reshape(shape)}
  for how in PRM_AGGREGATIONS:
    scores[f"PRM-{how} weighted"] = np.asarray(
        aggregation.solution_scores(step_scores, num_steps, how)).reshape(shape)
  per_question = {"majority": {n: metrics.subset_accuracy(answer_ids, correct, None, n,
                                                         "majority") for n in ns}}
  for name, s in scores.items():
    per_question[name] = {n: metrics.subset_accuracy(answer_ids, correct, s, n, "weighted")
                          for n in ns}
  table = metrics.accuracy_table(per_question)

  outcome = np.asarray([r["correct"] for r in flat])
  results = {
      "task": task.name, "split": split, **loaded.describe(), "problems": len(problems),
      "samples_per_problem": num_samples, "pass@1": float(outcome.mean()),
      "samples_sha256": _samples_sha256(solutions), "seed": seed, "temperature": temperature,
      "prm_dir": prm_dir, "orm_dir": orm_dir, "step_checker": checked,
      "prm_first_error_auroc": steps and steps["auroc"],
      "constant_first_error_auroc": steps and steps["constant_auroc"],
      "sibling_auroc": siblings,
      "prm_first_error_f1@0.5": steps and steps["f1@0.5"],
      "prm_first_error_f1@held_out_threshold": steps and steps["f1@held_out"],
      "outcome_auroc": {"ORM": _auroc(orm_final, outcome),
                        "PRM-last": _auroc(np.asarray(scores["PRM-last weighted"]).ravel(),
                                           outcome)},
      "accuracy": {name: {str(n): list(cell) for n, cell in row.items()}
                   for name, row in table.items()},
      # Each PRM rule minus the ORM on the same questions: a paired interval, narrower
      # than the two accuracy intervals side by side.
      "difference_to_orm": {
          name: {str(n): list(stats.bootstrap_interval(values - per_question["ORM weighted"][n]))
                 for n, values in per_question[name].items()}
          for name in per_question if name.startswith("PRM-")},
  }
  print(f"{task.name} {split}: {len(problems)} problems x {num_samples} samples, pass@1 "
        f"{results['pass@1']:.3f}")
  if steps is None:
    print(f"step-level metrics: none (task {task.name} has no ground-truth step checker)")
  else:
    print(f"PRM AUROC, correct steps vs first wrong step: {steps['auroc']:.3f} "
          f"({steps['solutions']} solutions; constant verifier {steps['constant_auroc']:.3f})")
    within = siblings["PRM"]
    print("PRM AUROC within siblings (next steps of one prefix, as beam search compares): "
          f"{stats.format_interval(within['auroc'], within['low'], within['high'])} on "
          f"{within['pairs']} pairs under {within['parents']} prefixes of "
          f"{within['questions']} problems; " + "; ".join(
              f"{name} {stats.format_interval(v['auroc'], v['low'], v['high'])}"
              for name, v in siblings.items() if name != "PRM"))
    for name, f1 in (("0.5", steps["f1@0.5"]),
                     (f"{threshold:.2f} (held-out labels)", steps["f1@held_out"])):
      print(f"PRM first-error F1 at threshold {name}: {f1['f1']:.3f} (error acc "
            f"{f1['error_accuracy']:.3f} on {f1['num_error']}, correct acc "
            f"{f1['correct_accuracy']:.3f} on {f1['num_correct']})")
  print("outcome AUROC (correct vs wrong solutions): " + ", ".join(
      f"{k} {v:.3f}" for k, v in results["outcome_auroc"].items()))
  print("accuracy, 95% bootstrap intervals over problems:")
  print(metrics.format_accuracy_table(table))
  resumable.write_json(os.path.join(workdir, output_name or f"verifiers_{split}.json"), results)
  return results
