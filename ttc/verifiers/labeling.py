"""Monte-Carlo step labels for a process reward model (paper App. D, after Math-Shepherd).

For each question the policy samples N solutions. Every step of a kept solution but the
last is labelled by R rollouts from the prefix that ends with it (the step delimiter
included): soft label = fraction of rollouts that reach the right answer, hard label =
any did. The last step's label is the solution's own correctness, as it is complete.

    prefix tokens = encode_prompt(prompt) + encode(text[:step_end + 1])

Output: `<workdir>/<labels_file>`, one JSON line per question (see `label_prm`), written a
chunk of questions at a time so a killed run resumes where it stopped and produces the same
file. `read_labels` parses it strictly; `register_prm_labels_task` serves it to seqio with a
stable train / validation split by uid.
"""

import dataclasses
import hashlib
import math
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from ttc import resumable
from ttc.data import arith, tasks, vocab
from ttc.decoding import samplers, sampling
from ttc.errors import UserError
from ttc.evaluate import load_policy, select_problems
from ttc.train import partitioning

# (key, type) of each question line and each of its samples; read_labels checks them.
QUESTION_KEYS = (("uid", str), ("question", str), ("prompt", str), ("answer", int),
                 ("level", int), ("num_sampled", int), ("samples", list))
SAMPLE_KEYS = (("text", str), ("correct", bool), ("soft", list), ("hard", list),
               ("true", list), ("step_ends", list))
_RERUN_HINT = "rerun label_prm (it repairs a last line cut by kill -9) or delete the file"
# label_prm itself only repairs the last line; damage elsewhere needs a person.
_DAMAGED_HINT = "only a cut last line is repaired: fix or delete that line, or the file"


# ----------------------------------------------------------------------------- steps


def step_end_offsets(solution_text: str) -> list[int]:
  """For each line of `arith.split_steps(solution_text)`, the index of the token ending it.

  Indices are into `CharVocabulary().encode(solution_text) + [EOS_ID]` (one token per
  character): the `\\n` after the line, or len(solution_text), the EOS, for a last line
  without a trailing delimiter. Empty lines are skipped as split_steps skips them.
  """
  ends, offset = [], 0
  for line in solution_text.split(arith.STEP_DELIMITER):
    if line.strip():
      ends.append(offset + len(line))
    offset += len(line) + len(arith.STEP_DELIMITER)
  return ends


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class Policy:
  """What every sampling call shares; max_new_tokens is the per-row budget in tokens."""

  model: object
  params: object
  sampler: samplers.Sampler
  max_new_tokens: int


def generate_texts(policy: Policy, prompts: list[list[int]], rng, num_samples: int,
                   prompts_per_call: int, progress: str = "") -> tuple[list[str], list[bool], int]:
  """`num_samples` continuations of each prompt, prompt-major, in calls of `prompts_per_call`.

  Call c draws from fold_in(rng, c), so the result depends only on the prompts, their order
  and the rng. Returns (texts without EOS, finished = stopped at EOS, tokens generated
  including each EOS). `progress`: a tqdm label, or "" for no progress bar.
  """
  char_vocab = vocab.CharVocabulary()
  texts, finished, num_tokens = [], [], 0
  starts = range(0, len(prompts), prompts_per_call)
  for call, start in enumerate(tqdm.tqdm(starts, desc=progress, disable=not progress or None)):
    out = sampling.sample_prompts(policy.model, policy.params,
                                  prompts[start:start + prompts_per_call],
                                  jax.random.fold_in(rng, call), policy.sampler,
                                  num_samples=num_samples, max_new_tokens=policy.max_new_tokens,
                                  eos_id=vocab.EOS_ID)
    tokens_BxG, lengths_B = np.asarray(out.tokens_BxG), np.asarray(out.lengths_B)
    texts.extend(char_vocab.decode(row[:n].tolist()) for row, n in zip(tokens_BxG, lengths_B))
    finished.extend((np.asarray(out.stop_reason_B) == sampling.StopReason.EOS).tolist())
    num_tokens += int(lengths_B.sum())
  return texts, finished, num_tokens


@dataclasses.dataclass
class _Counts:
  """What this run generated: rollout rows and tokens (EOS included)."""

  rollouts: int = 0
  tokens: int = 0


def _sample_solutions(policy: Policy, question_prompts: list, rng, num_solutions: int,
                      batch_size: int, counts: _Counts) -> list[list[str]]:
  """Per question, the texts of its parsable samples: stopped at EOS, with a `\\boxed{}`."""
  texts, finished, num_tokens = generate_texts(policy, question_prompts, rng, num_solutions,
                                               max(1, batch_size // num_solutions))
  counts.tokens += num_tokens
  return [[t for t, f in zip(texts[q * num_solutions:(q + 1) * num_solutions],
                             finished[q * num_solutions:(q + 1) * num_solutions])
           if f and arith.extract_answer(t) is not None]
          for q in range(len(question_prompts))]


def _rollout_wins(policy: Policy, problems: list, question_prompts: list, kept: list, rng,
                  num_rollouts: int, batch_size: int, counts: _Counts) -> list[dict]:
  """Per question, {step prefix text: rollouts (of num_rollouts) that end in its answer}.

  Prefixes are every step but the last of each kept solution, delimiter included.
  Identical prefixes of one question (solutions that agree on their first steps) share one
  set of rollouts: they ask the policy the same question.
  """
  prefixes = {}  # (question index, prefix text) -> first-seen order
  for q, solutions in enumerate(kept):
    for text in solutions:
      for end in step_end_offsets(text)[:-1]:
        prefixes.setdefault((q, text[:end + 1]), len(prefixes))
  wins = [dict() for _ in problems]
  if not prefixes:
    return wins
  # Similar lengths share a call: less padding, and their rollouts end at similar steps.
  keys = sorted(prefixes, key=lambda k: (len(problems[k[0]].prompt) + len(k[1]), prefixes[k]))
  char_vocab = vocab.CharVocabulary()
  rollouts, finished, num_tokens = generate_texts(
      policy, [question_prompts[q] + char_vocab.encode(prefix) for q, prefix in keys], rng,
      num_rollouts, max(1, batch_size // num_rollouts))
  for j, (q, prefix) in enumerate(keys):
    rows = range(j * num_rollouts, (j + 1) * num_rollouts)
    # A rollout that ran out of budget is no finished solution, so it counts as wrong.
    wins[q][prefix] = sum(finished[r] and arith.grade(prefix + rollouts[r], problems[q].answer)
                          for r in rows)
  counts.rollouts += len(rollouts)
  counts.tokens += num_tokens
  return wins


def _sample_record(problem: arith.ArithProblem, text: str, wins: dict,
                   num_rollouts: int) -> dict:
  """One kept solution's labels; `wins` maps each step prefix to its correct rollouts."""
  ends = step_end_offsets(text)
  correct = arith.grade(text, problem.answer)
  soft = [wins[text[:end + 1]] / num_rollouts for end in ends[:-1]] + [float(correct)]
  return {"text": text, "correct": correct, "soft": soft, "hard": [s > 0 for s in soft],
          "true": arith.step_correctness(problem.question, text), "step_ends": ends}


def _label_chunk(policy: Policy, problems: list, rng, num_solutions: int, num_rollouts: int,
                 batch_size: int, counts: _Counts) -> list[dict]:
  """One JSON record per problem of the chunk; a pure function of (problems, rng, settings).

  Solutions draw from fold_in(rng, 0), rollouts from fold_in(rng, 1).
  """
  question_prompts = [tasks.encode_prompt(p.prompt) for p in problems]
  kept = _sample_solutions(policy, question_prompts, jax.random.fold_in(rng, 0), num_solutions,
                           batch_size, counts)
  wins = _rollout_wins(policy, problems, question_prompts, kept, jax.random.fold_in(rng, 1),
                       num_rollouts, batch_size, counts)
  return [{"uid": p.uid, "question": p.question, "prompt": p.prompt, "answer": p.answer,
           "level": p.level, "num_sampled": num_solutions,
           "samples": [_sample_record(p, t, wins[q], num_rollouts) for t in kept[q]]}
          for q, p in enumerate(problems)]


# ----------------------------------------------------------------------------- the file


def _check_record(record, where: str) -> None:
  """Raises ValueError (prefixed by `where`) unless `record` is one well-formed question line."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object")
  for key, kind in QUESTION_KEYS:
    if not isinstance(record.get(key), kind) or (kind is int and isinstance(record[key], bool)):
      raise ValueError(f"{where}: missing or non-{kind.__name__} key {key!r}")
  for i, sample in enumerate(record["samples"]):
    at = f"{where}: uid {record['uid']} sample {i}"
    if not isinstance(sample, dict):
      raise ValueError(f"{at} is not a JSON object")
    for key, kind in SAMPLE_KEYS:
      if not isinstance(sample.get(key), kind):
        raise ValueError(f"{at}: missing or non-{kind.__name__} key {key!r}")
    _check_sample_labels(sample, at)


def _check_sample_labels(sample: dict, at: str) -> None:
  lengths = {key: len(sample[key]) for key in ("soft", "hard", "true", "step_ends")}
  if len(set(lengths.values())) != 1 or sample["step_ends"] != step_end_offsets(sample["text"]):
    raise ValueError(f"{at}: label lengths {lengths} or step_ends do not match the "
                     f"{len(step_end_offsets(sample['text']))} steps of its text")
  for s in sample["soft"]:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
        math.isfinite(s) and 0 <= s <= 1):
      raise ValueError(f"{at}: soft label {s!r} is not a finite number in [0, 1]")
  if not all(isinstance(h, bool) for h in sample["hard"] + sample["true"]):
    raise ValueError(f"{at}: hard and true labels must be booleans")


def _parse_line(line: bytes, path: str, lineno: int, hint: str) -> dict:
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
  if not os.path.exists(path):
    raise UserError(f"PRM labels {path} not found; run label_prm first")
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  records, seen = [], {}
  for lineno, line in enumerate(lines[:-1], start=1):
    record = _parse_line(line, path, lineno, _RERUN_HINT)
    if record["uid"] in seen:
      raise UserError(f"{path} line {lineno}: uid {record['uid']} repeats line "
                      f"{seen[record['uid']]}; {_RERUN_HINT}")
    seen[record["uid"]] = lineno
    records.append(record)
  if lines[-1]:  # bytes after the last newline: a write cut by kill -9
    raise UserError(f"{path} line {len(lines)} is cut mid-line (no newline); {_RERUN_HINT}")
  return records


# ----------------------------------------------------------------------------- the stage


def _select_problems(task_name: str, split: str, num_questions: int) -> list:
  """Levels interleaved (one question of each in turn), so any prefix covers all levels."""
  by_level = {}
  for p in select_problems(task_name, split):
    by_level.setdefault(p.level, []).append(p)
  queues = list(by_level.values())
  interleaved = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
  return interleaved[:num_questions] if num_questions else interleaved


def _check_args(**positive):
  for name, value in positive.items():
    if value < 1:
      raise UserError(f"label_prm.{name} must be >= 1, got {value}")


def _summarize(path: str, problems: list, counts: _Counts) -> dict:
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
def label_prm(workdir: str, task_name: str = gin.REQUIRED, split: str = "train",
              num_questions: int = 0, num_solutions: int = 16, num_rollouts: int = 16,
              temperature: float = 1.0, max_new_tokens: int = 144, batch_size: int = 256,
              questions_per_chunk: int = 32, seed: int = 0,
              labels_file: str = "prm_labels.jsonl") -> dict:
  """Writes Monte-Carlo step labels of the policy in `workdir` to `<workdir>/<labels_file>`.

  One JSON line per question, in question order within each chunk:

    {"uid", "question", "prompt", "answer", "level", "num_sampled",
     "samples": [{"text", "correct", "soft": [float per step], "hard": [bool per step],
                  "true": [ground-truth bool per step], "step_ends": [int per step]}]}

  Samples that did not stop at EOS or have no `\\boxed{}` are dropped (a question may keep
  none: "samples": []). Steps are `arith.split_steps` lines; `step_ends` are token indices
  into encode(text) + [EOS] (see `step_end_offsets`).

  Args:
    num_questions: this many problems of the split, levels taken in turn; 0 = all.
    num_solutions: solutions sampled per question.
    num_rollouts: rollouts per step prefix; soft labels are multiples of 1 / num_rollouts.
    temperature: for solutions and rollouts alike.
    max_new_tokens: token budget of every solution and rollout.
    batch_size: sampled rows per call: batch_size // num_solutions questions, or
      batch_size // num_rollouts prefixes (at least one).
    questions_per_chunk: questions labelled, then written, together. Chunk c draws from
      fold_in(key(seed), c), so a rerun after kill -9 recomputes a cut chunk identically
      and appends only its missing questions. The settings that shape the labels, and the
      policy's checkpoint step, are kept in `<labels name>.settings.json`; a rerun with
      others is refused rather than mixing two experiments in one file.
  Returns:
    {"path", "questions", "solutions_sampled", "solutions_kept", "mean_soft",
     "rollouts_this_run", "tokens_this_run"}.
  """
  _check_args(num_solutions=num_solutions, num_rollouts=num_rollouts,
              max_new_tokens=max_new_tokens, batch_size=batch_size,
              questions_per_chunk=questions_per_chunk)
  if num_questions < 0 or temperature < 0:
    raise UserError("label_prm.num_questions and label_prm.temperature must be >= 0")
  problems = _select_problems(task_name, split, num_questions)
  path = os.path.join(workdir, labels_file)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  done = resumable.repair(path, lambda line, n: _parse_line(line, path, n, _DAMAGED_HINT),
                          lambda record: record["uid"], _DAMAGED_HINT)
  # Settings whose change would mix incomparable labels in one file. batch_size and
  # questions_per_chunk only regroup the sampling: changing them on resume still gives
  # valid labels, though not bit-identical to a straight run.
  settings = dict(task_name=task_name, split=split, num_solutions=num_solutions,
                  num_rollouts=num_rollouts, temperature=temperature,
                  max_new_tokens=max_new_tokens, seed=seed)

  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  counts = _Counts()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    model, params, step = load_policy(workdir, mesh, rules)
    resumable.pin_settings(path, {**settings, "policy_step": int(step)},
                           os.path.exists(path), "set label_prm.labels_file to a new name")
    policy = Policy(model, params, samplers.Temperature(jnp.float32(temperature)),
                    max_new_tokens)
    key = jax.random.key(seed)
    with tqdm.tqdm(total=len(problems), desc=f"label {split}", unit="question",
                   disable=None) as progress:
      for chunk_index, start in enumerate(range(0, len(problems), questions_per_chunk)):
        chunk = problems[start:start + questions_per_chunk]
        if any(p.uid not in done for p in chunk):
          records = _label_chunk(policy, chunk, jax.random.fold_in(key, chunk_index),
                                 num_solutions, num_rollouts, batch_size, counts)
          resumable.append_lines(path, [r for r in records if r["uid"] not in done])
        progress.update(len(chunk))

  summary = _summarize(path, problems, counts)
  print(f"label_prm: {summary['questions']} questions, {summary['solutions_kept']} of "
        f"{summary['solutions_sampled']} solutions kept, mean soft label "
        f"{summary['mean_soft']:.3f}; this run {counts.rollouts} rollouts, {counts.tokens} "
        f"tokens generated -> {path}")
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
      "inputs": tf.constant([r["prompt"] for r, _ in pairs], tf.string),
      "targets": tf.constant([s["text"] for s in samples], tf.string),
      "step_ends": _ragged([s["step_ends"] for s in samples], np.int32),
      "soft": _ragged([s["soft"] for s in samples], np.float32),
      "hard": _ragged([s["hard"] for s in samples], np.int32),
      "true": _ragged([s["true"] for s in samples], np.int32),
      "correct": tf.constant([int(s["correct"]) for s in samples], tf.int32),
      "uid": tf.constant([r["uid"] for r, _ in pairs], tf.string),
      "level": tf.constant([r["level"] for r, _ in pairs], tf.int64),
  })


@gin.configurable
def register_prm_labels_task(name: str, labels_path: str, validation_percent: int = 10) -> str:
  """Registers (or replaces) a seqio Task over a `label_prm` file; returns its name.

  Splits "train" and "validation" hold whole questions, by `split_of_uid`. The file is read
  when a dataset is requested, so registering may precede the labelling stage. Features:
  tokenized "inputs" (prompt) and "targets" (solution + EOS; `step_ends` index into it),
  int32 "step_ends" / "hard" / "true" and float32 "soft" [num_steps], int32 "correct",
  string "uid", int64 "level".
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
      output_features=tasks.output_features(),
  )
  return name
