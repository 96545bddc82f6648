"""Training the reward models: `train_prm` (Monte-Carlo step labels) and `train_orm`.

Both read the labels file that `label_prm` wrote, through its seqio Task
(`labeling.register_prm_labels_task`), tokenize the solutions with the tokenizer of the
policy that sampled them (the labels' settings name it: this work dir's, an HF or GGUF
checkpoint, or `smollm2`), and fit a `RewardModel` initialised from that policy (or
from another `backbone` that reads the same tokens, e.g. a larger model: the paper
fine-tunes its PRM from a strong base model) with binary cross-entropy on
sigmoid(value logit):

  * PRM: at the last token of every step, against the step's soft label (the
    fraction of rollouts from that prefix that reach the right answer) or, with
    `RewardTraining.labels = "hard"`, whether any did.
  * ORM: at the last token of the whole solution, against its final correctness.

Optionally (`RewardTraining.sibling_weight` > 0, PRM only) a ranking loss on sibling
steps (distinct next steps of one prefix, `sibling_pairs`) is added, and batches then
hold whole questions so that siblings meet in one batch.

10% of the questions (by uid hash) are held out; the held-out loss is measured
every `eval_every` steps and training stops after `patience` measurements without
improvement. The parameters of the best measurement are kept in `<output>/best`,
which is what `reward_model.load` reads. Each measurement is a line of
`<output>/metrics.jsonl` and TensorBoard scalars beside it (`ttc.train.metrics`). A
run killed at any point resumes from its last checkpoint and continues exactly (data
order is a function of the step).
"""

import dataclasses
import os
import re
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
import tqdm
from etils import epath

from ttc import checkpointing, multihost, partitioning, resumable, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.errors import UserError
from ttc.train import metrics, optimizer, sibling_pairs, trainer
from ttc.verifiers import labeling, reward_model


# Batch slots for sibling pairs, per solution of the batch: 8 questions x 16 samples of
# the paper labels hold about 45 pairs with different labels (161 at most in 2000 draws).
MAX_PAIRS_PER_ROW = 2


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RewardTraining:
  """Hyperparameters; the defaults are the paper's PRM settings (App. D) for real models.

  Bind per verifier with gin scopes, e.g. `train_prm.training = @prm/RewardTraining()`
  and `prm/RewardTraining.num_steps = 400`.
  """

  num_steps: int = 2000
  batch_size: int = 128  # solutions per step
  learning_rate: float = 3e-5
  warmup_steps: int = 50
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  dropout_rate: float = 0.05
  labels: str = "soft"  # PRM targets: "soft" (fraction of rollouts) or "hard" (any)
  validation_percent: int = 10  # questions held out for early stopping
  eval_every: int = 50  # steps between held-out measurements (and checkpoints)
  patience: int = 5  # measurements without improvement before stopping
  max_length: int = 256  # tokens of prompt + solution; longer examples are skipped
  seed: int = 0
  # Weight of the sibling ranking loss (`sibling_pairs`) beside the per-step
  # cross-entropy; 0 = the paper's loss alone. A PRM option; the ORM has one target.
  sibling_weight: float = 0.0

  def __post_init__(self):
    if self.labels not in ("soft", "hard"):
      raise UserError(f"RewardTraining.labels must be 'soft' or 'hard', got {self.labels!r}")
    if min(self.batch_size, self.num_steps, self.eval_every, self.patience,
           self.max_length) < 1:
      raise UserError("RewardTraining.batch_size, num_steps, eval_every, patience and "
                      "max_length must be >= 1")
    if self.warmup_steps < 0 or not 0 <= self.dropout_rate < 1 or self.learning_rate <= 0:
      raise UserError("RewardTraining needs warmup_steps >= 0, 0 <= dropout_rate < 1 and "
                      "learning_rate > 0")
    if not self.sibling_weight >= 0:
      raise UserError(f"RewardTraining.sibling_weight={self.sibling_weight} must be >= 0")
    if not 0 <= self.validation_percent <= 100:
      raise UserError(f"RewardTraining.validation_percent={self.validation_percent} must lie "
                      "in [0, 100]")


@dataclasses.dataclass
class Examples:
  """Right-padded solutions with the token indices where targets apply.

  tokens_MxL int32, lengths_M int32; targets at label_index_MxS (int32, 0 on
  padding) with value label_MxS (float32) and weight_MxS (1 real, 0 padding).
  question_M int32 numbers the questions (host bookkeeping for sibling pairs and
  batches; not a model input).
  """

  tokens_MxL: np.ndarray
  lengths_M: np.ndarray
  label_index_MxS: np.ndarray
  label_MxS: np.ndarray
  weight_MxS: np.ndarray
  question_M: np.ndarray

  def __len__(self):
    return self.lengths_M.shape[0]

  def take(self, rows) -> dict:
    """The model's batch arrays of these rows."""
    return {k: v[rows] for k, v in dataclasses.asdict(self).items() if k != "question_M"}

  def siblings(self) -> sibling_pairs.Pairs:
    """The pairs of sibling steps whose labels differ (`sibling_pairs.find`)."""
    return sibling_pairs.find(self.tokens_MxL, self.label_index_MxS, self.label_MxS,
                              self.weight_MxS, self.question_M)


def load_examples(task_name: str, split: str, kind: str, training: RewardTraining,
                  task: task_lib.Task, codec: workdir_lib.Codec) -> Examples:
  """Reads one split of the labels task into arrays: PRM targets per step, ORM one per solution.

  Solutions are tokenized by the policy's `codec` as a verifier will read them at test
  time (`labeling.solution_tokens`: prompt, solution, end token).
  """
  dataset = seqio.get_mixture_or_task(task_name).get_dataset(
      sequence_length=None, split=split, shuffle=False)
  rows, skipped, prompt_ids, question_ids = [], 0, {}, {}
  for ex in dataset.as_numpy_iterator():
    prompt = ex["prompt_text"].decode()
    if prompt not in prompt_ids:  # every sample of a question shares its prompt
      prompt_ids[prompt] = codec.encode_prompt(prompt, task.chat)
    tokens, ends = labeling.solution_tokens(task, codec, prompt_ids[prompt],
                                            ex["solution_text"].decode())
    if len(ends) != len(ex["soft"]):
      raise UserError(f"a solution of uid {ex['uid'].decode()} has {len(ex['soft'])} step "
                      f"labels but {len(ends)} steps of task {task.name!r}: label with the "
                      "task the reward model is trained for")
    if kind == "prm":
      index = ends
      label = (ex["soft"] if training.labels == "soft" else ex["hard"]).astype(np.float32)
    else:
      index, label = [len(tokens) - 1], np.asarray([ex["correct"]], np.float32)
    if len(tokens) > training.max_length:
      skipped += 1
      continue
    question = question_ids.setdefault(ex["uid"], len(question_ids))
    rows.append((tokens, index, label.tolist(), question))
  if not rows:
    raise UserError(f"the {split} split of {task_name} has no usable solutions "
                    f"({skipped} longer than max_length={training.max_length}); label more "
                    "questions or raise RewardTraining.max_length")
  if skipped:
    print(f"{split}: skipped {skipped} solutions longer than {training.max_length} tokens")
  length = max(len(r[0]) for r in rows)
  width = max(len(r[1]) for r in rows)
  ex = Examples(np.zeros((len(rows), length), np.int32), np.zeros((len(rows),), np.int32),
                np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32),
                np.zeros((len(rows), width), np.float32),
                np.asarray([r[3] for r in rows], np.int32))
  for m, (tokens, index, label, _) in enumerate(rows):
    ex.tokens_MxL[m, :len(tokens)] = tokens
    ex.lengths_M[m] = len(tokens)
    ex.label_index_MxS[m, :len(index)] = index
    ex.label_MxS[m, :len(label)] = label
    ex.weight_MxS[m, :len(label)] = 1.0
  return ex


def batch_rows(step: int, batch_size: int, num_examples: int, seed: int,
               group_M=None) -> np.ndarray:
  """Example indices of a training step: consecutive slices of a fresh permutation per epoch.

  group_M: None, or a group id per example (its question): then each epoch permutes
  the groups and keeps a group's examples together, so a batch holds whole groups
  (but where it is cut). A pure function of (step, seed), so a resumed run sees the
  same batches.
  """
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, within = flat // num_examples, flat % num_examples
  rows = np.empty_like(flat)
  for epoch in np.unique(epochs):
    rng = np.random.default_rng([seed, int(epoch)])
    if group_M is None:
      order = rng.permutation(num_examples)
    else:
      _, dense_M = np.unique(group_M, return_inverse=True)
      place_of_group = np.argsort(rng.permutation(dense_M.max() + 1))
      order = np.argsort(place_of_group[dense_M], kind="stable")
    rows[epochs == epoch] = order[within[epochs == epoch]]
  return rows


def _value_logits(model, params, batch, deterministic, dropout_key):
  """[M, S] value logits at the target tokens."""
  slots_L = jnp.arange(batch["tokens_MxL"].shape[1])
  positions = jnp.where(slots_L[None] < batch["lengths_M"][:, None], slots_L[None], -1)
  logits_MxL, _ = model.apply(params, batch["tokens_MxL"], positions,
                              deterministic=deterministic,
                              rngs=None if dropout_key is None else {"dropout": dropout_key})
  return jnp.take_along_axis(logits_MxL, batch["label_index_MxS"], axis=1)


def _cross_entropy(logits_MxS, batch):
  losses = optax.sigmoid_binary_cross_entropy(logits_MxS, batch["label_MxS"])
  count = batch["weight_MxS"].sum()
  return (losses * batch["weight_MxS"]).sum() / jnp.maximum(count, 1.0), count


def value_loss(model, params, batch, deterministic=True, dropout_key=None):
  """(weighted mean binary cross-entropy over targets, number of targets)."""
  return _cross_entropy(_value_logits(model, params, batch, deterministic, dropout_key), batch)


def training_loss(model, params, batch, sibling_weight: float, deterministic=True,
                  dropout_key=None):
  """(objective, parts): the cross-entropy plus sibling_weight x the sibling ranking
  loss where the batch carries pairs (`sibling_pairs.in_batch`). parts holds sums to
  pool over batches: "targets", "cross_entropy" (x targets) and, with pairs, "pairs",
  "sibling_loss" (x pairs) and "pairs_ranked_right"."""
  logits_MxS = _value_logits(model, params, batch, deterministic, dropout_key)
  mean, count = _cross_entropy(logits_MxS, batch)
  parts = {"targets": count, "cross_entropy": mean * count}
  objective = mean
  if "pair_a_P" in batch:
    pair_mean, pairs, right = sibling_pairs.loss(logits_MxS, batch)
    parts.update(pairs=pairs, sibling_loss=pair_mean * pairs, pairs_ranked_right=right)
    objective = objective + sibling_weight * pair_mean
  return objective, parts


def _early_stopping_state(logged: list[dict]):
  """(best held-out loss, its step, measurements since) from the metrics logged."""
  best, best_step, since = np.inf, 0, 0
  for record in logged:
    if "val_loss" not in record:
      continue
    if record["val_loss"] < best:
      best, best_step, since = record["val_loss"], record["step"], 0
    else:
      since += 1
  return best, best_step, since


def _labels_policy(labels_path: str, task: task_lib.Task) -> str:
  """The policy whose samples the labels are ("" = the work dir's own): the reward model
  starts from it and reads its tokens. Refuses labels of another task."""
  settings = resumable.read_settings(labels_path)
  if settings.get("task", task.name) != task.name:
    raise UserError(f"{labels_path} labels task {settings['task']!r}, not {task.name!r}: set "
                    "the stage's task to the one label_prm used")
  return settings.get("policy", "")


def _backbone(workdir: str, backbone: str, policy: str,
              policy_checkpoint: workdir_lib.Checkpoint):
  """(source, checkpoint) the reward model starts from: the labels' `policy` unless
  `backbone` names another (a path, relative ones under the work dir, or "smollm2").
  Search hands the PRM the policy's token ids, so a backbone that reads text with
  other tokens is refused."""
  if not backbone:
    return policy, policy_checkpoint
  under = os.path.join(workdir, backbone)
  source = under if epath.Path(under).exists() else backbone
  checkpoint = workdir_lib.open_checkpoint(source)
  reads = lambda c: (c.vocab_size, c.eos_id, c.token_texts)
  if reads(checkpoint.codec) != reads(policy_checkpoint.codec):
    raise UserError(f"backbone {source} reads text with other tokens than the policy that "
                    f"sampled the labels ({policy or workdir}); a reward model must share the "
                    "policy's tokenizer")
  return source, checkpoint


def fit(workdir: str, kind: str, labels_file: str, output_dir: str, training: RewardTraining,
        task, backbone: str = "") -> dict:
  """Trains a PRM (kind="prm") or ORM (kind="orm") on `workdir`'s labels; returns a summary.

  backbone: see `train_prm`.
  """
  task = task_lib.get(task)
  out = os.path.join(workdir, output_dir)
  labels_path = resumable.absolute(os.path.join(workdir, labels_file))
  labeling.read_labels(labels_path)  # one clear error for a missing or damaged file, first
  policy = _labels_policy(labels_path, task)
  # One seqio task per labels file; seqio names allow only word characters.
  task_name = labeling.register_prm_labels_task(
      "reward_labels_" + re.sub(r"\W", "_", labels_path), labels_path,
      training.validation_percent)
  policy_checkpoint = workdir_lib.open_checkpoint(policy or workdir)
  codec = policy_checkpoint.codec
  start_from, checkpoint = _backbone(workdir, backbone, policy, policy_checkpoint)
  train_ex = load_examples(task_name, "train", kind, training, task, codec)
  val_ex = load_examples(task_name, "validation", kind, training, task, codec)
  if kind == "orm" and training.sibling_weight:
    raise UserError("RewardTraining.sibling_weight is a PRM option: an ORM has one target per "
                    "solution, so no siblings; set it under prm/RewardTraining only")
  # Sibling pairs are found for every PRM: the held-out ranking accuracy is reported
  # even where the loss does not use them.
  train_pairs = train_ex.siblings() if kind == "prm" else None
  val_pairs = val_ex.siblings() if kind == "prm" else None
  max_pairs = MAX_PAIRS_PER_ROW * training.batch_size
  if train_pairs is not None:
    print(f"prm: {len(train_pairs)} sibling pairs with different labels in training, "
          f"{len(val_pairs)} held out")

  def with_pairs(batch, rows, ex, pairs):
    return batch if pairs is None else {**batch,
                                        **sibling_pairs.in_batch(pairs, rows, len(ex), max_pairs)}

  # Whole questions per batch where the loss needs siblings to meet; else as always.
  train_groups = train_ex.question_M if training.sibling_weight else None
  # The reward model has the backbone's shape; its weights load only on a fresh start.
  config = dataclasses.replace(checkpoint.config, dropout_rate=training.dropout_rate)
  model = reward_model.RewardModel(config)
  workdir_lib.save_model_config(out, config)
  tx, schedule = optimizer.make_optimizer(
      training.num_steps, learning_rate=training.learning_rate,
      warmup_steps=training.warmup_steps, weight_decay=training.weight_decay, b1=training.b1,
      b2=training.b2)

  with workdir_lib.device_context() as devices:
    mesh, rules = devices.mesh, devices.rules
    abstract, shardings, init = trainer.abstract_state(model, tx, mesh, rules)
    # Every batch array is split along its rows, like the policy's training batches.
    batch_sharding = {
        name: partitioning.logical_to_sharding(
            ("activation_batch",) + (None,) * (array.ndim - 1), mesh, rules)
        for name, array in with_pairs(train_ex.take(np.arange(1)), np.arange(1), train_ex,
                                      train_pairs).items()}
    mngr = checkpointing.manager(os.path.join(out, "checkpoints"), keep=1)
    best_mngr = checkpointing.manager(os.path.join(out, "best"), keep=1)
    restored = checkpointing.restore_latest(mngr, abstract)
    if restored is None:
      state = jax.jit(init, out_shardings=shardings)(jax.random.key(training.seed))
      # The backbone starts from its checkpoint; only the value head is fresh. Adam's
      # moments are zeros whatever the parameters, so the optimizer state stands.
      backbone_params = workdir_lib.load_policy(start_from, devices, workdir).params
      state = state.replace(params=reward_model.with_backbone(state.params, backbone_params))
    else:
      state, _ = restored
    start_step = int(state.step)
    # Lines past the restored step go: this run logs those steps again.
    metrics_log = metrics.MetricsWriter(out, start_step)
    best, best_step, since = _early_stopping_state(metrics_log.logged)

    def train_step(state, batch):
      key = jax.random.fold_in(jax.random.key(training.seed), state.step)
      (loss, _), grads = jax.value_and_grad(
          lambda p: training_loss(model, p, batch, training.sibling_weight, False, key),
          has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state), loss

    step_fn = jax.jit(train_step, in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, partitioning.replicated(mesh)),
                      donate_argnums=(0,))
    eval_fn = jax.jit(
        lambda params, batch: training_loss(model, params, batch, training.sibling_weight)[1],
        in_shardings=(shardings.params, batch_sharding))

    def held_out(params) -> dict:
      """{"val_loss": the objective, pooled over the held-out solutions} and, for a
      PRM, its parts and the held-out sibling pairs ranked right."""
      sums = {}
      for begin in range(0, len(val_ex), training.batch_size):
        rows = np.arange(begin, begin + training.batch_size)
        batch = val_ex.take(np.minimum(rows, len(val_ex) - 1))
        batch["weight_MxS"] = batch["weight_MxS"] * (rows < len(val_ex))[:, None]
        batch = with_pairs(batch, rows[rows < len(val_ex)], val_ex, val_pairs)
        parts = eval_fn(params, multihost.global_batch(batch, batch_sharding))
        for name, value in parts.items():
          sums[name] = sums.get(name, 0.0) + float(value)
      out = {"val_loss": sums["cross_entropy"] / max(sums["targets"], 1.0)}
      if "pairs" in sums:
        pairs = max(sums["pairs"], 1.0)
        out.update(val_cross_entropy=out["val_loss"],
                   val_sibling_loss=sums["sibling_loss"] / pairs,
                   val_sibling_accuracy=sums["pairs_ranked_right"] / pairs)
        out["val_loss"] += training.sibling_weight * out["val_sibling_loss"]
      return out

    progress = tqdm.tqdm(total=training.num_steps, initial=start_step, desc=f"train_{kind}",
                         unit="step", dynamic_ncols=True, disable=None)
    stopped_early = since >= training.patience
    step = start_step
    with metrics_log:
      started = time.perf_counter()
      while step < training.num_steps and not stopped_early:
        rows = batch_rows(step, training.batch_size, len(train_ex), training.seed, train_groups)
        batch = with_pairs(train_ex.take(rows), rows, train_ex, train_pairs)
        # Every process holds the examples; each places the rows its devices hold.
        state, loss = step_fn(state, multihost.global_batch(batch, batch_sharding))
        step += 1
        progress.update(1)
        if step % training.eval_every and step != training.num_steps:
          continue
        measured = held_out(state.params)
        val_loss = measured["val_loss"]
        record = {"step": step, "loss": float(loss), **measured,
                  "learning_rate": float(schedule(step - 1)),
                  "seconds": time.perf_counter() - started}
        metrics_log.write(record)
        progress.set_postfix(loss=f"{float(loss):.4f}", val=f"{val_loss:.4f}")
        if val_loss < best:
          best, best_step, since = val_loss, step, 0
          checkpointing.save(best_mngr, step, {"params": state.params}, step)
        else:
          since += 1
        stopped_early = since >= training.patience
        # Saved after `best`, so a restored step never has a newer best than recorded.
        checkpointing.save(mngr, step, state, step)
    progress.close()
    mngr.wait_until_finished()
    best_mngr.wait_until_finished()
    mngr.close()
    best_mngr.close()

  summary = {"kind": kind, "backbone": start_from, "matmul_params": config.num_matmul_params(),
             "train_solutions": len(train_ex), "validation_solutions": len(val_ex),
             "steps": step, "best_step": best_step, "best_val_loss": best,
             "stopped_early": bool(stopped_early)}
  resumable.write_json(os.path.join(out, "summary.json"), summary)
  print(f"{kind}: {summary['train_solutions']} train / {summary['validation_solutions']} "
        f"held-out solutions, {step} steps, best held-out loss {best:.4f} at step {best_step}"
        + (" (stopped early)" if stopped_early else ""))
  return summary


@gin.configurable(denylist=["workdir"])
def train_prm(workdir: str, task=gin.REQUIRED, labels_file: str = "prm_labels.jsonl",
              output_dir: str = "prm", training: RewardTraining = RewardTraining(),
              backbone: str = ""):
  """Stage: the process reward model, on the step labels of `label_prm`.

  task: the task the labels were made for (a `Task` or registered name): it splits the
  solutions into steps and says whether the prompt is a chat turn.
  backbone: the checkpoint the reward model starts from; "" = the policy that sampled
    the labels. Else a path (relative ones under the work dir, e.g. a larger policy
    trained by `@backbone/train`, configs/arith/verifiers_large.gin) or "smollm2"; it
    must read text with the policy's tokens.
  """
  return fit(workdir, "prm", labels_file, output_dir, training, task, backbone)


@gin.configurable(denylist=["workdir"])
def train_orm(workdir: str, task=gin.REQUIRED, labels_file: str = "prm_labels.jsonl",
              output_dir: str = "orm", training: RewardTraining = RewardTraining(),
              backbone: str = ""):
  """Stage: the outcome reward model (baseline), on the final correctness of the same
  samples; `backbone` as for `train_prm`."""
  return fit(workdir, "orm", labels_file, output_dir, training, task, backbone)
