"""The revision verifier (paper §6.2, App. J): an ORM that reads an attempt with the
earlier attempts of its chain in context.

The paper found an ORM trained on plain samples misjudges revised answers, so this
one is trained on the revision model's own chains. `label_revision_orm` runs chains
on the labelling split and writes every finished attempt with an answer, together with
the revision prompt it continued, in the `label_prm` file format: one line per
question, each sample carrying its own "prompt". `train_orm` then trains on that file
(`train_orm.labels_file = 'revision_orm_labels.jsonl'`), starting from the revision
model that wrote the attempts. `score_chains` scores test-time chains with it, each
attempt after exactly the context it was written in (the last 4 earlier attempts):

    ids = codec.encode_prompt(revision_prompt(task, problem, attempts[:l]), chat)
          + codec.encode(attempts[l]) + [end id]        # scored at the end id

The labels are outcomes: every step of a sample carries its final correctness (no
rollouts), which is all `train_orm` reads; such a file is not for `train_prm`.
"""

import os
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
from etils import epath

from ttc import multihost, resumable, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.decoding import samplers
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, context
from ttc.verifiers import labeling, scoring

REVISION_MODEL = "revision_model"  # `train_revision`'s output dir in the work dir


def attempt_tokens(task: task_lib.Task, codec, problem: task_lib.Problem,
                   texts: Sequence[str], position: int) -> tuple[list[int], list[int]]:
  """(ids, step-end indices) of attempt `position` of a chain whose attempt texts are
  `texts`, read after its context (`labeling.solution_tokens`: the last index is the
  end token, where an ORM scores the whole attempt)."""
  prompt = context.revision_prompt(task, problem, texts[:position])
  return labeling.solution_tokens(task, codec, codec.encode_prompt(prompt, task.chat),
                                  texts[position])


def attempt_token_counts(task: task_lib.Task, codec,
                         chains: chains_lib.Chains) -> list[list[list[int]]]:
  """counts[q][c][l]: the tokens an ORM reads for attempt l of chain c of problem q (the
  attempt after its own context, up to its end token), as `score_chains` feeds them."""
  return [[[len(attempt_tokens(task, codec, problem, chains.texts(q, c), l)[0])
            for l in range(len(chain))] for c, chain in enumerate(chains.attempts[q])]
          for q, problem in enumerate(chains.problems)]


def score_chains(model, params, task: task_lib.Task, codec, chains: chains_lib.Chains,
                 batch_size: int = 64) -> list[list[list[float]]]:
  """scores[q][c][l] in [0, 1]: the ORM's score of attempt l of chain c of problem q,
  read with its own context; unfinished attempts are scored too (their text ends at the
  end token all the same), though selection gives them no answer."""
  sequences, index = [], []
  for q, problem in enumerate(chains.problems):
    for c in range(len(chains.attempts[q])):
      texts = chains.texts(q, c)
      for position in range(len(texts)):
        ids, _ = attempt_tokens(task, codec, problem, texts, position)
        sequences.append(ids)
        index.append((q, c, position))
  flat = scoring.score_solutions(model, params, sequences, [[len(s) - 1] for s in sequences],
                                 batch_size=batch_size)
  out = [[[0.0] * len(chain) for chain in per_problem] for per_problem in chains.attempts]
  for (q, c, position), scores in zip(index, flat):
    out[q][c][position] = float(scores[0])
  return out


def _records(task: task_lib.Task, codec, chains: chains_lib.Chains) -> list[dict]:
  """One labels line per problem: its finished attempts with an answer, each with the
  revision prompt it continued and its outcome as the label of every step."""
  records = []
  for q, problem in enumerate(chains.problems):
    samples = []
    for c, chain in enumerate(chains.attempts[q]):
      texts = chains.texts(q, c)
      for position, attempt in enumerate(chain):
        if attempt.answer is None:  # as label_prm: unfinished or unanswered is dropped
          continue
        correct = task.is_correct(attempt.answer, problem)
        steps = len(task.step_end_offsets(attempt.text))
        samples.append({
            "text": attempt.text, "correct": correct, "soft": [float(correct)] * steps,
            "hard": [correct] * steps, "true": None,
            "step_ends": labeling.step_end_tokens(task, codec, attempt.text),
            "prompt": context.revision_prompt(task, problem, texts[:position]),
            "chain": c, "position": position})
    records.append({"uid": problem.uid, "question": problem.question,
                    "prompt": task.prompt(problem), "answer": problem.answer,
                    "level": problem.level, "num_sampled": sum(map(len, chains.attempts[q])),
                    "samples": [s for s in samples if s["soft"]]})
  return records


@gin.configurable(denylist=["workdir"])
def label_revision_orm(workdir: str, task=gin.REQUIRED, revision_model: str = REVISION_MODEL,
                       split: str = "train", num_questions: int = 0, num_chains: int = 4,
                       chain_length: int = 4, temperature: float = 1.0,
                       max_new_tokens: int = 144, rows_per_call: int = 256,
                       questions_per_chunk: int = 32, seed: int = 0,
                       labels_file: str = "revision_orm_labels.jsonl") -> dict:
  """Writes the revision verifier's training data to `<workdir>/<labels_file>`.

  Runs `num_chains` chains of `chain_length` attempts of the revision model in
  `<workdir>/<revision_model>` on `num_questions` problems of `split` (levels in turn;
  0 = all), and writes `label_prm`-format lines whose samples also carry "prompt" (the
  revision prompt the attempt continued), "chain" and "position". Resumable like
  label_prm: chunk c draws from fold_in(key(seed), c); settings pinned.
  Returns {"path", "questions", "attempts" (kept), "correct" (share of kept)}.
  """
  task = task_lib.get(task)
  for name, value in (("num_chains", num_chains), ("chain_length", chain_length),
                      ("max_new_tokens", max_new_tokens), ("rows_per_call", rows_per_call),
                      ("questions_per_chunk", questions_per_chunk)):
    if value < 1:
      raise UserError(f"label_revision_orm.{name} must be >= 1, got {value}")
  if num_questions < 0 or temperature < 0:
    raise UserError("label_revision_orm.num_questions and temperature must be >= 0")
  problems = task.select_in_turns(split, num_questions)
  path = os.path.join(workdir, labels_file)
  # With several processes each appends its chunks to a part file, merged at the end.
  result_file = (path, lambda line, n: labeling.parse_line(line, path, n),
                 lambda record: record["uid"], labeling.DAMAGED_HINT)
  own, done = multihost.open_results(*result_file)
  settings = dict(task=task.name, split=split, num_chains=num_chains,
                  chain_length=chain_length, temperature=temperature,
                  max_new_tokens=max_new_tokens, seed=seed)
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    model_dir = os.path.join(workdir, revision_model)
    policy = workdir_lib.load_policy(model_dir, devices)
    # train_orm starts from the policy the settings name: the revision model.
    resumable.pin_settings(path, {**settings, **policy.describe()}, epath.Path(path).exists(),
                           "set label_revision_orm.labels_file to a new name")
    sampler = samplers.Temperature(jnp.float32(temperature))
    key = jax.random.key(seed)

    def chunk_records(c, chunk):
      chains = chains_lib.revise(policy, task, chunk, num_chains=num_chains,
                                 chain_length=chain_length, rng=jax.random.fold_in(key, c),
                                 sampler=sampler, max_new_tokens=max_new_tokens,
                                 rows_per_call=rows_per_call)
      return _records(task, policy.codec, chains)

    resumable.append_in_chunks(own, problems, questions_per_chunk, done, chunk_records,
                               f"revision ORM labels {split}")
  multihost.close_results(*result_file)
  uids = {p.uid for p in problems}
  samples = [s for r in labeling.read_labels(path) if r["uid"] in uids for s in r["samples"]]
  summary = {"path": path, "questions": len(uids), "attempts": len(samples),
             "correct": sum(s["correct"] for s in samples) / max(len(samples), 1)}
  print(f"label_revision_orm: {summary['attempts']} attempts of {len(uids)} questions of "
        f"{task.name} {split}, {summary['correct']:.3f} correct -> {path}")
  return summary
