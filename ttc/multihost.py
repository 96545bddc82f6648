"""One home for running on several processes: TPU pod hosts, GPU nodes, or CPU processes
on loopback (`jax.distributed` with gloo collectives).

With one process every function here is the identity or a no-op, so stages call them
unconditionally. With several:

  * Process 0 is the only writer of shared files (config.gin, settings, metrics,
    reports, merged results): `is_writer()`.
  * Sampling stages (labelling, sweeps, difficulty) split their units of work by
    process: unit u belongs to process u % count (`owns`). Each process samples with
    its own devices (`local_devices`: the policy replicated per host, problems split
    across hosts, so no process waits on another's chunk) and appends to its own part
    file `<file>.part-<index>-of-<count>` (`open_results`). When the stage is done,
    process 0 folds the parts into the file and removes them (`close_results`).
    Because a unit draws its randomness from its index, not from the process that runs
    it, the merged file holds the records a one-process run writes.
  * Training uses the global mesh. Every process reads the same global batch stream
    and places the rows its devices hold (`global_batch`), so a step sees the batch a
    one-process run sees. Reading the whole stream on every host is cheap for the
    tasks here; a corpus too large for that would shard its reading by host instead.

A rerun after kill -9, with any number of processes, first folds the parts an earlier
run left into the file, so its keys count as done.
"""

import re
from typing import Any, Callable, Hashable, Optional

import gin
import jax
import numpy as np
from etils import epath

from ttc import resumable

_PART = re.compile(r"\.part-(\d+)-of-(\d+)$")


@gin.configurable("initialize_distributed")
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """`jax.distributed.initialize`: the arguments left None are detected from the
  cluster's environment (TPU pod, SLURM, ...); give all three for CPU processes on
  loopback (e.g. 'localhost:12355', 2, 0 and 1)."""
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def is_writer() -> bool:
  """Whether this process writes the shared files: process 0."""
  return index() == 0


def owns(unit: int) -> bool:
  """Whether this process runs unit of work `unit` (units are dealt round-robin)."""
  return unit % count() == index()


def local_devices() -> Optional[list]:
  """The devices a sampling stage builds its mesh over: this process's own with several
  processes, None (all) with one."""
  return jax.local_devices() if count() > 1 else None


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier called `name`."""
  if count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def global_batch(batch: Any, shardings: Any) -> Any:
  """The global jax arrays of a pytree of global numpy arrays (the same on every
  process), each process filling only the shards its devices hold."""
  return jax.tree.map(
      lambda x, sharding: jax.make_array_from_callback(
          np.shape(x), sharding, lambda index: np.asarray(x[index])),
      batch, shardings)


# ----------------------------------------------------------------------------- result files


def part_path(path: str) -> str:
  """This process's part of the results file `path`."""
  return f"{path}.part-{index():05d}-of-{count():05d}"


def _parts(path: str) -> list[epath.Path]:
  """The part files of `path` left by any run, whatever its process count, in order."""
  target = epath.Path(path)
  if not target.parent.exists():
    return []
  found = [p for p in target.parent.iterdir()
           if p.name.startswith(target.name + ".part-") and _PART.search(p.name)]
  return sorted(found, key=lambda p: tuple(int(g) for g in _PART.search(p.name).groups()[::-1]))


def _merge_parts(path: str, parse: Callable[[bytes, int], dict],
                 key: Callable[[dict], Hashable], hint: str) -> None:
  """Appends to `path` the records of its part files that it lacks, then removes the
  parts. Idempotent: a kill between the append and the removal leaves parts whose
  records are skipped next time."""
  parts = _parts(path)
  if not parts:
    return
  done = resumable.repair(path, parse, key, hint)
  new = []
  for part in parts:
    resumable.repair(str(part), parse, key, hint)  # a line cut by the kill of its writer
    for lineno, line in enumerate(part.read_bytes().split(b"\n")[:-1], start=1):
      record = parse(line, lineno)
      if key(record) not in done:
        done.add(key(record))
        new.append(record)
  if new:
    resumable.append_lines(path, new)
  for part in parts:
    part.unlink()


def open_results(path: str, parse: Callable[[bytes, int], dict],
                 key: Callable[[dict], Hashable], hint: str) -> tuple[str, set]:
  """Makes `path` ready to resume; returns (the file this process appends to, the keys
  already done).

  The writer repairs a line cut by kill -9 and folds in parts an earlier run left;
  with several processes each then appends to its own part file (`part_path`).
  parse / key / hint: as for `resumable.repair`.
  """
  if is_writer():
    _merge_parts(path, parse, key, hint)
    done = resumable.repair(path, parse, key, hint)
  barrier(f"open {path}")
  if count() == 1:
    return path, done
  if not is_writer():
    done = resumable.repair(path, parse, key, hint)  # clean already: reads only
  own = part_path(path)
  return own, done | resumable.repair(own, parse, key, hint)


def close_results(path: str, parse: Callable[[bytes, int], dict],
                  key: Callable[[dict], Hashable], hint: str) -> None:
  """After every process has appended its units: the writer folds the parts into
  `path`; no process returns before the merged file is complete."""
  if count() == 1:
    return
  barrier(f"appended {path}")
  if is_writer():
    _merge_parts(path, parse, key, hint)
  barrier(f"merged {path}")

