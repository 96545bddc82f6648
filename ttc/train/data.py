"""Training batches from seqio, deterministic and resumable by position."""

import gin
import numpy as np
import seqio
import tensorflow as tf

from ttc.errors import UserError

# Decoder-only SFT on (inputs, targets), the loss on targets only. Packing several
# short examples per row (t5x style) roughly halves the FLOPs spent on padding.
FEATURE_CONVERTER = seqio.PrefixLMFeatureConverter(pack=True, loss_on_targets_only=True)
KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
        "decoder_positions", "decoder_segment_ids")


@gin.configurable
def train_batches(task_name: str, batch_size: int, inputs_length: int, targets_length: int,
                  seed: int, start_batch: int = 0, split: str = "train"):
  """Endless iterator of this host's numpy batches, dicts of [batch, inputs+targets] arrays.

  The global batch: every process reads the same stream and places its own rows
  (`ttc.multihost.global_batch`).

  Keys: `KEYS` (positions and segment ids describe the packing). The order
  is a pure function of `seed`; `start_batch` skips that many batches, which is how a
  resumed run continues exactly where the checkpoint left off.
  """
  if task_name not in seqio.TaskRegistry.names():
    raise UserError(f"unknown seqio task {task_name!r}; registered: "
                    f"{sorted(seqio.TaskRegistry.names())}")
  try:
    ds = seqio.get_dataset(
        task_name, task_feature_lengths={"inputs": inputs_length, "targets": targets_length},
        dataset_split=split, shuffle=True, num_epochs=None, seed=seed,
        feature_converter=FEATURE_CONVERTER)
  except ValueError as e:  # e.g. an empty or unknown split, raised by the task's source
    raise UserError(str(e).splitlines()[0]) from e
  options = tf.data.Options()
  # One host thread is plenty for these batches; more would steal cores from XLA.
  options.threading.private_threadpool_size = 1
  ds = ds.batch(batch_size, drop_remainder=True).skip(start_batch).prefetch(2)
  ds = ds.with_options(options)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(batch[k]) for k in KEYS}
