"""Evaluation stage: sample the trained policy, grade, report pass@k by difficulty."""

import collections
import json
import math
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ttc.data import arith, tasks, vocab
from ttc.decoding import samplers, sampling
from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.train import checkpointing, partitioning


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
  if num_samples < k:
    raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
  if num_samples - num_correct < k:
    return 1.0
  return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def load_model_config(workdir: str) -> ModelConfig:
  path = os.path.join(workdir, "model_config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: {workdir} is not a trained ttc work dir")
  with open(path) as f:
    return ModelConfig(**json.load(f))


def load_policy(workdir: str, mesh, rules):
  """(model, params placed in their mesh shardings, step) from a ttc work dir."""
  config = load_model_config(workdir)
  model = Transformer(config)
  abstract, _ = partitioning.abstract_params(model, mesh, rules)
  params, step = checkpointing.restore_params(os.path.join(workdir, "checkpoints"), abstract)
  return model, params, step


def select_problems(task_name: str, split: str, max_problems_per_level: int = 0):
  """The split's problems, the first `max_problems_per_level` of each level (0 = all)."""
  try:
    problems = tasks.problems_for(task_name, split)
  except ValueError as e:
    raise UserError(str(e)) from e
  if max_problems_per_level:
    per_level = collections.defaultdict(list)
    for p in problems:
      per_level[p.level].append(p)
    problems = [p for ps in per_level.values() for p in ps[:max_problems_per_level]]
  return problems


def format_table(rows: dict, ks) -> str:
  header = f"{'level':>7} {'problems':>8} " + " ".join(f"{f'pass@{k}':>8}" for k in ks)
  lines = [header]
  for name, row in rows.items():
    lines.append(f"{name:>7} {row['problems']:>8} " +
                 " ".join(f"{row[f'pass@{k}']:>8.3f}" for k in ks))
  return "\n".join(lines)


@gin.configurable(denylist=["workdir"])
def evaluate(workdir: str, task_name: str = gin.REQUIRED, split: str = "test",
             num_samples: int = 16, temperature: float = 1.0, ks=(1, 16),
             inputs_length: int = 32, max_new_tokens: int = 128, batch_size: int = 256,
             max_problems_per_level: int = 0, seed: int = 0):
  """Samples `num_samples` solutions per problem and writes eval_<split>.json.

  Returns {"overall": {...}, "level_1": {...}, ...} with pass@k for each k in `ks`.
  max_problems_per_level: 0 = all problems of the split.
  batch_size: sampled rows per step: batch_size // num_samples problems (at least one),
    each prefilled once and shared by its num_samples rows.
  """
  problems = select_problems(task_name, split, max_problems_per_level)
  if max(ks) > num_samples:
    raise UserError(f"pass@{max(ks)} needs num_samples >= {max(ks)}; got {num_samples}")
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  char_vocab = vocab.CharVocabulary()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    model, params, step = load_policy(workdir, mesh, rules)
    prompts = [tasks.encode_prompt(p.prompt) for p in problems]
    problems_per_batch = max(1, batch_size // num_samples)
    texts = []
    rng = jax.random.key(seed)
    for start in tqdm.trange(0, len(prompts), problems_per_batch, desc=f"sample {split}",
                             disable=None):
      chunk = prompts[start:start + problems_per_batch]
      chunk = chunk + [chunk[-1]] * (problems_per_batch - len(chunk))  # one compiled shape
      tokens, lengths = sampling.left_pad(chunk, inputs_length)
      out = sampling.sample_n(model, params, tokens, lengths, jax.random.fold_in(rng, start),
                              samplers.Temperature(jnp.float32(temperature)),
                              num_samples=num_samples, max_new_tokens=max_new_tokens,
                              eos_id=vocab.EOS_ID)
      # Rows are problem-major: num_samples consecutive rows per problem.
      texts.extend(char_vocab.decode(row.tolist()) for row in np.asarray(out.tokens_BxG))
  texts = texts[:len(problems) * num_samples]

  correct = collections.defaultdict(list)  # level -> correct counts per problem
  records = []
  for i, problem in enumerate(problems):
    samples = texts[i * num_samples:(i + 1) * num_samples]
    c = sum(arith.grade(t, problem.answer) for t in samples)
    correct[problem.level].append(c)
    records.append({"uid": problem.uid, "level": problem.level, "correct": c,
                    "samples": num_samples, "example": samples[0]})

  def summarize(counts):
    row = {"problems": len(counts)}
    for k in ks:
      row[f"pass@{k}"] = float(np.mean([pass_at_k(num_samples, c, k) for c in counts]))
    return row

  results = {f"level_{lvl}": summarize(correct[lvl]) for lvl in sorted(correct)}
  results["overall"] = summarize([c for lvl in correct for c in correct[lvl]])
  print(f"{split} split, checkpoint step {step}, {num_samples} samples/problem at "
        f"temperature {temperature}:")
  print(format_table(results, ks))
  with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
    json.dump({"step": step, "temperature": temperature, "num_samples": num_samples,
               "results": results}, f, indent=1)
  with open(os.path.join(workdir, f"eval_{split}_problems.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return results
