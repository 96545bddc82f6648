"""Supervised training of the policy: one linear `train()` in big_vision order.

Sections: mesh, model, state shapes and shardings, checkpoint (restore or init),
data, compiled step, loop. Resuming after kill -9 restores parameters, optimizer
state, step and data position, so the result equals an uninterrupted run.
"""

import json
import os
import time

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import optax
import tqdm

from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import checkpointing, partitioning, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.train import data, optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32 optimizer steps taken
  params: dict
  opt_state: optax.OptState


def next_token_loss(logits_BxLxV, targets_BxL, weights_BxL):
  """Weighted mean cross-entropy (nats/token) and token accuracy."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  total = jnp.maximum(weights_BxL.sum(), 1.0)
  correct = (logits_BxLxV.argmax(-1) == targets_BxL).astype(jnp.float32)
  return (losses * weights_BxL).sum() / total, (correct * weights_BxL).sum() / total


def make_train_step(model: Transformer, tx: optax.GradientTransformation, schedule, seed: int):
  def train_step(state: TrainState, batch):
    inputs_BxL = batch["decoder_input_tokens"]
    # Dropout keys come from (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      logits, _ = model.apply(params, inputs_BxL, batch["decoder_positions"],
                              deterministic=False, segment_ids_BxT=batch["decoder_segment_ids"],
                              rngs={"dropout": dropout_key})
      return next_token_loss(logits, batch["decoder_target_tokens"],
                             batch["decoder_loss_weights"].astype(jnp.float32))

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "token_accuracy": accuracy, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def abstract_state(model, tx, mesh, rules):
  """(abstract TrainState with shardings, its shardings, init fn) from shapes only."""
  def init(key):
    params = partitioning.init_params(model, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  _, param_shardings = partitioning.abstract_params(model, mesh, rules)
  shapes = jax.eval_shape(init, jax.random.key(0))
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, shapes.opt_state, param_shardings,
      transform_non_params=lambda _: partitioning.replicated(mesh))
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings, init


def truncate_metrics(path: str, last_step: int):
  """Drops metric lines past the restored step, so a resumed log has no duplicates."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError):
      pass  # a line cut by kill -9
  with open(path, "w") as f:
    f.writelines(kept)


@gin.configurable(denylist=["workdir"])
def train(workdir: str, task=gin.REQUIRED, num_steps: int = gin.REQUIRED,
          batch_size: int = 64, inputs_length: int = 32, targets_length: int = 128,
          checkpoint_every: int = 200, keep_checkpoints: int = 3, log_every: int = 20,
          seed: int = 0, model_config: ModelConfig = ModelConfig()):
  """Trains the policy on a task's seqio SFT data; returns the final TrainState.

  task: a `ttc.data.task.Task` with a seqio task of the same name (e.g.
    `@register_arith_task()`), or that name.
  """
  # Arguments: checked before any work, so a bad value is one `error:` line, not a
  # traceback from tf.data or a run that trains nothing and leaves no checkpoint.
  counts = dict(num_steps=num_steps, batch_size=batch_size, inputs_length=inputs_length,
                targets_length=targets_length, checkpoint_every=checkpoint_every,
                keep_checkpoints=keep_checkpoints, log_every=log_every)
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"train.{name}={value!r} must be a positive integer; set "
                      f"--gin.train.{name}=N with N >= 1")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise UserError(f"train.seed={seed!r} must be an integer; set --gin.train.seed=0")

  # Mesh.
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  batch_shards = partitioning.shards_along("activation_batch", mesh, rules)
  if batch_size % batch_shards:
    raise UserError(f"train.batch_size={batch_size} must be a multiple of the {batch_shards} "
                    f"devices the batch is split over (make_mesh.data x fsdp); set "
                    f"--gin.train.batch_size={-(-batch_size // batch_shards) * batch_shards}")
  task_name = task_lib.get(task).name  # a name builds its task (and seqio task) first
  # Model and optimizer.
  model = Transformer(model_config)
  tx, schedule = optimizer.make_optimizer(num_steps)
  abstract, shardings, init = abstract_state(model, tx, mesh, rules)
  workdir_lib.save_model_config(workdir, model_config)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # Checkpoint: restore the latest, or initialise.
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"), keep_checkpoints)
    restored = checkpointing.restore_latest(mngr, abstract)
    if restored is None:
      state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
      batches_consumed = 0
    else:
      state, batches_consumed = restored
    start_step = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    truncate_metrics(metrics_path, start_step)

    # Data, from where the checkpoint left off. Each host reads its own shard of the
    # global batch; the shards are assembled into one array over the mesh.
    if batch_size % jax.process_count():
      raise UserError(f"train.batch_size={batch_size} must divide by the "
                      f"{jax.process_count()} hosts")
    batches = data.train_batches(task_name, batch_size // jax.process_count(), inputs_length,
                                 targets_length, seed, start_batch=batches_consumed)
    batch_sharding = partitioning.logical_to_sharding(
        ("activation_batch", "activation_length"), mesh, rules)

    step_fn = jax.jit(make_train_step(model, tx, schedule, seed),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, partitioning.replicated(mesh)),
                      donate_argnums=(0,))

    # Loop.
    progress = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step",
                         dynamic_ncols=True, disable=None)
    tokens_since, time_since = 0, time.perf_counter()
    with open(metrics_path, "a") as metrics_file:
      for step in range(start_step, num_steps):
        batch = next(batches)
        state, metrics = step_fn(state, jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch))
        batches_consumed += 1
        tokens_since += int((batch["decoder_segment_ids"] > 0).sum()) * jax.process_count()
        if (step + 1) % log_every == 0 or step + 1 == num_steps:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          elapsed = time.perf_counter() - time_since
          metrics.update(step=step + 1, tokens_per_s=tokens_since / elapsed)
          metrics_file.write(json.dumps(metrics) + "\n")
          metrics_file.flush()
          progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                               tok_s=f"{metrics['tokens_per_s']:.0f}")
          tokens_since, time_since = 0, time.perf_counter()
        if (step + 1) % checkpoint_every == 0 or step + 1 == num_steps:
          checkpointing.save(mngr, step + 1, state, batches_consumed)
        progress.update(1)
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
  return state
