"""Monte-Carlo step labels for a process reward model (paper App. D, after Math-Shepherd).

For each question the policy samples N solutions. Every step of a kept solution but the
last is labelled by R rollouts from the prefix that ends with it (the step delimiter
included): soft label = fraction of rollouts that reach the right answer, hard label =
any did. The last step's label is the solution's own correctness, as it is complete.

    prefix tokens = codec.encode_prompt(task.prompt(problem)) + codec.encode(text[:step_end + 1])

The task (`ttc.data.task.Task`) says what a step is, what the answer is and whether it is
right; the policy's codec (`ttc.workdir.Codec`) turns text into tokens.

Output: `<workdir>/<labels_file>`, one JSON line per question (see `label_prm`), written a
chunk of questions at a time so a killed run resumes where it stopped and produces the same
file. `read_labels` parses it strictly; `register_prm_labels_task` serves it to seqio with a
stable train / validation split by uid.
"""

import dataclasses
import hashlib
import math
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from ttc import multihost, resumable, workdir as workdir_lib
from ttc.data import task as task_lib, vocab
from ttc.decoding import generation, samplers
from ttc.errors import UserError

# (key, types) of each question line and each of its samples; read_labels checks them.
# `answer` was an int before tasks other than arith existed; such files still read.
# `true` is null for a task without a ground-truth step checker.
QUESTION_KEYS = (("uid", (str,)), ("question", (str,)), ("prompt", (str,)),
                 ("answer", (str, int)), ("level", (int,)), ("num_sampled", (int,)),
                 ("samples", (list,)))
SAMPLE_KEYS = (("text", (str,)), ("correct", (bool,)), ("soft", (list,)), ("hard", (list,)),
               ("true", (list, type(None))), ("step_ends", (list,)))
_RERUN_HINT = "rerun label_prm (it repairs a last line cut by kill -9) or delete the file"
# label_prm itself only repairs the last line; damage elsewhere needs a person.
DAMAGED_HINT = resumable.REPAIR_HINT


# ----------------------------------------------------------------------------- steps


def step_end_tokens(task: task_lib.Task, codec, text: str) -> list[int]:
  """For each step of `task.split_steps(text)`, the index of the token that ends it.

  Indices are into `codec.encode(text) + [EOS]`: the token holding the step's last
  character (its delimiter), or the EOS, len(codec.encode(text)), for a last step
  without a delimiter after it. For the character vocabulary a token index is a
  character index, so these equal `task.step_end_offsets(text)`.
  """
  return codec.token_index_of_char(text, task.step_end_offsets(text))


def solution_tokens(task: task_lib.Task, codec, prompt_ids: list[int],
                    text: str) -> tuple[list[int], list[int]]:
  """(prompt_ids + codec.encode(text) + [end id], index of each step's last token in it).

  What a verifier reads for one solution: the last index is the end token (EOS, or the
  chat's end of turn), where the final step and a whole solution are scored.
  """
  ids = list(prompt_ids) + codec.encode(text) + [codec.end_id(task.chat)]
  return ids, [len(prompt_ids) + e for e in step_end_tokens(task, codec, text)]


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class Sampling:
  """What every sampling call of a run shares; max_new_tokens is the per-row budget."""

  policy: workdir_lib.Policy
  task: task_lib.Task
  sampler: samplers.Sampler
  max_new_tokens: int
  batch_size: int

  def generate(self, prompts: list[list[int]], rng, num_samples: int):
    return generation.generate_texts(
        self.policy, prompts, rng, self.sampler, num_samples=num_samples,
        max_new_tokens=self.max_new_tokens,
        prompts_per_call=max(1, self.batch_size // num_samples),
        stop_ids=self.policy.codec.stop_ids(self.task.chat))


@dataclasses.dataclass
class Counts:
  """What this run generated: rollout rows and tokens (EOS included)."""

  rollouts: int = 0
  tokens: int = 0


def sample_solutions(run: Sampling, question_prompts: list, rng, num_solutions: int,
                      counts: Counts) -> list[list[str]]:
  """Per question, the texts of its parsable samples: stopped at EOS, with an answer."""
  out = run.generate(question_prompts, rng, num_solutions)
  counts.tokens += out.num_tokens
  kept = []
  for q in range(len(question_prompts)):
    texts, finished = out.per_prompt(q, num_solutions)
    kept.append([t for t, f in zip(texts, finished)
                 if f and run.task.extract_answer(t) is not None])
  return kept


def rollout_wins(run: Sampling, problems: list, question_prompts: list, kept: list, rng,
                  num_rollouts: int, counts: Counts) -> list[dict]:
  """Per question, {step prefix text: rollouts (of num_rollouts) that end in its answer}.

  Prefixes are every step but the last of each kept solution, delimiter included.
  Identical prefixes of one question (solutions that agree on their first steps) share one
  set of rollouts: they ask the policy the same question.
  """
  prefixes = {}  # (question index, prefix text) -> first-seen order
  remaining = {}  # the same key -> characters the solutions that share it wrote after it
  for q, solutions in enumerate(kept):
    for text in solutions:
      for end in run.task.step_end_offsets(text)[:-1]:
        prefixes.setdefault((q, text[:end + 1]), len(prefixes))
        remaining.setdefault((q, text[:end + 1]), []).append(len(text) - end - 1)
  wins = [dict() for _ in problems]
  if not prefixes:
    return wins
  ids = {k: question_prompts[k[0]] + run.policy.codec.encode(k[1]) for k in prefixes}
  # A call decodes until its longest rollout stops, so rollouts that should take about as
  # long share a call: sorted by what the sampled solutions wrote after the prefix, then
  # by prefix length (less padding).
  keys = sorted(prefixes, key=lambda k: (np.mean(remaining[k]), len(ids[k]), prefixes[k]))
  out = run.generate([ids[k] for k in keys], rng, num_rollouts)
  for j, (q, prefix) in enumerate(keys):
    rollouts, finished = out.per_prompt(j, num_rollouts)
    # A rollout that ran out of budget is no finished solution, so it counts as wrong.
    wins[q][prefix] = sum(f and run.task.grade(prefix + r, problems[q])
                          for r, f in zip(rollouts, finished))
  counts.rollouts += len(out.texts)
  counts.tokens += out.num_tokens
  return wins


def _sample_record(run: Sampling, problem: task_lib.Problem, text: str, wins: dict,
                   num_rollouts: int) -> dict:
  """One kept solution's labels; `wins` maps each step prefix to its correct rollouts."""
  task = run.task
  ends = task.step_end_offsets(text)
  correct = task.grade(text, problem)
  soft = [wins[text[:end + 1]] / num_rollouts for end in ends[:-1]] + [float(correct)]
  true = task.step_correctness(problem, text) if task.has_step_checker else None
  return {"text": text, "correct": correct, "soft": soft, "hard": [s > 0 for s in soft],
          "true": true, "step_ends": step_end_tokens(task, run.policy.codec, text)}


def _label_chunk(run: Sampling, problems: list, rng, num_solutions: int,
                 num_rollouts: int, counts: Counts) -> list[dict]:
  """One JSON record per problem of the chunk; a pure function of (problems, rng, settings).

  Solutions draw from fold_in(rng, 0), rollouts from fold_in(rng, 1).
  """
  task, codec = run.task, run.policy.codec
  question_prompts = [codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
  kept = sample_solutions(run, question_prompts, jax.random.fold_in(rng, 0), num_solutions,
                           counts)
  wins = rollout_wins(run, problems, question_prompts, kept, jax.random.fold_in(rng, 1),
                       num_rollouts, counts)
  return [{"uid": p.uid, "question": p.question, "prompt": task.prompt(p), "answer": p.answer,
           "level": p.level, "num_sampled": num_solutions,
           "samples": [_sample_record(run, p, t, wins[q], num_rollouts) for t in kept[q]]}
          for q, p in enumerate(problems)]


# ----------------------------------------------------------------------------- the file


def _check_record(record, where: str) -> None:
  """Raises ValueError (prefixed by `where`) unless `record` is one well-formed question line."""

  def well_typed(value, kinds):
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)

  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object")
  for key, kinds in QUESTION_KEYS:
    if not well_typed(record.get(key), kinds):
      raise ValueError(f"{where}: missing or non-{kinds[0].__name__} key {key!r}")
  for i, sample in enumerate(record["samples"]):
    at = f"{where}: uid {record['uid']} sample {i}"
    if not isinstance(sample, dict):
      raise ValueError(f"{at} is not a JSON object")
    for key, kinds in SAMPLE_KEYS:
      if key not in sample or not well_typed(sample[key], kinds):
        raise ValueError(f"{at}: missing or non-{kinds[0].__name__} key {key!r}")
    if not isinstance(sample.get("prompt", ""), str):
      raise ValueError(f"{at}: its own 'prompt' must be a string")
    _check_sample_labels(sample, at)


def _check_sample_labels(sample: dict, at: str) -> None:
  """Labels per step agree in number, and step ends are increasing token indices.

  Whether they are the steps of the text needs the task and the tokenizer, which a labels
  file does not name; label_prm computes both from them.
  """
  keys = ("soft", "hard", "step_ends") + (() if sample["true"] is None else ("true",))
  lengths = {key: len(sample[key]) for key in keys}
  ends = sample["step_ends"]
  if (len(set(lengths.values())) != 1 or not ends or
      not all(isinstance(e, int) and not isinstance(e, bool) for e in ends) or
      ends[0] < 0 or any(a >= b for a, b in zip(ends, ends[1:]))):
    raise ValueError(f"{at}: label lengths {lengths} disagree, or step_ends {ends} are not "
                     "increasing token indices, one per step of the text")
  for s in sample["soft"]:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
        math.isfinite(s) and 0 <= s <= 1):
      raise ValueError(f"{at}: soft label {s!r} is not a finite number in [0, 1]")
  if not all(isinstance(h, bool) for h in sample["hard"] + (sample["true"] or [])):
    raise ValueError(f"{at}: hard and true labels must be booleans")


def parse_line(line: bytes, path: str, lineno: int, hint: str = DAMAGED_HINT) -> dict:
  """One line's record; UserError naming the file, the 1-based line and `hint` if bad."""
  record = resumable.parse_json_line(line, path, lineno, hint)
  try:
    _check_record(record, f"{path} line {lineno}")
  except ValueError as e:
    raise UserError(f"{e}; {hint}") from e
  return record


def read_labels(path: str) -> list[dict]:
  """All question records of a labels file, in file order (format: see `label_prm`).

  Raises:
    UserError: missing file; a line cut mid-way, not JSON, or missing keys (naming the
      1-based line number); inconsistent labels of a sample; a repeated uid.
  """
  return resumable.read_records(path, lambda line, n: parse_line(line, path, n, _RERUN_HINT),
                                "label_prm", "PRM labels", key=lambda r: f"uid {r['uid']}",
                                hint=_RERUN_HINT)


# ----------------------------------------------------------------------------- the stage


def _check_args(**positive):
  for name, value in positive.items():
    if value < 1:
      raise UserError(f"label_prm.{name} must be >= 1, got {value}")


def _summarize(path: str, problems: list, counts: Counts) -> dict:
  """Totals over the selected questions in the file (earlier runs included)."""
  uids = {p.uid for p in problems}
  records = [r for r in read_labels(path) if r["uid"] in uids]
  samples = [s for r in records for s in r["samples"]]
  soft = [x for s in samples for x in s["soft"]]
  return {"path": path, "questions": len(records),
          "solutions_sampled": sum(r["num_sampled"] for r in records),
          "solutions_kept": len(samples),
          "mean_soft": float(np.mean(soft)) if soft else float("nan"),
          "rollouts_this_run": counts.rollouts, "tokens_this_run": counts.tokens}


@gin.configurable(denylist=["workdir"])
def label_prm(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "train",
              num_questions: int = 0, num_solutions: int = 16, num_rollouts: int = 16,
              temperature: float = 1.0, max_new_tokens: int = 144, batch_size: int = 256,
              questions_per_chunk: int = 32, seed: int = 0,
              labels_file: str = "prm_labels.jsonl") -> dict:
  """Writes Monte-Carlo step labels of a policy's samples to `<workdir>/<labels_file>`.

  One JSON line per question, in question order within each chunk:

    {"uid", "question", "prompt", "answer" (the reference, text), "level", "num_sampled",
     "samples": [{"text", "correct", "soft": [float per step], "hard": [bool per step],
                  "true": [ground-truth bool per step] or null, "step_ends": [int per step]}]}

  A sample may also carry its own "prompt", which replaces the question's for it (the
  revision verifier's data: an attempt after its context, `ttc.revision.verifier`).
  Samples that did not stop (EOS or the chat's end of turn) or have no extractable answer
  are dropped (a question may keep none: "samples": []). Steps are `task.split_steps`;
  `step_ends` are token indices into codec.encode(text) + [EOS] (see `step_end_tokens`).
  "true" is null where the task has no ground-truth step checker.

  Args:
    task: a `ttc.data.task.Task` (or a registered task name).
    policy: the checkpoint to sample ("" = this work dir's; a path or "smollm2").
    num_questions: this many problems of the split, levels taken in turn; 0 = all.
    num_solutions: solutions sampled per question.
    num_rollouts: rollouts per step prefix; soft labels are multiples of 1 / num_rollouts.
    temperature: for solutions and rollouts alike.
    max_new_tokens: token budget of every solution and rollout.
    batch_size: sampled rows per call: batch_size // num_solutions questions, or
      batch_size // num_rollouts prefixes (at least one).
    questions_per_chunk: questions labelled, then written, together. Chunk c draws from
      fold_in(key(seed), c), so a rerun after kill -9 recomputes a cut chunk identically
      and appends only its missing questions. The settings that shape the labels (the
      task and the policy's checkpoint included) are kept in `<labels name>.settings.json`;
      a rerun with others is refused rather than mixing two experiments in one file.
  Returns:
    {"path", "questions", "solutions_sampled", "solutions_kept", "mean_soft",
     "rollouts_this_run", "tokens_this_run"}.
  """
  task = task_lib.get(task)
  _check_args(num_solutions=num_solutions, num_rollouts=num_rollouts,
              max_new_tokens=max_new_tokens, batch_size=batch_size,
              questions_per_chunk=questions_per_chunk)
  if num_questions < 0 or temperature < 0:
    raise UserError("label_prm.num_questions and label_prm.temperature must be >= 0")
  problems = task.select_in_turns(split, num_questions)
  path = os.path.join(workdir, labels_file)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  # With several processes each appends its chunks to a part file, merged at the end.
  results = (path, lambda line, n: parse_line(line, path, n, DAMAGED_HINT),
             lambda record: record["uid"], DAMAGED_HINT)
  own, done = multihost.open_results(*results)
  # Settings whose change would mix incomparable labels in one file. batch_size and
  # questions_per_chunk only regroup the sampling: changing them on resume still gives
  # valid labels, though not bit-identical to a straight run.
  settings = dict(task=task.name, split=split, num_solutions=num_solutions,
                  num_rollouts=num_rollouts, temperature=temperature,
                  max_new_tokens=max_new_tokens, seed=seed)

  counts = Counts()
  with workdir_lib.device_context(multihost.local_devices()) as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    # The work dir's own policy is pinned as "", not by its path, so a moved work dir
    # still resumes.
    resumable.pin_settings(path, {**settings, **loaded.describe()},
                           epath.Path(path).exists(), "set label_prm.labels_file to a new name")
    run = Sampling(loaded, task, samplers.Temperature(jnp.float32(temperature)),
                    max_new_tokens, batch_size)
    key = jax.random.key(seed)
    resumable.append_in_chunks(
        own, problems, questions_per_chunk, done,
        lambda c, chunk: _label_chunk(run, chunk, jax.random.fold_in(key, c), num_solutions,
                                      num_rollouts, counts), f"label {split}")
  multihost.close_results(*results)

  summary = _summarize(path, problems, counts)
  print(f"label_prm: {summary['questions']} questions of {task.name} {split}, "
        f"{summary['solutions_kept']} of {summary['solutions_sampled']} solutions kept, mean "
        f"soft label {summary['mean_soft']:.3f}; this run {counts.rollouts} rollouts, "
        f"{counts.tokens} tokens generated -> {path}")
  return summary


# ----------------------------------------------------------------------------- seqio


def _check_percent(validation_percent: int) -> None:
  if not 0 <= validation_percent <= 100:
    raise ValueError(f"validation_percent must be in [0, 100], got {validation_percent}")


def split_of_uid(uid: str, validation_percent: int) -> str:
  """"train" or "validation" for a question uid; stable across runs (not Python's hash())."""
  _check_percent(validation_percent)
  # Salted so the split is independent of arith's own split-by-question hash.
  bucket = int.from_bytes(hashlib.sha256(f"prm-split/{uid}".encode()).digest()[:8], "big") % 100
  return "validation" if bucket < validation_percent else "train"


def _ragged(rows: list, dtype) -> tf.RaggedTensor:
  """[num_examples, None] from python lists; explicit dtypes keep an empty split well typed."""
  flat = np.asarray([x for row in rows for x in row], dtype)
  return tf.RaggedTensor.from_row_lengths(flat, np.asarray([len(r) for r in rows], np.int64))


def _labels_dataset(records: list[dict]) -> tf.data.Dataset:
  """One example per (question, kept sample); per-step features are [num_steps]."""
  pairs = [(r, s) for r in records for s in r["samples"]]
  samples = [s for _, s in pairs]
  return tf.data.Dataset.from_tensor_slices({
      # A sample may carry its own prompt (a revision attempt's context).
      "inputs": tf.constant([s.get("prompt", r["prompt"]) for r, s in pairs], tf.string),
      "targets": tf.constant([s["text"] for s in samples], tf.string),
      # The same texts untokenized, for a policy with its own tokenizer (reward training).
      "prompt_text": tf.constant([s.get("prompt", r["prompt"]) for r, s in pairs], tf.string),
      "solution_text": tf.constant([s["text"] for s in samples], tf.string),
      "step_ends": _ragged([s["step_ends"] for s in samples], np.int32),
      "soft": _ragged([s["soft"] for s in samples], np.float32),
      "hard": _ragged([s["hard"] for s in samples], np.int32),
      # -1 per step: the task had no step checker.
      "true": _ragged([s["true"] if s["true"] is not None else [-1] * len(s["soft"])
                       for s in samples], np.int32),
      "correct": tf.constant([int(s["correct"]) for s in samples], tf.int32),
      "uid": tf.constant([r["uid"] for r, _ in pairs], tf.string),
      "level": tf.constant([r["level"] for r, _ in pairs], tf.int64),
  })


@gin.configurable
def register_prm_labels_task(name: str, labels_path: str, validation_percent: int = 10,
                             vocabulary=None) -> str:
  """Registers (or replaces) a seqio Task over a `label_prm` file; returns its name.

  Splits "train" and "validation" hold whole questions, by `split_of_uid`. The file is read
  when a dataset is requested, so registering may precede the labelling stage. Features:
  "inputs" (prompt) and "targets" (solution + EOS; `step_ends` index into it) tokenized
  with `vocabulary` (default: the character vocabulary), int32 "step_ends" / "hard" /
  "true" (-1 where the task has no step checker) and float32 "soft" [num_steps], int32
  "correct", string "uid", int64 "level", and the untokenized strings "prompt_text" and
  "solution_text" (for a policy with its own tokenizer, which a seqio vocabulary cannot run).
  """
  _check_percent(validation_percent)  # fail at registration, not at the first dataset

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    records = [r for r in read_labels(labels_path)
               if split_of_uid(r["uid"], validation_percent) == split]
    if not any(r["samples"] for r in records):
      raise UserError(f"split {split!r} of {labels_path} has no labelled samples "
                      f"(validation_percent={validation_percent}); label more questions")
    return _labels_dataset(records)

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=vocab.output_features(vocabulary),
  )
  return name
