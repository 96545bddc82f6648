"""Stage `estimate_difficulty`: each test question's difficulty bin (paper §3.2).

    estimate_difficulty(workdir, task=..., policy="")   # "" = the work dir's own policy

For every question of the split the policy samples `num_samples` solutions (the
paper: 2048). Each is graded by the task and scored by the PRM in
`<workdir>/<prm_dir>`; a solution's score is its final-step score (PRM-last, as
`evaluate_verifiers` aggregates: `aggregation.solution_scores(..., "last")`, 0 for
a solution without steps). Two binnings follow (`ttc.allocation.bins`, bin 1 =
easiest):

  * oracle: quantile bins of pass@1 (uses the answer key);
  * predicted: quantile bins of the mean final PRM score over the same samples
    (no answer key), or none where `prm_dir` is "".

Output `<workdir>/<output_file>`, one JSON line per question:

    {"uid", "level", "samples": N, "correct": samples graded right,
     "pass_at_1": correct / N, "finished": samples that ended (EOS or a stop id;
     the others ran out of tokens and have no answer), "mean_final_score": mean PRM
     final-step score of the N samples in [0, 1] (null without a PRM),
     "final_scores": [N] each sample's final-step score, in sampling order, to 4
     decimals (null without a PRM; on-line allocation probes the first few),
     "tokens_generated": policy tokens sampled for the question, stop tokens included}

and beside it `<stem>_bins.json` (rewritten whole each run, atomically):

    {"num_bins", "questions", "oracle": {uid: bin}, "predicted": {uid: bin} | null,
     "summary": {"oracle": [per bin], "predicted": [per bin] | null}, each bin
       {"bin", "questions", "mean_pass_at_1", "mean_final_score" (null without a PRM)},
     "agreement": share of questions whose predicted bin is their oracle bin | null}

Resuming after `kill -9`: questions are sampled and written `questions_per_chunk`
at a time with one write and fsync; a cut last line is dropped and chunk c draws
from fold_in(key(seed), c) only, so a recomputed chunk gives the same lines.
Questions already in the file are not sampled again. The settings that shape the
numbers (task, split, policy, num_samples, temperature, max_new_tokens, prm_dir,
seed, max_problems_per_level) are pinned beside the file; a rerun with others is
refused. batch_size and questions_per_chunk only regroup the work: changing them
on resume still gives valid estimates, though not bit-identical to a straight run.
"""

import collections
import os
from typing import Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ttc import multihost, resumable, workdir as workdir_lib
from ttc.allocation import bins as bins_lib
from ttc.data import task as task_lib
from ttc.decoding import generation, samplers
from ttc.errors import UserError
from ttc.verifiers import aggregation, evaluation, scoring

STAGE = "estimate_difficulty"
FIELDS = ("uid", "level", "samples", "correct", "pass_at_1", "finished", "mean_final_score",
          "tokens_generated")
HINT = resumable.REPAIR_HINT
KINDS = ("oracle", "predicted")


# ----------------------------------------------------------------------------- the file


def parse_line(line: bytes, path: str, lineno: int) -> dict:
  """One question's line; UserError naming the file and line if it is not one."""
  record = resumable.parse_record(line, path, lineno, FIELDS, HINT)
  return record


def read_difficulty(path: str) -> list[dict]:
  """Every question's record of an `estimate_difficulty` file (schema: module docstring);
  UserError if it is missing, has a bad line or a last line cut by a kill."""
  return resumable.read_records(path, lambda line, n: parse_line(line, path, n), STAGE,
                                "difficulty estimates")


def bins_path(path: str) -> str:
  """Where the bins of the difficulty file `path` go: `<stem>_bins.json`."""
  return os.path.splitext(path)[0] + "_bins.json"


# ----------------------------------------------------------------------------- binning


def difficulty_bins(records: Sequence[dict], num_bins: int = 5) -> dict:
  """{"oracle": {uid: bin}, "predicted": {uid: bin} | None}; bin 1 = easiest.

  oracle bins rank pass_at_1, predicted bins mean_final_score (None where every
  record's is null: no verifier). Raises ValueError for fewer records than bins, or
  for a mix of scored and unscored records (two runs' lines in one file).
  """
  scores = [r["mean_final_score"] for r in records]
  if any(s is None for s in scores) and not all(s is None for s in scores):
    raise ValueError("some records have a mean_final_score and some do not: they come "
                     "from runs with and without a verifier")
  oracle = bins_lib.quantile_bins({r["uid"]: r["pass_at_1"] for r in records}, num_bins)
  predicted = (None if any(s is None for s in scores) else bins_lib.quantile_bins(
      {r["uid"]: r["mean_final_score"] for r in records}, num_bins))
  return {"oracle": oracle, "predicted": predicted}


def bin_summary(records: Sequence[dict], binning: dict, num_bins: int) -> list[dict]:
  """Per bin 1..num_bins: {"bin", "questions", "mean_pass_at_1", "mean_final_score"};
  means are None for an empty bin, the score also without a verifier."""
  members = collections.defaultdict(list)
  for r in records:
    members[binning[r["uid"]]].append(r)
  mean = lambda rows, k: (None if not rows or rows[0][k] is None
                          else float(np.mean([r[k] for r in rows])))
  return [{"bin": b, "questions": len(members[b]),
           "mean_pass_at_1": mean(members[b], "pass_at_1"),
           "mean_final_score": mean(members[b], "mean_final_score")}
          for b in range(1, num_bins + 1)]


def agreement(oracle: dict, predicted: Optional[dict]) -> Optional[float]:
  """The share of questions whose predicted bin is their oracle bin (None: no prediction)."""
  if predicted is None:
    return None
  return sum(predicted[uid] == b for uid, b in oracle.items()) / len(oracle)


def format_report(records: Sequence[dict], result: dict) -> str:
  """The per-bin tables, the agreement and the task's levels against the oracle bins."""
  number = lambda x: "       -" if x is None else f"{x:>8.3f}"
  lines = [f"{'bins':>9} {'bin':>3} {'questions':>9} {'pass@1':>8} {'score':>8}"]
  for kind in KINDS:
    for row in result["summary"][kind] or []:
      lines.append(f"{kind:>9} {row['bin']:>3} {row['questions']:>9} "
                   f"{number(row['mean_pass_at_1'])} {number(row['mean_final_score'])}")
  if result["predicted"] is None:
    lines.append("predicted bins: none (no verifier: estimate_difficulty.prm_dir = '')")
  else:
    lines.append(f"predicted bin = oracle bin for {result['agreement']:.3f} of the questions")
  # The task's own levels are a third difficulty measure; how they spread over the
  # oracle bins shows how far the policy's difficulty follows the task's.
  counts = collections.Counter((r["level"], result["oracle"][r["uid"]]) for r in records)
  columns = range(1, result["num_bins"] + 1)
  lines.append("questions by task level (rows) and oracle bin (columns):")
  lines.append(f"{'level':>5} " + " ".join(f"{f'bin {b}':>6}" for b in columns))
  for level in sorted({r["level"] for r in records}):
    lines.append(f"{level:>5} " + " ".join(f"{counts[level, b]:>6}" for b in columns))
  return "\n".join(lines)


def write_bins(path: str, records: Sequence[dict], num_bins: int) -> dict:
  """Bins `records` and writes `bins_path(path)` atomically (`resumable.write_json`); returns
  what it wrote (schema: module docstring)."""
  binned = difficulty_bins(records, num_bins)
  result = {"num_bins": num_bins, "questions": len(records), **binned,
            "summary": {kind: None if binned[kind] is None else
                        bin_summary(records, binned[kind], num_bins) for kind in KINDS},
            "agreement": agreement(binned["oracle"], binned["predicted"])}
  resumable.write_json(bins_path(path), result)
  return result


# ----------------------------------------------------------------------------- sampling


def _final_scores(prm, prm_params, task: task_lib.Task, codec, prompts: list[list[int]],
                  texts: list[str], num_samples: int, batch_size: int) -> np.ndarray:
  """[Q, N] float32 PRM-last score of each solution (0 for one without steps)."""
  seqs, ends = [], []
  for q, prompt in enumerate(prompts):
    s, e, _ = evaluation.solution_sequences(task, codec, prompt,
                                            texts[q * num_samples:(q + 1) * num_samples])
    seqs += s
    ends += e
  step_scores = scoring.score_solutions(prm, prm_params, seqs, ends, batch_size=batch_size)
  num_steps_B = np.asarray([len(s) for s in step_scores], np.int32)
  scores_BxT = np.zeros((len(step_scores), max([1, *num_steps_B])), np.float32)
  for b, s in enumerate(step_scores):
    scores_BxT[b, :len(s)] = s
  aggregation.validate_step_scores(scores_BxT, num_steps_B)
  last_B = np.asarray(aggregation.solution_scores(scores_BxT, num_steps_B, "last"))
  return last_B.reshape(len(prompts), num_samples)


def _chunk_records(policy, prm, prm_params, task: task_lib.Task, problems, rng, sampler, *,
                   num_samples: int, max_new_tokens: int, batch_size: int,
                   score_batch_size: int) -> list[dict]:
  """One record per problem of a chunk (schema: module docstring)."""
  codec = policy.codec
  prompts = [codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
  out = generation.generate_texts(
      policy, prompts, rng, sampler, num_samples=num_samples, max_new_tokens=max_new_tokens,
      prompts_per_call=batch_size // num_samples, stop_ids=codec.stop_ids(task.chat))
  texts, finished, tokens = out.texts, out.finished, out.lengths
  scores_QxN = (None if prm is None else
                _final_scores(prm, prm_params, task, codec, prompts, texts, num_samples,
                              score_batch_size))
  records = []
  for q, problem in enumerate(problems):
    rows = slice(q * num_samples, (q + 1) * num_samples)
    correct = 0
    for text, done in zip(texts[rows], finished[rows]):
      # As evaluate: a sample that never ended has no answer, so it is wrong.
      answer = task.extract_answer(text) if done else None
      correct += answer is not None and task.is_correct(answer, problem)
    records.append({
        "uid": problem.uid, "level": problem.level, "samples": num_samples,
        "correct": int(correct), "pass_at_1": correct / num_samples,
        "finished": int(sum(finished[rows])),
        "mean_final_score": None if scores_QxN is None else float(np.mean(scores_QxN[q])),
        # Each sample's score, in sampling order: on-line allocation reads the first few
        # as a probe (`ttc.allocation.online`). 4 decimals are far below the noise.
        "final_scores": None if scores_QxN is None else [round(float(x), 4)
                                                         for x in scores_QxN[q]],
        "tokens_generated": int(sum(tokens[rows]))})
  return records


# ----------------------------------------------------------------------------- the stage


@gin.configurable(denylist=["workdir"])
def estimate_difficulty(workdir: str, task=gin.REQUIRED, policy: str = "", split: str = "test",
                        num_samples: int = 64, temperature: float = 1.0,
                        max_new_tokens: int = 144, batch_size: int = 256,
                        questions_per_chunk: int = 32, prm_dir: str = "prm",
                        score_batch_size: int = 64, max_problems_per_level: int = 0,
                        num_bins: int = 5, seed: int = 0,
                        output_file: str = "difficulty_test.jsonl") -> dict:
  """Estimates every question's difficulty and bins them; see the module docstring.

  task: a `ttc.data.task.Task` (or a registered task name).
  policy: the checkpoint to sample ("" = this work dir's; a path or "smollm2").
  num_samples: solutions per question (the paper: 2048).
  max_new_tokens: token budget of each solution.
  batch_size: sampled rows per call (batch_size // num_samples questions, at least one).
  questions_per_chunk: questions sampled, scored, then written together.
  prm_dir: the PRM under the work dir ("" = none: no predicted bins).
  score_batch_size: sequences per PRM call.
  max_problems_per_level: the first so many questions of each level (0 = all).
  num_bins: quantile bins, each holding the same number of questions (within one).
  output_file: the per-question file in the work dir; the bins go beside it.
  Returns what `<stem>_bins.json` holds: {"num_bins", "questions", "oracle",
  "predicted", "summary", "agreement"}.
  """
  task = task_lib.get(task)
  for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens),
                      ("batch_size", batch_size), ("questions_per_chunk", questions_per_chunk),
                      ("score_batch_size", score_batch_size), ("num_bins", num_bins)):
    if value < 1:
      raise UserError(f"{STAGE}.{name} must be >= 1, got {value}")
  if temperature < 0:
    raise UserError(f"{STAGE}.temperature must be >= 0 (0 = greedy), got {temperature}")
  if max_problems_per_level < 0:
    raise UserError(f"{STAGE}.max_problems_per_level must be >= 0 (0 = all), got "
                    f"{max_problems_per_level}")
  problems = task.select(split, max_problems_per_level)
  if num_bins > len(problems):
    raise UserError(f"{STAGE}.num_bins={num_bins} needs at least that many questions, but "
                    f"{task.name} {split} (max_problems_per_level={max_problems_per_level}) "
                    f"has {len(problems)}; lower num_bins or raise max_problems_per_level")
  path = os.path.join(workdir, output_file)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  # With several processes each appends its chunks to a part file, merged at the end.
  result_file = (path, lambda line, n: parse_line(line, path, n),
                 lambda record: record["uid"], HINT)
  own, done = multihost.open_results(*result_file)
  settings = dict(task=task.name, split=split, num_samples=num_samples,
                  temperature=temperature, max_new_tokens=max_new_tokens, prm_dir=prm_dir,
                  seed=seed, max_problems_per_level=max_problems_per_level)

  with workdir_lib.device_context(multihost.local_devices()) as devices:
    loaded = workdir_lib.load_policy(policy, devices, workdir)
    # The PRM before any sampling: one that cannot read the policy's tokens is refused
    # before minutes of work.
    prm, prm_params = (workdir_lib.load_reward_model(os.path.join(workdir, prm_dir), devices,
                                                     loaded.codec) if prm_dir else (None, None))
    resumable.pin_settings(path, {**settings, **loaded.describe()}, epath.Path(path).exists(),
                           f"set {STAGE}.output_file to a new name")
    sampler = samplers.Temperature(jnp.float32(temperature))
    key = jax.random.key(seed)
    resumable.append_in_chunks(
        own, problems, questions_per_chunk, done,
        lambda c, chunk: _chunk_records(
            loaded, prm, prm_params, task, chunk, jax.random.fold_in(key, c), sampler,
            num_samples=num_samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
            score_batch_size=score_batch_size), f"difficulty {split}")
  multihost.close_results(*result_file)

  uids = {p.uid for p in problems}
  records = [r for r in read_difficulty(path) if r["uid"] in uids]
  result = write_bins(path, records, num_bins)
  print(f"{STAGE}: {len(records)} questions of {task.name} {split}, {num_samples} samples "
        f"each, policy {loaded.source or 'of the work dir'}; mean pass@1 "
        f"{np.mean([r['pass_at_1'] for r in records]):.3f} -> {path}, {bins_path(path)}")
  print(format_report(records, result))
  return result
