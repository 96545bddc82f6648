"""A training run's metrics, in one place: `metrics.jsonl` and TensorBoard scalars
beside it, in the directory the run writes its checkpoints under (local or gs://).

metrics.jsonl is the record that a resumed run and later stages read (held-out
losses for early stopping and checkpoint selection); one JSON object a line with its
"step". The TensorBoard event files mirror it: each number of a line but "step" is a
scalar of that name at that step, so `tensorboard --logdir=<workdir>` shows the
policy's run (".") beside its reward models' ("prm", "orm").

After kill -9 a run resumes from its last checkpoint and logs the steps past it
again. `MetricsWriter` drops the lines past that step first (and a line cut by the
kill), and rebuilds the event files from the lines it keeps, so TensorBoard shows the
same steps as the JSONL, each once. Only process 0 writes; every process reads.

TensorBoard's own `tf.summary.scalar` needs the tensorboard package; `tf.summary.write`
with the scalars plugin's metadata writes the same summary with TensorFlow alone.
"""

import json
import math
import os

import tensorflow as tf
from etils import epath

from ttc import multihost, resumable

FILE = "metrics.jsonl"
EVENTS = "events.out.tfevents.*"  # the file names tf.summary writes
_SCALAR = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))


def _parse(data: bytes) -> list[tuple[bytes, dict]]:
  """(line, record) of each line of a metrics log that holds a record; a line cut by
  kill -9 holds none."""
  found = []
  for line in data.splitlines():
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      continue
    if isinstance(record, dict) and "step" in record:
      found.append((line, record))
  return found


def _read(path: str) -> bytes:
  return epath.Path(path).read_bytes() if epath.Path(path).exists() else b""


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl (none if it is missing), skipping a line cut by kill -9."""
  return [record for _, record in _parse(_read(path))]


def scalars(record: dict) -> dict[str, float]:
  """What TensorBoard shows of a record: its finite numbers but "step"."""
  return {k: float(v) for k, v in record.items()
          if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v)}


class MetricsWriter:
  """Writes a run's metrics into `directory`: JSON lines of metrics.jsonl and
  TensorBoard scalars (module docstring).

  start_step: the step the run starts from (0, or its restored checkpoint's). Lines
  past it are dropped, and `logged` holds those kept. Use as a context manager.
  """

  def __init__(self, directory: str, start_step: int):
    self.path = os.path.join(directory, FILE)
    data = _read(self.path)
    kept = [(line, r) for line, r in _parse(data) if r["step"] <= start_step]
    self.logged = [r for _, r in kept]
    self._summary = None
    if not multihost.is_writer():  # one writer process (ttc.multihost)
      return
    text = b"".join(line + b"\n" for line, _ in kept)
    if text != data:
      resumable.write_atomic(self.path, text)
    for old in epath.Path(directory).glob(EVENTS):
      old.unlink()
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
    self._summary = tf.summary.create_file_writer(directory)
    for record in self.logged:
      self._scalars(record)
    self._summary.flush()

  def _scalars(self, record: dict) -> None:
    with self._summary.as_default():
      for tag, value in scalars(record).items():
        tf.summary.write(tag, tf.constant(value, tf.float32), step=int(record["step"]),
                         metadata=_SCALAR)

  def write(self, record: dict) -> None:
    """Logs one record (with its "step"): a JSON line, and its scalars."""
    if self._summary is None:
      return
    resumable.append_lines(self.path, [record])
    self._scalars(record)
    self._summary.flush()

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()
      self._summary = None

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
