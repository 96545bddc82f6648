"""Cost of step-by-step search against best-of-N, same problems, same run.

    python -m ttc.bench.search [--workdir=runs/verif] [--budgets=16,64]
        [--methods=best_of_n,beam_m4,beam_sqrt,lookahead_k1,dvts_m4] [--rows=1024] [--repeats=3]
        [--task=%TASK] [--policy=]

For each budget N it runs one batch of `rows // N` test problems (levels mixed,
grouped as the sweep groups them) through each method's compiled search program,
`repeats` times in turn (method after method, so machine noise hits all alike),
and prints the median device seconds per generated token and its ratio to
best-of-N's, plus PRM tokens run per generated token. Beam search pays for
stepping in lockstep: every round waits for the longest step of the batch.
Needs a work dir with a trained policy and PRM (configs/arith/verifiers_quick.gin).
The task is built by gin from the work dir's `config.gin`: `--task` is a gin value
(`%TASK`, the task the work dir was run with; or a registered name such as
"'arith_sft'"). `--policy`: another checkpoint to search with (a path or smollm2).
"""

import argparse
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc import workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.decoding import samplers
from ttc.search import methods, sweep
from ttc.search.callbacks import PrmCallbacks


@gin.configurable
def bench_task(task=gin.REQUIRED):
  """The task a gin value names (a binding target for `--task`)."""
  return task_lib.get(task)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/verif")
  parser.add_argument("--budgets", default="16,64")
  parser.add_argument("--methods", default="best_of_n,beam_m4,beam_sqrt,lookahead_k1,dvts_m4")
  parser.add_argument("--rows", type=int, default=1024, help="search rows per batch")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--task", default="%TASK", help="a gin value naming the task")
  parser.add_argument("--policy", default="", help="checkpoint ('' = the work dir's)")
  args = parser.parse_args()
  if not os.path.exists(os.path.join(args.workdir, "prm", "model_config.json")):
    raise SystemExit(f"error: no trained PRM in {args.workdir}/prm; run "
                     "configs/arith/verifiers_quick.gin first")
  from ttc import main as driver
  driver._import_configurables()
  # The work dir's own config binds the task it was run with (and the mesh).
  driver.parse_config([os.path.join(args.workdir, "config.gin")],
                      [f"bench_task.task = {args.task}"], [])
  task = bench_task()

  names = args.methods.split(",")
  with workdir_lib.device_context() as devices:
    loaded = workdir_lib.load_policy(args.policy, devices, args.workdir)
    prm_model, prm_params = workdir_lib.load_reward_model(os.path.join(args.workdir, "prm"),
                                                          devices, loaded.codec)
    programs = sweep.SearchPrograms(sweep.task_policy(task, loaded), PrmCallbacks(prm_model),
                                    loaded.params, prm_params)
    sampler = samplers.Temperature(jnp.float32(1.0))
    all_problems = task.problems("test")
    print(f"{'N':>5} {'method':<14}{'problems':>9}{'tokens':>9}{'device s':>10}"
          f"{'us/token':>10}{'vs best_of_n':>14}{'PRM/gen':>9}")
    for budget in map(int, args.budgets.split(",")):
      configs = {n: methods.make_config(n, budget, max_solution_tokens=144, max_step_tokens=32)
                 for n in names}
      times = {n: [] for n in names}
      tokens = {}
      for repeat in range(args.repeats + 1):  # the first pass compiles and warms up
        for name, config in configs.items():
          count = max(1, args.rows // config.num_rows)
          # Levels in turn, then grouped, as a sweep batch of mixed levels would be.
          problems = sorted(all_problems[::max(1, len(all_problems) // count)][:count],
                            key=lambda p: p.level)
          prompts = [loaded.codec.encode_prompt(task.prompt(p), task.chat) for p in problems]
          rows = sweep.run_batch(programs, config, task, loaded.codec, problems, prompts,
                                 jax.random.key(repeat), sampler)
          generated = sum(r["tokens_generated"] for r in rows)
          if repeat:  # each repeat samples anew: pair its time with its own tokens
            times[name].append((sum(r["wall_s"] for r in rows), generated))
          tokens[name] = (len(problems), generated, sum(r["prm_tokens"] for r in rows))
      base = None
      for name in names:
        problems, generated, prm = tokens[name]
        seconds = float(np.median([wall for wall, _ in times[name]]))
        per_token = float(np.median([wall / count for wall, count in times[name]]))
        base = base or per_token
        print(f"{budget:>5} {name:<14}{problems:>9}{generated:>9}{seconds:>10.2f}"
              f"{1e6 * per_token:>10.1f}{per_token / base:>13.2f}x{prm / generated:>9.3f}")


if __name__ == "__main__":
  main()
