"""Training data of the revision model (paper §6.1, App. H).

For each question the policy samples N solutions in parallel, at a high temperature;
the valid ones (stopped, with an extractable answer) split into correct and incorrect.
Each correct solution becomes one example: k ~ Uniform{0..max_context} incorrect
attempts as context (`choose_context`: the one closest to the correct solution by
character edit distance last, the others at random), the correct solution as target:

    inputs  = ttc.revision.context.revision_prompt(task, problem, context)
    targets = correct solution + EOS

Output: `<workdir>/<data_file>`, one JSON line per question (see `make_revision_data`),
written a chunk of questions at a time (`ttc.resumable`), so a killed run resumes where
it stopped and produces the same file. `read_revision_data` parses it strictly;
`register_revision_task` serves it to seqio for the trainer; `ttc.revision.model`'s
`train_revision` fine-tunes the policy on it.
"""

import copy
import os
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from etils import epath
from rapidfuzz.distance import Levenshtein

from ttc import multihost, resumable
from ttc import workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.data import vocab
from ttc.decoding import samplers
from ttc.errors import UserError
from ttc.revision import context as context_lib

# The PRM labelling stage samples and keeps solutions the same way; its sampling helpers
# and its question split by uid are shared rather than repeated.
from ttc.verifiers import labeling

# (key, types) of each question line and each of its examples; read_revision_data checks them.
QUESTION_KEYS = (("uid", (str,)), ("question", (str,)), ("prompt", (str,)), ("answer", (str,)),
                 ("level", (int,)), ("num_sampled", (int,)), ("num_correct", (int,)),
                 ("num_incorrect", (int,)), ("examples", (list,)))
EXAMPLE_KEYS = (("context", (list,)), ("target", (str,)), ("k", (int,)))
_RERUN_HINT = ("rerun make_revision_data (it repairs a last line cut by kill -9) or delete "
               "the file")
# make_revision_data itself only repairs the last line; damage elsewhere needs a person.
_DAMAGED_HINT = resumable.REPAIR_HINT


# ----------------------------------------------------------------------------- contexts


def choose_context(correct: str, incorrect: Sequence[str], k: int,
                   rng: np.random.Generator) -> list[str]:
  """The k incorrect attempts shown before `correct`, oldest first (paper §6.1).

  The last is the incorrect attempt with the smallest character edit distance
  (Levenshtein) to `correct`, the first of equals: the step the model learns last is
  then a small correction. The others are drawn uniformly without replacement from
  the rest, in draw order. k is capped at len(incorrect).
  """
  if k < 0:
    raise ValueError(f"k must be >= 0, got {k}")
  k = min(k, len(incorrect))
  if not k:
    return []
  closest = int(np.argmin([Levenshtein.distance(correct, text) for text in incorrect]))
  rest = [text for i, text in enumerate(incorrect) if i != closest]
  return [rest[i] for i in rng.choice(len(rest), size=k - 1, replace=False)] + [
      incorrect[closest]]


def _question_record(task: task_lib.Task, problem: task_lib.Problem, texts: list[str],
                     num_sampled: int, max_context: int, rng: np.random.Generator) -> dict:
  """One question's line: an example per correct solution among its valid `texts`."""
  correct = [task.grade(t, problem) for t in texts]
  wrong = [t for t, ok in zip(texts, correct) if not ok]
  examples = []
  for target in (t for t, ok in zip(texts, correct) if ok):
    k = int(rng.integers(0, max_context + 1))
    examples.append({"context": choose_context(target, wrong, k, rng), "target": target,
                     "k": k})
  return {"uid": problem.uid, "question": problem.question, "prompt": task.prompt(problem),
          "answer": problem.answer, "level": problem.level, "num_sampled": num_sampled,
          "num_correct": len(examples), "num_incorrect": len(wrong), "examples": examples}


def _revision_chunk(run, problems: list, rng, num_samples: int, max_context: int,
                    counts) -> list[dict]:
  """One JSON record per problem of the chunk; a pure function of (problems, rng, settings).

  Solutions draw from fold_in(rng, 0); the context sizes and draws from a numpy
  generator seeded by fold_in(rng, 1).
  """
  task, codec = run.task, run.policy.codec
  prompts = [codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
  kept = labeling.sample_solutions(run, prompts, jax.random.fold_in(rng, 0), num_samples,
                                    counts)
  draws = np.random.default_rng(
      np.asarray(jax.random.bits(jax.random.fold_in(rng, 1), (4,), jnp.uint32)))
  return [_question_record(task, p, texts, num_samples, max_context, draws)
          for p, texts in zip(problems, kept)]


# ----------------------------------------------------------------------------- the file


def _problem(record: dict) -> task_lib.Problem:
  """The question of a record, as the task's prompts take it."""
  return task_lib.Problem(uid=record["uid"], question=record["question"],
                          answer=record["answer"], level=record["level"])


def _check_keys(record, keys, where: str) -> None:
  if not isinstance(record, dict):
    raise TypeError(f"{where}: expected a JSON object")
  for key, kinds in keys:
    value = record.get(key)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
      raise ValueError(f"{where}: missing or non-{kinds[0].__name__} key {key!r}")


def _check_record(record, where: str) -> None:
  """Raises ValueError / TypeError (prefixed by `where`) unless `record` is one
  well-formed question line."""
  _check_keys(record, QUESTION_KEYS, where)
  for i, example in enumerate(record["examples"]):
    at = f"{where}: uid {record['uid']} example {i}"
    _check_keys(example, EXAMPLE_KEYS, at)
    attempts = example["context"]
    if not all(isinstance(a, str) for a in attempts) or len(attempts) > example["k"]:
      raise ValueError(f"{at}: context must be a list of at most k={example['k']} strings")
  counts = (record["num_correct"], record["num_incorrect"], record["num_sampled"])
  if (len(record["examples"]) != counts[0] or min(counts) < 0 or
      counts[0] + counts[1] > counts[2]):
    raise ValueError(f"{where}: {len(record['examples'])} examples, num_correct "
                     f"{counts[0]}, num_incorrect {counts[1]}, num_sampled {counts[2]} "
                     "disagree (one example per correct solution)")


def _parse_line(line: bytes, path: str, lineno: int, hint: str) -> dict:
  """One line's record; UserError naming the file, the 1-based line and `hint` if bad."""
  record = resumable.parse_json_line(line, path, lineno, hint)
  try:
    _check_record(record, f"{path} line {lineno}")
  except (TypeError, ValueError) as e:
    raise UserError(f"{e}; {hint}") from e
  return record


def read_revision_data(path: str) -> list[dict]:
  """All question records of a revision data file, in file order (format:
  `make_revision_data`).

  Raises:
    UserError: missing file; a line cut mid-way, not JSON, or malformed (naming the
      1-based line number); a repeated uid.
  """
  return resumable.read_records(
      path, lambda line, n: _parse_line(line, path, n, _RERUN_HINT), "make_revision_data",
      "revision data", key=lambda r: f"uid {r['uid']}", hint=_RERUN_HINT)


# ----------------------------------------------------------------------------- the stage


def _check_args(max_context: int, num_questions: int, temperature: float, **positive) -> None:
  for name, value in positive.items():
    if value < 1:
      raise UserError(f"make_revision_data.{name}={value} must be >= 1; set "
                      f"--gin.make_revision_data.{name}=N with N >= 1")
  for name, value in (("num_questions", num_questions), ("temperature", temperature)):
    if value < 0:
      raise UserError(f"make_revision_data.{name}={value} must be >= 0")
  if not 0 <= max_context <= context_lib.MAX_CONTEXT_ATTEMPTS:
    raise UserError(f"make_revision_data.max_context={max_context} must be in [0, "
                    f"{context_lib.MAX_CONTEXT_ATTEMPTS}]: a revision chain shows the model "
                    f"only its last {context_lib.MAX_CONTEXT_ATTEMPTS} attempts")


def longest_inputs(task: task_lib.Task, records: list[dict]):
  """Tokens of the longest revision prompt under the task's vocabulary (None without one)."""
  vocabulary = task.vocabulary()
  if vocabulary is None:
    return None
  lengths = [len(vocabulary.encode(context_lib.revision_prompt(task, _problem(r),
                                                               e["context"])))
             for r in records for e in r["examples"]]
  return max(lengths, default=0)


def _summarize(task: task_lib.Task, path: str, problems: list, tokens: int) -> dict:
  """Totals over the selected questions in the file (earlier runs included)."""
  uids = {p.uid for p in problems}
  records = [r for r in read_revision_data(path) if r["uid"] in uids]
  examples = [e for r in records for e in r["examples"]]
  return {"path": path, "questions": len(records),
          "solutions_sampled": sum(r["num_sampled"] for r in records),
          "solutions_correct": sum(r["num_correct"] for r in records),
          "examples": len(examples),
          "mean_context": (float(np.mean([len(e["context"]) for e in examples]))
                           if examples else float("nan")),
          "longest_inputs": longest_inputs(task, records), "tokens_this_run": tokens}


@gin.configurable(denylist=["workdir"])
def make_revision_data(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "train",
                       num_questions: int = 0, num_samples: int = 64, temperature: float = 1.0,
                       max_new_tokens: int = 144,
                       max_context: int = context_lib.MAX_CONTEXT_ATTEMPTS,
                       batch_size: int = 256, questions_per_chunk: int = 32, seed: int = 0,
                       data_file: str = "revision_data.jsonl") -> dict:
  """Writes the revision model's training data to `<workdir>/<data_file>`.

  One JSON line per question, in question order within each chunk:

    {"uid", "question", "prompt" (the task's plain prompt), "answer" (the reference,
     text), "level", "num_sampled", "num_correct", "num_incorrect" (valid solutions of
     each kind), "examples": [{"context": [incorrect solution text, oldest first],
                               "target": correct solution text, "k": int}]}

  One example per correct solution (a question with none has "examples": []); `k` is
  its draw from Uniform{0..max_context}, and the context holds min(k, num_incorrect)
  attempts (`choose_context`). Samples that did not stop (EOS or the chat's end of
  turn) or have no extractable answer are neither correct nor incorrect: dropped.

  Args:
    task: a `ttc.data.task.Task` (or a registered task name).
    policy: the checkpoint to sample ("" = this work dir's; a path or "smollm2").
    num_questions: this many problems of the split, levels taken in turn; 0 = all.
    num_samples: solutions sampled per question (the paper: 64).
    temperature: of every sample; higher than for evaluation gives more varied mistakes.
    max_new_tokens: token budget of every solution.
    max_context: the largest k, at most `MAX_CONTEXT_ATTEMPTS`.
    batch_size: sampled rows per call (batch_size // num_samples questions, at least one).
    questions_per_chunk: questions sampled, then written, together. Chunk c draws from
      fold_in(key(seed), c), so a rerun after kill -9 recomputes a cut chunk identically
      and appends only its missing questions. The settings that shape the data (the
      task and the policy's checkpoint included) are kept in `<data name>.settings.json`;
      a rerun with others is refused rather than mixing two experiments in one file.
  Returns:
    {"path", "questions", "solutions_sampled", "solutions_correct", "examples",
     "mean_context" (attempts per example), "longest_inputs" (tokens of the longest
     revision prompt in the task's vocabulary; None without one), "tokens_this_run"}.
  """
  task = task_lib.get(task)
  _check_args(max_context, num_questions, temperature, num_samples=num_samples,
              max_new_tokens=max_new_tokens, batch_size=batch_size,
              questions_per_chunk=questions_per_chunk)
  problems = task.select_in_turns(split, num_questions)
  path = os.path.join(workdir, data_file)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  # With several processes each appends its chunks to a part file, merged at the end.
  result_file = (path, lambda line, n: _parse_line(line, path, n, _DAMAGED_HINT),
                 lambda record: record["uid"], _DAMAGED_HINT)
  own, done = multihost.open_results(*result_file)
  # As in label_prm, batch_size and questions_per_chunk only regroup the work: changing
  # them on resume still gives valid data, though not bit-identical to a straight run.
  settings = {"task": task.name, "split": split, "num_samples": num_samples,
              "temperature": temperature, "max_new_tokens": max_new_tokens,
              "max_context": max_context, "seed": seed}

  counts = labeling.Counts()
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    resumable.pin_settings(path, {**settings, **loaded.describe()}, epath.Path(path).exists(),
                           "set make_revision_data.data_file to a new name")
    run = labeling.Sampling(loaded, task, samplers.Temperature(jnp.float32(temperature)),
                             max_new_tokens, batch_size)
    key = jax.random.key(seed)
    resumable.append_in_chunks(
        own, problems, questions_per_chunk, done,
        lambda c, chunk: _revision_chunk(run, chunk, jax.random.fold_in(key, c), num_samples,
                                         max_context, counts), f"revision data {split}")
  multihost.close_results(*result_file)

  summary = _summarize(task, path, problems, counts.tokens)
  longest = ("" if summary["longest_inputs"] is None else
             f", longest prompt {summary['longest_inputs']} tokens (train_revision.inputs_length)")
  print(f"make_revision_data: {summary['questions']} questions of {task.name} {split}, "
        f"{summary['solutions_correct']} of {summary['solutions_sampled']} solutions correct, "
        f"{summary['examples']} examples with {summary['mean_context']:.2f} attempts in "
        f"context on average{longest}; this run {counts.tokens} tokens generated -> {path}")
  return summary


# ----------------------------------------------------------------------------- seqio


def _revision_dataset(task: task_lib.Task, records: list[dict]) -> tf.data.Dataset:
  """One example per (question, correct solution): string inputs / targets / uid, int64
  level and attempts (in context)."""
  rows = [(context_lib.revision_prompt(task, _problem(r), e["context"]), e["target"], r["uid"],
           r["level"], len(e["context"])) for r in records for e in r["examples"]]
  inputs, targets, uids, levels, attempts = zip(*rows)
  return tf.data.Dataset.from_tensor_slices({
      "inputs": tf.constant(inputs, tf.string),
      "targets": tf.constant(targets, tf.string),
      "uid": tf.constant(uids, tf.string),
      "level": tf.constant(levels, tf.int64),
      "attempts": tf.constant(attempts, tf.int64),
  })


def _renamed(task: task_lib.Task, name: str) -> task_lib.Task:
  """`task` under another name; object.__setattr__ because tasks may be frozen dataclasses."""
  renamed = copy.copy(task)
  object.__setattr__(renamed, "name", name)
  return renamed


@gin.configurable
def register_revision_task(name: str, data_path: str, task,
                           validation_percent: int = 10) -> task_lib.Task:
  """Registers (or replaces) a seqio Task `name` over a `make_revision_data` file, and
  `task` under that name too; returns the latter.

  Examples: "inputs" = `revision_prompt(task, problem, context)`, "targets" = the correct
  solution + EOS, both tokenized with `task.vocabulary()`; string "uid", int64 "level"
  and "attempts" (in context). Splits "train" and "validation" hold whole questions, by
  `labeling.split_of_uid` (the PRM labels' split of the same questions). The file is
  read when a dataset is requested, so registering may precede the stage.

  The returned task is `task` renamed (the same problems, grading and prompts): the
  trainer reads the seqio task of its task's name (`train_revision` registers it and
  fine-tunes on it). Set inputs_length to at least make_revision_data's
  "longest_inputs": seqio keeps the first tokens of a longer input, which would cut the
  latest attempts (`train_revision` refuses such a length).
  """
  task = task_lib.get(task)
  if name == task.name:
    raise UserError(f"register_revision_task.name {name!r} is the task's own name, whose "
                    "seqio task is its SFT data; pick another, e.g. '{name}_revision'")
  if not 0 <= validation_percent <= 100:
    raise UserError(f"register_revision_task.validation_percent={validation_percent} must be "
                    "in [0, 100]")
  vocabulary = task.vocabulary()
  if vocabulary is None:
    raise UserError(f"task {task.name!r} has no vocabulary of its own (its policy brings a "
                    "tokenizer), and the ttc trainer fine-tunes character-vocabulary "
                    "policies only; use a task such as @register_arith_task()")

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    made_with = resumable.read_settings(data_path).get("task", task.name)
    if made_with != task.name:
      raise UserError(f"{data_path} was made for task {made_with!r}, not {task.name!r}; set "
                      "register_revision_task.task to the task it was made with")
    records = [r for r in read_revision_data(data_path)
               if labeling.split_of_uid(r["uid"], validation_percent) == split]
    if not any(r["examples"] for r in records):
      raise UserError(f"split {split!r} of {data_path} has no revision examples "
                      f"(validation_percent={validation_percent}); sample more questions")
    return _revision_dataset(task, records)

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=vocab.output_features(vocabulary),
  )
  return task_lib.register(_renamed(task, name))
