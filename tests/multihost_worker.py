"""One process of a multi-process test run (tests/test_multihost.py), or the whole of a
one-process run:

  python tests/multihost_worker.py WORKDIR NUM_PROCESSES PROCESS_ID COORDINATOR

Through `ttc.stages.run`, on a work dir holding a random tiny policy, PRM labels and a
random PRM (`prm_fixed`): a short policy training (into `trained/`), a labelling run
of four one-question chunks, a short PRM training and a search sweep against the fixed
PRM (so that its results cannot depend on the PRM trained here). Each process has one
CPU device.
"""

import functools
import os
import sys

os.environ["XLA_FLAGS"] = ""  # one device per process
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gin

from tests.verifiers.conftest import POLICY_CONFIG
from tests.verifiers.test_training import TASK, _problems, _settings
from ttc import stages
from ttc.search import sweep
from ttc.train import reward_training, trainer
from ttc.verifiers import labeling


def main(workdir: str, num_processes: int, process_id: int, coordinator: str) -> None:
  _problems()  # registers the task (and its seqio task)
  steps = [
      functools.partial(trainer.train, task=TASK, num_steps=4, batch_size=8,
                        inputs_length=16, targets_length=48, checkpoint_every=2, log_every=1,
                        model_config=POLICY_CONFIG, output_dir="trained"),
      functools.partial(labeling.label_prm, task=TASK, split="train", num_questions=4,
                        num_solutions=2, num_rollouts=2, max_new_tokens=24, batch_size=8,
                        questions_per_chunk=1, labels_file="labels_run.jsonl"),
      functools.partial(reward_training.train_prm, task=TASK,
                        training=_settings(num_steps=4, eval_every=2, patience=10)),
      functools.partial(sweep.search_sweep, task=TASK, split="train",
                        method_names=("beam_m4",), budgets=(4,),
                        max_problems_per_level=2, max_solution_tokens=24, max_step_tokens=8,
                        rows_per_batch=8, prm_dir="prm_fixed", results_file="search.jsonl"),
  ]
  if num_processes > 1:
    gin.bind_parameter("initialize_distributed.coordinator_address", coordinator)
    gin.bind_parameter("initialize_distributed.num_processes", num_processes)
    gin.bind_parameter("initialize_distributed.process_id", process_id)
  stages.run(workdir=workdir, stages=steps, distributed=num_processes > 1)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
