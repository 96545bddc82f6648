"""Supervised training of a policy: one linear loop, `fit`, in big_vision order.

Sections: mesh, model, state shapes and shardings, checkpoint (restore, or initialise
at random or from another work dir's policy), data, compiled steps, loop. Resuming
after kill -9 restores parameters, optimizer state, step and data position, so the
result equals an uninterrupted run.

Two stages share the loop: `train` (the policy, from scratch) and
`ttc.revision.model.train_revision` (the policy fine-tuned into a revision model, with
a held-out loss and a checkpoint chosen by it). Periodic actions besides logging and
checkpointing belong to the stage, through an `EvalHook`.
"""

import dataclasses
import os
import time
from typing import Optional, Protocol, Sequence

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
import tqdm

from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import checkpointing, multihost, partitioning, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.train import data, metrics as metrics_lib, optimizer


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


# ----------------------------------------------------------------------------- held-out loss


def held_out_batches(task_name: str, batch_size: int, inputs_length: int, targets_length: int,
                     split: str) -> list[dict]:
  """The global batches of one pass over a seqio split, packed as for training.

  Returns numpy dicts of `data.KEYS`, each [batch_size, inputs_length + targets_length],
  in a fixed order (no shuffling); the last batch is filled up with empty rows (zero
  loss weight). Every process reads the same batches (`multihost.global_batch` places
  each one's rows).
  """
  try:
    ds = seqio.get_dataset(
        task_name, task_feature_lengths={"inputs": inputs_length, "targets": targets_length},
        dataset_split=split, shuffle=False, num_epochs=1, feature_converter=data.FEATURE_CONVERTER)
  except ValueError as e:  # e.g. a task without this split
    raise UserError(str(e).splitlines()[0]) from e
  batches = []
  for batch in ds.batch(batch_size).as_numpy_iterator():
    missing = batch_size - len(batch["decoder_segment_ids"])
    batches.append({k: np.pad(batch[k], [(0, missing), (0, 0)]) for k in data.KEYS})
  if not batches:
    raise UserError(f"split {split!r} of seqio task {task_name} is empty; the held-out loss "
                    "needs examples there")
  return batches


def make_eval_step(model: Transformer):
  """(params, batch) -> (summed next-token loss in nats, summed loss weight (tokens))."""
  def eval_step(params, batch):
    logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                            deterministic=True, segment_ids_BxT=batch["decoder_segment_ids"])
    weights_BxL = batch["decoder_loss_weights"].astype(jnp.float32)
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["decoder_target_tokens"])
    return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()

  return eval_step


class EvalHook(Protocol):
  """What a stage does with the held-out measurements (e.g. keep the parameters it
  selects by them). Called by `fit`; measurements and checkpoints are in step order."""

  def resume(self, step: int, evaluations: Sequence[tuple[int, float]]) -> None:
    """Once, before the loop: the step training (re)starts from (0 when fresh) and the
    (step, val_loss) measurements logged up to it. A checkpoint follows every
    measurement, so a measurement past `step` was lost with its checkpoint and will be
    taken again."""

  def after_eval(self, step: int, val_loss: float, state: TrainState) -> None:
    """After each measurement is logged and before the checkpoint of that step."""


# ----------------------------------------------------------------------------- the loop


def check_counts(stage: str, **counts) -> None:
  """A one-line UserError naming `<stage>.<name>` unless every count is an int >= 1."""
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"{stage}.{name}={value!r} must be a positive integer; set "
                      f"--gin.{stage}.{name}=N with N >= 1")


def _check_init_config(init_from: str, model_config: ModelConfig, stage: str) -> None:
  base = workdir_lib.load_model_config(init_from)  # UserError unless a trained work dir
  if dataclasses.replace(base, dropout_rate=model_config.dropout_rate) != model_config:
    raise UserError(f"{stage}: the policy in {init_from} has another model config than "
                    f"{stage}'s; fine-tune with its own model_config.json (only dropout_rate "
                    "may differ)")


def _initial_state(init_from: str, tx, shardings, mesh, rules):
  """A fresh TrainState at step 0 holding the policy params of the work dir `init_from`.

  Adam's moments start at zero whatever the parameters, so only they are initialised.
  """
  _, params, _ = workdir_lib.load_trained_policy(init_from, mesh, rules)
  start = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
  return jax.jit(start, out_shardings=shardings, donate_argnums=(0,))(params)


def fit(workdir: str, task, *, num_steps: int, batch_size: int, inputs_length: int,
        targets_length: int, model_config: ModelConfig, seed: int = 0,
        checkpoint_every: int = 200, keep_checkpoints: int = 3, log_every: int = 20,
        optimizer_kwargs: Optional[dict] = None, init_from: str = "", eval_every: int = 0,
        eval_split: str = "validation", eval_hook: Optional[EvalHook] = None,
        checkpoint_dir: str = workdir_lib.CHECKPOINTS, stage: str = "train") -> TrainState:
  """Trains a policy on a task's seqio data into `workdir`; returns the final TrainState.
  The stages' shared loop.

  Writes `<workdir>/model_config.json`, `<workdir>/<checkpoint_dir>/<step>` (the whole
  TrainState and the data position, the newest `keep_checkpoints`, every
  `checkpoint_every` steps, at each held-out measurement and at the end) and
  `<workdir>/metrics.jsonl` (one JSON line every `log_every` steps, at each measurement
  and at the end: step, loss and token_accuracy of that step's batch, grad_norm,
  learning_rate, tokens_per_s; plus val_loss at measurements) and the same as
  TensorBoard scalars beside it (`ttc.train.metrics`).

  Args:
    task: a `ttc.data.task.Task` or registered task name; the seqio task of the same
      name holds the examples (features inputs / targets; the loss is on targets).
    num_steps, batch_size: optimizer steps, packed rows (of inputs_length +
      targets_length tokens) per step.
    optimizer_kwargs: keyword arguments of `optimizer.make_optimizer` (learning_rate,
      warmup_steps, weight_decay, ...); those not given come from its gin bindings.
    init_from: a ttc work dir whose policy parameters a fresh start begins with
      (fine-tuning; `model_config` must equal its config but for dropout_rate). A resumed
      run restores its own checkpoint instead.
    eval_every: 0, or the steps between held-out measurements (and one at the last
      step): the token-weighted mean next-token loss (nats) over the whole `eval_split`,
      without dropout, logged as val_loss.
    eval_hook: told of each measurement (see `EvalHook`).
    stage: the gin name of the calling stage, for error messages.
  """
  # Arguments: checked before any work, so a bad value is one `error:` line, not a
  # traceback from tf.data or a run that trains nothing and leaves no checkpoint.
  check_counts(stage, num_steps=num_steps, batch_size=batch_size, inputs_length=inputs_length,
               targets_length=targets_length, checkpoint_every=checkpoint_every,
               keep_checkpoints=keep_checkpoints, log_every=log_every)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise UserError(f"{stage}.seed={seed!r} must be an integer; set --gin.{stage}.seed=0")
  if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
    raise UserError(f"{stage}.eval_every={eval_every!r} must be 0 (no held-out loss) or a "
                    "positive number of steps")
  # Mesh.
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  batch_shards = partitioning.shards_along("activation_batch", mesh, rules)
  if batch_size % batch_shards:
    raise UserError(f"{stage}.batch_size={batch_size} must be a multiple of the {batch_shards} "
                    f"devices the batch is split over (make_mesh.data x fsdp); set "
                    f"--gin.{stage}.batch_size={-(-batch_size // batch_shards) * batch_shards}")
  task_name = task_lib.get(task).name  # a name builds its task (and seqio task) first
  if init_from:
    _check_init_config(init_from, model_config, stage)
  # Model and optimizer.
  model = Transformer(model_config)
  tx, schedule = optimizer.make_optimizer(num_steps, **(optimizer_kwargs or {}))
  abstract, shardings, init = abstract_state(model, tx, mesh, rules)
  workdir_lib.save_model_config(workdir, model_config)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # Checkpoint: restore the latest, or initialise.
    mngr = checkpointing.manager(os.path.join(workdir, checkpoint_dir), keep_checkpoints)
    restored = checkpointing.restore_latest(mngr, abstract)
    if restored is None:
      if init_from:
        state = _initial_state(init_from, tx, shardings, mesh, rules)
      else:
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
      batches_consumed = 0
    else:
      state, batches_consumed = restored
    start_step = int(state.step)
    # Lines past the restored step go: this run logs those steps again.
    metrics_log = metrics_lib.MetricsWriter(workdir, start_step)
    if eval_hook is not None:
      eval_hook.resume(start_step, [(r["step"], r["val_loss"]) for r in metrics_log.logged
                                    if "val_loss" in r])

    # Data, from where the checkpoint left off. Every process reads the global batch
    # stream and places the rows its devices hold, so a step sees the batch a
    # one-process run sees (`ttc.multihost`).
    batches = data.train_batches(task_name, batch_size, inputs_length, targets_length, seed,
                                 start_batch=batches_consumed)
    batch_sharding = partitioning.logical_to_sharding(
        ("activation_batch", "activation_length"), mesh, rules)
    to_global = lambda batch: multihost.global_batch(
        batch, {k: batch_sharding for k in batch})

    step_fn = jax.jit(make_train_step(model, tx, schedule, seed),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, partitioning.replicated(mesh)),
                      donate_argnums=(0,))
    held_out = None
    if eval_every and start_step < num_steps:
      held_out = held_out_batches(task_name, batch_size, inputs_length, targets_length,
                                  eval_split)
      eval_fn = jax.jit(make_eval_step(model), in_shardings=(shardings.params, batch_sharding),
                        out_shardings=partitioning.replicated(mesh))

    def held_out_loss(params) -> float:
      total, weight = 0.0, 0.0
      for batch in held_out:
        loss_sum, weight_sum = jax.device_get(eval_fn(params, to_global(batch)))
        total, weight = total + float(loss_sum), weight + float(weight_sum)
      return total / max(weight, 1.0)

    # Loop.
    progress = tqdm.tqdm(total=num_steps, initial=start_step, desc=stage, unit="step",
                         dynamic_ncols=True, disable=None)
    tokens_since, time_since = 0, time.perf_counter()
    with metrics_log:
      for step in range(start_step, num_steps):
        batch = next(batches)
        state, metrics = step_fn(state, to_global(batch))
        batches_consumed += 1
        tokens_since += int((batch["decoder_segment_ids"] > 0).sum())
        done, last = step + 1, step + 1 == num_steps
        measure = bool(eval_every) and (done % eval_every == 0 or last)
        if done % log_every == 0 or last or measure:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          elapsed = time.perf_counter() - time_since
          metrics.update(step=done, tokens_per_s=tokens_since / elapsed)
          if measure:
            metrics["val_loss"] = held_out_loss(state.params)
          metrics_log.write(metrics)
          progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                               tok_s=f"{metrics['tokens_per_s']:.0f}",
                               **({"val": f"{metrics['val_loss']:.3f}"} if measure else {}))
          # Reset after the held-out measurement: tokens_per_s counts training time only.
          tokens_since, time_since = 0, time.perf_counter()
        if measure and eval_hook is not None:
          eval_hook.after_eval(done, metrics["val_loss"], state)
        # A checkpoint follows every measurement: a resumed run never repeats a logged
        # one, and an EvalHook knows which of its own saves a restart can rely on.
        if done % checkpoint_every == 0 or last or measure:
          checkpointing.save(mngr, done, state, batches_consumed)
        progress.update(1)
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
  return state


@gin.configurable(denylist=["workdir"])
def train(workdir: str, task=gin.REQUIRED, num_steps: int = gin.REQUIRED,
          batch_size: int = 64, inputs_length: int = 32, targets_length: int = 128,
          checkpoint_every: int = 200, keep_checkpoints: int = 3, log_every: int = 20,
          seed: int = 0, model_config: ModelConfig = ModelConfig(), eval_every: int = 0,
          init_from: str = "", output_dir: str = ""):
  """Stage: trains the policy on a task's seqio SFT data; returns the final TrainState.

  task: a `ttc.data.task.Task` with a seqio task of the same name (e.g.
    `@register_arith_task()`), or that name.
  eval_every: 0, or the steps between measurements of the loss on the task's
    "validation" split (metrics.jsonl's val_loss).
  init_from: "" (random initialisation), or a ttc work dir whose policy a fresh run
    starts from; `model_config` must then match its config (dropout_rate aside).
  output_dir: "" (the work dir is the policy's), or a directory under the work dir
    that gets the model instead: a second model of the same task, e.g. a larger
    backbone for the PRM (`train_prm.backbone`), trained by a gin-scoped
    `@backbone/train` with its own `model_config`.
  The optimizer is `make_optimizer`'s, configured by its own gin bindings.
  """
  return fit(os.path.join(workdir, output_dir) if output_dir else workdir, task, num_steps=num_steps, batch_size=batch_size,
             inputs_length=inputs_length, targets_length=targets_length,
             model_config=model_config, seed=seed, checkpoint_every=checkpoint_every,
             keep_checkpoints=keep_checkpoints, log_every=log_every, eval_every=eval_every,
             init_from=init_from, stage="train")
