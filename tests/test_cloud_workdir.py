"""A work dir on a filesystem that is not the local disk.

The fake is GCS seen through epath: the stages get a `gs://bucket/work` path, epath
picks its TensorFlow backend for it (as for a real bucket), and that backend's gfile
calls land in TensorFlow's in-memory `ram://` filesystem instead of the network. So
every work-dir touch must go through epath (an `open` or `os.makedirs` of a gs:// path
would create a local `gs:` directory, which the tests refuse), and appends must work
without append (gs:// objects are written whole).

Covered: the driver's `stages.run` (config.gin, operative_config.gin), `search_sweep` (settings,
results appended batch by batch, a kill's cut last line repaired on rerun) and
`plot_search` (a PNG), all in the fake bucket, the policy read from a local dir; the
`ttc.resumable` helpers one by one. Not covered: orbax checkpoints and TensorBoard
event files, whose writers (tensorstore, TensorFlow's C++ file system) reach gs://
without epath, so the fake cannot catch them; they go to GCS on their own.
"""

import contextlib
import json
import os
import uuid

import pytest
import tensorflow as tf
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath

from tests.verifiers.conftest import write_policy_workdir
from ttc import resumable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _to_ram(value):
  if isinstance(value, (str, os.PathLike)) and os.fspath(value).startswith("gs://"):
    return "ram://" + os.fspath(value)[len("gs://"):]
  return value


def _to_gs(value):
  if isinstance(value, str) and value.startswith("ram://"):
    return "gs://" + value[len("ram://"):]
  if isinstance(value, list):
    return [_to_gs(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_to_gs(v) for v in value)
  return value


class _GfileOnRam:
  """tf.io.gfile with gs:// paths in and out mapped onto ram://."""

  def __getattr__(self, name):
    function = getattr(tf.io.gfile, name)

    def call(*args, **kwargs):
      args, kwargs = [_to_ram(a) for a in args], {k: _to_ram(v) for k, v in kwargs.items()}
      if name == "GFile":  # GFile(path, mode), as epath calls it
        path, mode = args
        if mode.startswith("w") and tf.io.gfile.exists(path):
          tf.io.gfile.remove(path)  # ram:// would append to it; GCS replaces an object
      result = function(*args, **kwargs)
      if name == "walk":
        return (_to_gs(entry) for entry in result)
      return _to_gs(result)

    return call


class _RamGcsBackend(epath_backend._TfBackend):  # epath's gs:// backend, on ram://
  @property
  def gfile(self):
    return _GfileOnRam()


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """A fresh fake bucket `gs://<name>`, with the current directory an empty local one
  (checked empty afterwards: nothing may land on the local disk instead)."""
  name = f"ttc-test-{uuid.uuid4().hex[:12]}"
  monkeypatch.setattr(epath_backend, "tf_backend", _RamGcsBackend())
  monkeypatch.setattr(gpath, "_is_zonal_gcs_bucket", lambda _: False,  # no GCS client
                      raising=False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield f"gs://{name}"
  assert not list(cwd.iterdir()), "written to the local disk instead of the bucket"
  assert not os.path.exists(os.path.join(REPO, "gs:"))
  if tf.io.gfile.exists(f"ram://{name}"):
    tf.io.gfile.rmtree(f"ram://{name}")


def test_the_fake_bucket_is_not_the_local_disk(bucket):
  epath.Path(bucket, "d").mkdir(parents=True)
  epath.Path(bucket, "d", "a.txt").write_text("in memory")
  assert tf.io.gfile.GFile(f"ram://{bucket[len('gs://'):]}/d/a.txt").read() == "in memory"
  assert not resumable.is_local(f"{bucket}/d/a.txt")
  assert resumable.absolute(f"{bucket}/d") == f"{bucket}/d"


def test_resumable_files_in_the_bucket(bucket):
  path = f"{bucket}/work/results.jsonl"
  epath.Path(path).parent.mkdir(parents=True)
  resumable.append_lines(path, [{"uid": "a"}])
  resumable.append_lines(path, [{"uid": "b"}, {"uid": "c"}])  # a rewrite, not an append
  assert epath.Path(path).read_text() == '{"uid": "a"}\n{"uid": "b"}\n{"uid": "c"}\n'
  # A kill mid-write (on a local disk; an upload lands whole) leaves a cut last line.
  epath.Path(path).write_bytes(epath.Path(path).read_bytes() + b'{"uid": "d", "x')
  keys = resumable.repair(path, lambda line, n: json.loads(line), lambda r: r["uid"], "hint")
  assert keys == {"a", "b", "c"}
  assert epath.Path(path).read_text().endswith('{"uid": "c"}\n')
  resumable.pin_settings(path, {"seed": 1}, resuming=False, rename_hint="")
  assert resumable.read_settings(path) == {"seed": 1}
  assert not epath.Path(f"{bucket}/work/results.settings.json.tmp").exists()
  resumable.write_json(f"{bucket}/work/new/table.json", {"x": [1, 2]})  # makes new/
  assert json.loads(epath.Path(f"{bucket}/work/new/table.json").read_text()) == {"x": [1, 2]}
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, _ = plt.subplots()
  resumable.save_figure(fig, f"{bucket}/work/figure.png")
  plt.close(fig)
  assert epath.Path(f"{bucket}/work/figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SWEEP = [
    "--gin_file=configs/arith/quickstart.gin",
    "--gin.register_arith_task.num_train_per_level=10",
    "--gin.register_arith_task.num_eval_per_level=2",
    "--gin.run.stages=[@search_sweep, @plot_search]",
    "--gin.search_sweep.task=%TASK",
    "--gin.search_sweep.method_names=['best_of_n']",
    "--gin.search_sweep.budgets=[4]",
    "--gin.search_sweep.verifier='constant'",
    "--gin.search_sweep.max_problems_per_level=1",
    "--gin.search_sweep.max_solution_tokens=24",
    "--gin.search_sweep.max_step_tokens=8",
    "--gin.search_sweep.rows_per_batch=4",  # a problem a batch: an append each
]


def _run(*flags):
  """`python -m ttc.main` with SWEEP and `flags`, its config parsed in the repository
  (where its gin includes are) and its stages run in the current directory."""
  import gin

  from ttc import main, stages
  main._import_configurables()
  try:
    with contextlib.chdir(REPO), gin.unlock_config():  # another run may have locked it
      main.parse_config(*main.parse_flags([*SWEEP, *flags]))
    stages.run()
  finally:
    with gin.unlock_config():
      gin.clear_config()


def _without_wall_time(text):
  return sorted(json.dumps({k: v for k, v in json.loads(line).items() if k != "wall_s"},
                           sort_keys=True) for line in text.splitlines())


def test_a_sweep_and_its_report_in_the_bucket_then_a_killed_rerun(bucket, tmp_path):
  policy = str(write_policy_workdir(tmp_path / "policy"))  # local: read from disk
  work = f"{bucket}/work"
  flags = [f"--gin.search_sweep.policy='{policy}'", f"--gin.WORKDIR='{work}'"]
  _run(*flags)

  files = {p.name for p in epath.Path(work).iterdir()}
  assert {"config.gin", "operative_config.gin", "search_test.jsonl",
          "search_test.settings.json", "search_test.png"} <= files, files
  assert not any(name.endswith(".tmp") for name in files), files
  assert "search_sweep.policy" in epath.Path(work, "operative_config.gin").read_text()
  assert json.loads(epath.Path(work, "search_test.settings.json").read_text())["policy"] == policy
  results = epath.Path(work, "search_test.jsonl").read_text()
  records = [json.loads(line) for line in results.splitlines()]
  assert len(records) == len({r["uid"] for r in records}) >= 3  # a problem of each level
  assert epath.Path(work, "search_test.png").read_bytes()[:4] == b"\x89PNG"

  # As a kill -9 mid-write on a disk would leave it: a whole line, then a cut one.
  lines = results.splitlines(keepends=True)
  epath.Path(work, "search_test.jsonl").write_text(lines[0] + lines[1][:20])
  _run(*flags)
  rerun = epath.Path(work, "search_test.jsonl").read_text()
  assert _without_wall_time(rerun) == _without_wall_time(results)
  assert rerun.startswith(lines[0])
  assert set(os.listdir(tmp_path)) == {"cwd", "policy"}
