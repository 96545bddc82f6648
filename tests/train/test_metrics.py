"""ttc/train/metrics.py: metrics.jsonl and TensorBoard scalars of the same records, kept
equal across a resume; one writer process."""

import collections
import json

import jax
import numpy as np
import tensorflow as tf

from ttc.models.config import ModelConfig
from ttc.train import metrics


def read_events(directory) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the TensorBoard event files in `directory`; a tag logged twice
  at one step, or not as a scalar, fails."""
  found = collections.defaultdict(dict)
  for path in sorted(directory.glob(metrics.EVENTS)):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag not in found:  # tf.summary writes a tag's metadata with its first value
          assert value.metadata.plugin_data.plugin_name == "scalars", value
        assert event.step not in found[value.tag], (value.tag, event.step)
        found[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
  return dict(found)


def _as_events(records) -> dict[str, dict[int, float]]:
  """What `read_events` should find for `records`: their scalars, rounded to float32."""
  expected = collections.defaultdict(dict)
  for r in records:
    for tag, value in metrics.scalars(r).items():
      expected[tag][r["step"]] = float(np.float32(value))
  return dict(expected)


RECORDS = [{"step": 2, "loss": 2.5, "learning_rate": 1e-3, "note": "text", "flag": True},
           {"step": 4, "loss": 2.25, "learning_rate": 2e-3, "val_loss": 2.75},
           {"step": 6, "loss": 2.0, "learning_rate": 3e-3}]


def test_each_record_is_a_json_line_and_its_numbers_scalars_at_its_step(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), start_step=0) as log:
    for record in RECORDS:
      log.write(record)
  assert metrics.read_metrics(str(tmp_path / metrics.FILE)) == RECORDS
  # Strings, booleans and the step itself are no scalars; float32 is what TensorBoard keeps.
  assert read_events(tmp_path) == {
      "loss": {2: 2.5, 4: 2.25, 6: 2.0},
      "learning_rate": {s: float(np.float32(v)) for s, v in ((2, 1e-3), (4, 2e-3), (6, 3e-3))},
      "val_loss": {4: 2.75}}


def test_a_resume_drops_the_lost_steps_from_the_jsonl_and_the_events(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), start_step=0) as log:
    for record in RECORDS:
      log.write(record)
  path = tmp_path / metrics.FILE
  path.write_bytes(path.read_bytes() + b'{"step": 8, "lo')  # cut by kill -9
  lines = path.read_bytes().splitlines(keepends=True)

  # Restored from the checkpoint of step 4: steps 6 and 8 will be logged again.
  with metrics.MetricsWriter(str(tmp_path), start_step=4) as log:
    assert log.logged == RECORDS[:2]
    assert path.read_bytes() == b"".join(lines[:2])  # the kept lines, byte for byte
    assert read_events(tmp_path) == _as_events(RECORDS[:2])
    again = [{"step": 6, "loss": 1.5}, {"step": 8, "loss": 1.25}]
    for record in again:
      log.write(record)
  assert metrics.read_metrics(str(path)) == RECORDS[:2] + again
  assert read_events(tmp_path) == _as_events(RECORDS[:2] + again)
  assert len(list(tmp_path.glob(metrics.EVENTS))) == 1


def test_only_process_0_writes(tmp_path, monkeypatch):
  with metrics.MetricsWriter(str(tmp_path), start_step=0) as log:
    log.write(RECORDS[0])
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with metrics.MetricsWriter(str(tmp_path), start_step=0) as log:
    assert log.logged == []  # what process 0 keeps when it starts afresh
    log.write(RECORDS[1])
  assert metrics.read_metrics(str(tmp_path / metrics.FILE)) == RECORDS[:1]
  assert read_events(tmp_path) == _as_events(RECORDS[:1])


def test_training_logs_its_jsonl_lines_as_tensorboard_scalars(tmp_path):
  from ttc.data import arith_task
  from ttc.train import trainer
  task = arith_task.register_arith_task("test_metrics_arith", num_train_per_level=10,
                                        num_eval_per_level=2, levels=[(1, 9)])
  config = ModelConfig(vocab_size=32, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
  trainer.fit(str(tmp_path), task, num_steps=4, batch_size=8, inputs_length=16,
              targets_length=48, model_config=config, log_every=2, checkpoint_every=4,
              eval_every=4)
  records = [json.loads(line) for line in (tmp_path / metrics.FILE).read_text().splitlines()]
  assert [r["step"] for r in records] == [2, 4] and "val_loss" in records[-1]
  assert read_events(tmp_path) == _as_events(records)
  assert {"loss", "token_accuracy", "grad_norm", "learning_rate", "tokens_per_s",
          "val_loss"} == set(read_events(tmp_path))
