"""Several processes: part files merge into what one process writes, a rerun folds in
the parts an earlier run left, and two CPU processes on loopback (jax.distributed,
gloo collectives) train, label and sweep to a one-process run's results."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ttc import multihost, resumable
from ttc.errors import UserError

from tests.verifiers.conftest import write_policy_workdir, write_reward_model
from tests.verifiers.test_training import write_labels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
HINT = "fix the file"


def _parse(line, lineno):
  return resumable.parse_record(line, "results", lineno, ["uid"], HINT)


def _key(record):
  return record["uid"]


def _write(path, records, cut=b""):
  path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + cut)


def _uids(path):
  return [json.loads(line)["uid"] for line in path.read_text().splitlines()]


def test_one_process_appends_to_the_file_itself(tmp_path):
  path = tmp_path / "r.jsonl"
  _write(path, [{"uid": "a"}], cut=b'{"uid": "b"')  # a line cut by kill -9
  own, done = multihost.open_results(str(path), _parse, _key, HINT)
  assert (own, done) == (str(path), {"a"})
  assert _uids(path) == ["a"]
  multihost.close_results(str(path), _parse, _key, HINT)  # nothing to merge
  assert _uids(path) == ["a"]


def test_parts_left_by_a_killed_run_are_folded_in_once_in_part_order(tmp_path):
  path = tmp_path / "r.jsonl"
  _write(path, [{"uid": "a"}])
  # A two-process run killed after process 1 wrote two records (the second cut) and
  # after process 0's merge appended "b" but before it removed its part.
  _write(tmp_path / "r.jsonl.part-00000-of-00002", [{"uid": "b"}, {"uid": "d"}])
  _write(tmp_path / "r.jsonl.part-00001-of-00002", [{"uid": "c"}], cut=b'{"uid": "e"')
  with path.open("ab") as f:
    f.write(b'{"uid": "b"}\n')
  (tmp_path / "r.jsonl.part-x").write_text("not a part of this run's file\n")
  _, done = multihost.open_results(str(path), _parse, _key, HINT)
  assert done == {"a", "b", "c", "d"}
  assert _uids(path) == ["a", "b", "d", "c"]  # parts in order, "b" not twice
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.part-x"]


def test_a_damaged_part_is_an_error_naming_the_line(tmp_path):
  path = tmp_path / "r.jsonl"
  (tmp_path / "r.jsonl.part-00001-of-00002").write_bytes(b'{"uid": "a"}\nnot json\n{"u')
  with pytest.raises(UserError, match="line 2"):
    multihost.open_results(str(path), _parse, _key, HINT)


def test_units_are_dealt_round_robin_and_global_batch_is_the_batch():
  assert multihost.owns(0) and multihost.owns(7)  # one process owns every unit
  import jax
  from ttc import partitioning
  mesh = partitioning.make_mesh()
  sharding = partitioning.logical_to_sharding(("activation_batch", None), mesh,
                                              partitioning.logical_axis_rules())
  batch = {"x": np.arange(32).reshape(8, 4)}
  placed = multihost.global_batch(batch, {"x": sharding})
  assert placed["x"].sharding == sharding
  np.testing.assert_array_equal(jax.device_get(placed["x"]), batch["x"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _prepare(workdir):
  write_policy_workdir(workdir)
  write_labels(workdir / "prm_labels.jsonl")
  write_reward_model(workdir / "prm_fixed", seed=5)
  return workdir


def _records(path, drop=("wall_s",)):
  """A results file's records as a sorted list, minus measurements of time."""
  return sorted(json.dumps({k: v for k, v in json.loads(line).items() if k not in drop},
                           sort_keys=True) for line in path.read_text().splitlines())


def _params(workdir, sub):
  """(step, parameters as float64 leaves) of the policy in workdir/trained or the PRM."""
  import jax
  from ttc import partitioning, workdir as workdir_lib
  from ttc.verifiers import reward_model
  mesh, rules = partitioning.make_mesh(), partitioning.logical_axis_rules()
  if sub == "trained":
    _, params, step = workdir_lib.load_trained_policy(str(workdir / sub), mesh, rules)
  else:
    _, params = reward_model.load(str(workdir / sub), mesh, rules)  # the best step's
    step = None
  return step, [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]


def test_two_processes_on_loopback_equal_one_process(tmp_path):
  one, two = _prepare(tmp_path / "one"), _prepare(tmp_path / "two")
  address = f"localhost:{_free_port()}"
  run = lambda workdir, n, i: subprocess.Popen(
      [sys.executable, WORKER, str(workdir), str(n), str(i), address], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  procs = [run(two, 2, 0), run(two, 2, 1), run(one, 1, 0)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]

  # One writer: the shared files exist once, no part file is left.
  assert not [p for p in two.rglob("*.part-*")]
  assert (two / "config.gin").exists() and (two / "operative_config.gin").exists()
  # Labels and sweep results: the records of the one-process run.
  assert _records(two / "labels_run.jsonl") == _records(one / "labels_run.jsonl")
  assert len(_records(two / "labels_run.jsonl")) == 4
  search = _records(two / "search.jsonl")
  assert search == _records(one / "search.jsonl") and len(search) == 4  # problems
  # Training: the same steps on the same global batches, so the same parameters up to
  # the order a gradient sum over two processes takes; metrics written once per step.
  for sub in ("trained", "prm"):
    (step_a, a), (step_b, b) = _params(two, sub), _params(one, sub)
    assert step_a == step_b
    for x, y in zip(a, b):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  steps = [json.loads(line)["step"] for line in (two / "trained" / "metrics.jsonl").open()]
  assert steps == [1, 2, 3, 4]
