"""Stage `evaluate_verifiers`: how well the PRM and ORM pick answers and find errors.

On a split of the embedded task it samples K solutions per question from the
policy, scores them with both reward models (whole-sequence passes) and reports:

  * step-level (the task knows every step's correctness exactly): AUROC of the
    PRM's score on correct steps vs the first wrong step, and ProcessBench-style
    first-error F1 at threshold 0.5 and at the threshold that maximises F1 on the
    labels' held-out questions (never on the evaluated split);
  * answer accuracy at N = 1, 4, 16, 64 (disjoint groups of the K samples) for
    majority vote, ORM-weighted best-of-N and PRM-weighted best-of-N with last /
    min / product step aggregation, with 95% bootstrap intervals over questions.

Writes `<workdir>/verifiers_<split>.json` and prints the table.
"""

import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc.data import arith, tasks, vocab
from ttc.decoding import samplers
from ttc.errors import UserError
from ttc.evaluate import load_policy, select_problems
from ttc.train import partitioning
from ttc.verifiers import aggregation, labeling, metrics, reward_model, scoring

PRM_AGGREGATIONS = ("last", "min", "prod")


def sample_solutions(model, params, problems, *, num_samples: int, temperature: float,
                     max_new_tokens: int, batch_size: int, seed: int) -> list[list[dict]]:
  """K policy samples per problem: dicts with text, answer (None if unparsable), correct."""
  policy = labeling.Policy(model, params, samplers.Temperature(jnp.float32(temperature)),
                           max_new_tokens)
  texts, finished, _ = labeling.generate_texts(
      policy, [tasks.encode_prompt(p.prompt) for p in problems], jax.random.key(seed),
      num_samples, max(1, batch_size // num_samples), progress="sample")
  out = []
  for i, problem in enumerate(problems):
    rows = []
    for b in range(i * num_samples, (i + 1) * num_samples):
      # Like label_prm: a sample that never ended (no EOS) or boxed nothing has no answer.
      answer = arith.extract_answer(texts[b]) if finished[b] else None
      rows.append({"text": texts[b], "answer": answer,
                   "correct": answer is not None and arith.grade(texts[b], problem.answer)})
    out.append(rows)
  return out


def _sequences(prompt: str, texts: list[str]):
  """(token ids of prompt + solution + EOS, step-end indices, last index) per solution."""
  char_vocab = vocab.CharVocabulary()
  prompt_ids = tasks.encode_prompt(prompt)
  seqs, ends, last = [], [], []
  for text in texts:
    ids = prompt_ids + char_vocab.encode(text) + [vocab.EOS_ID]
    seqs.append(ids)
    ends.append([len(prompt_ids) + e for e in labeling.step_end_offsets(text)])
    last.append([len(ids) - 1])
  return seqs, ends, last


def _padded(rows: list[list[float]]):
  """([N, S] float32 zero-padded, [N] int32 lengths) of ragged per-step scores."""
  width = max([1] + [len(r) for r in rows])
  out = np.zeros((len(rows), width), np.float32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out, np.asarray([len(r) for r in rows], np.int32)


def _threshold_from_labels(prm, prm_params, workdir, labels_file, validation_percent,
                           batch_size):
  """The first-error threshold of best F1 on the labels' held-out questions (true labels)."""
  records = [r for r in labeling.read_labels(os.path.join(workdir, labels_file))
             if labeling.split_of_uid(r["uid"], validation_percent) == "validation"]
  seqs, ends, truth = [], [], []
  for r in records:
    s, e, _ = _sequences(r["prompt"], [sample["text"] for sample in r["samples"]])
    seqs += s
    ends += e
    truth += [sample["true"] for sample in r["samples"]]
  scores = scoring.score_solutions(prm, prm_params, seqs, ends, batch_size=batch_size)
  return metrics.best_threshold(scores, truth)


@gin.configurable(denylist=["workdir"])
def evaluate_verifiers(workdir: str, task_name: str = gin.REQUIRED, split: str = "test",
                       num_samples: int = 64, ns=(1, 4, 16, 64), temperature: float = 1.0,
                       max_new_tokens: int = 144, batch_size: int = 256,
                       max_problems_per_level: int = 0, score_batch_size: int = 64,
                       prm_dir: str = "prm", orm_dir: str = "orm",
                       labels_file: str = "prm_labels.jsonl", validation_percent: int = 10,
                       seed: int = 0):
  """Samples `num_samples` solutions per problem of `split` and measures both verifiers."""
  if max(ns) > num_samples or min(ns) < 1:
    raise UserError(f"evaluate_verifiers.ns={tuple(ns)} must lie in [1, num_samples="
                    f"{num_samples}]")
  problems = select_problems(task_name, split, max_problems_per_level)
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    policy, policy_params, _ = load_policy(workdir, mesh, rules)
    solutions = sample_solutions(policy, policy_params, problems, num_samples=num_samples,
                                 temperature=temperature, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, seed=seed)
    prm, prm_params = reward_model.load(os.path.join(workdir, prm_dir), mesh, rules)
    orm, orm_params = reward_model.load(os.path.join(workdir, orm_dir), mesh, rules)
    seqs, ends, lasts = [], [], []
    for problem, rows in zip(problems, solutions):
      s, e, l = _sequences(problem.prompt, [r["text"] for r in rows])
      seqs += s
      ends += e
      lasts += l
    prm_steps = scoring.score_solutions(prm, prm_params, seqs, ends, batch_size=score_batch_size)
    orm_final = [s[0] for s in scoring.score_solutions(orm, orm_params, seqs, lasts,
                                                       batch_size=score_batch_size)]
    threshold = _threshold_from_labels(prm, prm_params, workdir, labels_file,
                                       validation_percent, score_batch_size)

  flat = [r for rows in solutions for r in rows]
  truth = [arith.step_correctness(p.question, r["text"]) for p, rows in zip(problems, solutions)
           for r in rows]
  step_scores, num_steps = _padded(prm_steps)
  aggregation.validate_step_scores(step_scores, num_steps)
  aggregation.validate_step_scores(np.asarray(orm_final)[:, None], np.ones(len(flat), np.int32))

  # Step level, on solutions with at least one step.
  stepped = [i for i, t in enumerate(truth) if t]
  step_auroc = metrics.auroc(*metrics.first_error_steps([prm_steps[i] for i in stepped],
                                                        [truth[i] for i in stepped]))
  f1_half = metrics.first_error_f1([prm_steps[i] for i in stepped], [truth[i] for i in stepped])
  f1_tuned = metrics.first_error_f1([prm_steps[i] for i in stepped],
                                    [truth[i] for i in stepped], threshold)

  # Answer level: [Q, K] arrays, answers made ids per question (equal integers = equal ids).
  shape = (len(problems), num_samples)
  answer_ids = np.stack([
      aggregation.canonical_ids([r["answer"] for r in rows], arith.answer_key)
      for rows in solutions])
  correct = np.asarray([r["correct"] for r in flat]).reshape(shape)
  scores = {"ORM weighted": np.asarray(orm_final, np.float32).reshape(shape)}
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
      "split": split, "problems": len(problems), "samples_per_problem": num_samples,
      "pass@1": float(outcome.mean()),
      "prm_first_error_auroc": step_auroc,
      "prm_first_error_f1@0.5": f1_half,
      "prm_first_error_f1@held_out_threshold": f1_tuned,
      "outcome_auroc": {"ORM": metrics.auroc(orm_final, outcome),
                        "PRM-last": metrics.auroc(
                            np.asarray(scores["PRM-last weighted"]).ravel(), outcome)},
      "accuracy": {name: {str(n): list(cell) for n, cell in row.items()}
                   for name, row in table.items()},
  }
  print(f"{split}: {len(problems)} problems x {num_samples} samples, pass@1 "
        f"{results['pass@1']:.3f}")
  print(f"PRM AUROC, correct steps vs first wrong step: {step_auroc:.3f} "
        f"({len(stepped)} solutions)")
  for name, f1 in (("0.5", f1_half), (f"{threshold:.2f} (held-out labels)", f1_tuned)):
    print(f"PRM first-error F1 at threshold {name}: {f1['f1']:.3f} (error acc "
          f"{f1['error_accuracy']:.3f} on {f1['num_error']}, correct acc "
          f"{f1['correct_accuracy']:.3f} on {f1['num_correct']})")
  print("outcome AUROC (correct vs wrong solutions): " + ", ".join(
      f"{k} {v:.3f}" for k, v in results["outcome_auroc"].items()))
  print("accuracy, 95% bootstrap intervals over problems:")
  print(metrics.format_accuracy_table(table))
  with open(os.path.join(workdir, f"verifiers_{split}.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results

