"""Monte-Carlo labelling throughput against plain `sample_n`, same policy, same run.

    python -m ttc.bench.labeling [--workdir=runs/arith_quickstart]
        [--gin_file=configs/arith/verifiers_paper.gin] [--questions=64]
        [--num_solutions=16] [--num_rollouts=16] [--batch_size=1024] [--repeats=3]

Labelling (`ttc.verifiers.labeling`) samples S solutions per question, then R rollouts
from every step prefix; each rollout stops at its own EOS, so a batch of rollouts is only
as fast as its rows stay busy. `sample_n` at N = 64 decodes 64 rows of one prompt for
G = max_new_tokens tokens without stopping: the rate of a decode step with every row
busy. Printed, alternating the two so that machine noise hits both:

  * sample_n tokens/s at N = 64 (median of `repeats`, compilation excluded);
  * labelling tokens/s over `questions` questions (a warm-up chunk first compiles
    the programs; its tokens are not counted), split into the solutions phase and
    the rollouts phase, and the ratio to sample_n's rate (issue 18: >= 0.5).

Tokens are generated tokens, stop tokens included (`labeling.Counts`). The task
(`PRM_TASK`), the token budget (`TARGETS_LENGTH`) and the temperature come from the gin
file, as `label_prm` gets them; the policy is the work dir's.
"""

import argparse
import os
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc import workdir as workdir_lib
from ttc.bench.common import REPO_ROOT, time_call
from ttc.data import task as task_lib
from ttc.decoding import samplers, sampling
from ttc.verifiers import labeling


@gin.configurable
def bench_label_settings(task=gin.REQUIRED, max_new_tokens: int = gin.REQUIRED):
  """(task, max_new_tokens): bind them to the gin file's macros that label_prm uses."""
  return task_lib.get(task), max_new_tokens


def sample_n_rate(policy, prompt: list[int], max_new_tokens: int, repeats: int) -> float:
  """Tokens/s of `sample_n` at N = 64 on one prompt, every row decoding G tokens."""
  tokens, lengths = sampling.left_pad([prompt], sampling.bucket(len(prompt), 16))
  sampler = samplers.Temperature(jnp.float32(1.0))

  def run(key):
    return sampling.sample_n(policy.model, policy.params, tokens, lengths, key, sampler,
                             num_samples=64, max_new_tokens=max_new_tokens, eos_id=-1)
  return 64 * max_new_tokens / time_call(run, jax.random.key(0), repeats=repeats)


def label_rates(run: labeling.Sampling, problems, num_solutions: int, num_rollouts: int,
                seed: int) -> dict:
  """Tokens and seconds of labelling `problems` in one chunk, per phase."""
  key = jax.random.key(seed)
  codec, task = run.policy.codec, run.task
  prompts = [codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
  solutions, rollouts = labeling.Counts(), labeling.Counts()
  start = time.perf_counter()
  kept = labeling.sample_solutions(run, prompts, jax.random.fold_in(key, 0), num_solutions,
                                    solutions)
  middle = time.perf_counter()
  labeling.rollout_wins(run, problems, prompts, kept, jax.random.fold_in(key, 1), num_rollouts,
                        rollouts)
  end = time.perf_counter()
  return {"solution_tokens": solutions.tokens, "solution_s": middle - start,
          "rollout_tokens": rollouts.tokens, "rollout_s": end - middle,
          "rollouts": rollouts.rollouts}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/arith_quickstart")
  parser.add_argument("--gin_file", default=os.path.join(REPO_ROOT,
                                                         "configs/arith/verifiers_paper.gin"))
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--num_solutions", type=int, default=16)
  parser.add_argument("--num_rollouts", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if not os.path.exists(os.path.join(args.workdir, "model_config.json")):
    raise SystemExit(f"error: no trained policy in {args.workdir}; run "
                     "configs/arith/quickstart.gin first")
  from ttc import main as driver
  driver._import_configurables()
  driver.parse_config([args.gin_file], [
      "bench_label_settings.task = %PRM_TASK",
      "bench_label_settings.max_new_tokens = %TARGETS_LENGTH"], [])
  task, max_new_tokens = bench_label_settings()
  temperature = gin.query_parameter("label_prm.temperature")

  with workdir_lib.device_context() as devices:
    policy = workdir_lib.load_policy("", devices, args.workdir)
    run = labeling.Sampling(policy, task, samplers.Temperature(jnp.float32(temperature)),
                             max_new_tokens, args.batch_size)
    problems = task.select_in_turns("train", 2 * args.questions)
    warm, measured = problems[args.questions:], problems[:args.questions]
    prompt = policy.codec.encode_prompt(task.prompt(measured[0]), task.chat)
    print(f"device: {jax.devices()[0].device_kind}; policy {args.workdir}; task {task.name}; "
          f"S={args.num_solutions} R={args.num_rollouts} batch {args.batch_size} rows, "
          f"G={max_new_tokens}", flush=True)
    label_rates(run, warm, args.num_solutions, args.num_rollouts, seed=1)  # compiles
    before = sample_n_rate(policy, prompt, max_new_tokens, args.repeats)
    got = label_rates(run, measured, args.num_solutions, args.num_rollouts, seed=0)
    after = sample_n_rate(policy, prompt, max_new_tokens, args.repeats)
  reference = float(np.mean([before, after]))
  total = (got["solution_tokens"] + got["rollout_tokens"]) / (got["solution_s"] + got["rollout_s"])
  print(f"sample_n N=64: {before:,.0f} tokens/s before, {after:,.0f} after labelling")
  for name, tokens, seconds in (
      ("solutions", got["solution_tokens"], got["solution_s"]),
      ("rollouts", got["rollout_tokens"], got["rollout_s"])):
    print(f"labelling {name:<9}: {tokens:>10,} tokens in {seconds:7.1f} s = "
          f"{tokens / seconds:>9,.0f} tokens/s ({tokens / seconds / reference:.2f} of sample_n)")
  print(f"labelling overall  : {total:,.0f} tokens/s = {total / reference:.2f} of sample_n "
        f"N=64 ({got['rollouts']:,} rollouts of {args.questions} questions)")


if __name__ == "__main__":
  main()
