"""The revision model (paper §6.1): the policy fine-tuned to write a correct attempt after
its earlier, incorrect ones.

`train_revision` fine-tunes a work dir's policy on `make_revision_data`'s file (inputs =
the question and 0 to 4 previous attempts, targets = a correct attempt), through the
trainer's one loop (`ttc.train.trainer.fit`), with the paper's settings by default:
learning rate 1e-5, batch 128, no dropout. The held-out loss is measured on the
questions of the "validation" split every `eval_every` steps, and the checkpoint kept
is chosen by the rule the paper describes in words ("slightly past the validation-loss
minimum"), made explicit by `select_checkpoint`.

Output `<workdir>/<output_dir>/`, itself a ttc work dir (`ttc.workdir.load_policy` reads
the kept parameters):

    model_config.json     the policy's config (with the fine-tune's dropout_rate)
    checkpoints/<step>    the kept parameters, the only step once the stage is done
    train_checkpoints/    the training state, for resuming after kill -9
    metrics.jsonl         the trainer's log, val_loss at every measurement
    summary.json          measurements, minimum, kept step and why
"""

import dataclasses
import hashlib
import math
import os
from collections.abc import Sequence

import gin
from etils import epath

from ttc import checkpointing, resumable, workdir as workdir_lib
from ttc.data import task as task_lib
from ttc.errors import UserError
from ttc.revision import data
from ttc.train import metrics, trainer
from ttc.verifiers import labeling

TRAIN_CHECKPOINTS = "train_checkpoints"
STAGE = "train_revision"


# ----------------------------------------------------------------------------- the rule


@dataclasses.dataclass(frozen=True)
class Selection:
  """The checkpoint `select_checkpoint` keeps, and why.

  step / val_loss: the kept measurement. minimum_step / minimum_val_loss: the lowest
  held-out loss (nats/token). past_minimum: measurements from the minimum to the kept
  one (keep_past_minimum, or fewer when training ended sooner).
  """

  step: int
  val_loss: float
  minimum_step: int
  minimum_val_loss: float
  past_minimum: int
  keep_past_minimum: int

  @property
  def reason(self) -> str:
    at = (f"validation loss minimum {self.minimum_val_loss:.4f} at step "
          f"{self.minimum_step}")
    if self.past_minimum == self.keep_past_minimum:
      return (f"{at}; kept step {self.step}, {self.past_minimum} evaluation(s) past it "
              f"(keep_past_minimum={self.keep_past_minimum})")
    return (f"{at}; training ended {self.past_minimum} evaluation(s) after it "
            f"(keep_past_minimum={self.keep_past_minimum}), so the last evaluation, step "
            f"{self.step}, is kept")


def select_checkpoint(evaluations: Sequence[tuple[int, float]],
                      keep_past_minimum: int) -> Selection:
  """The measurement whose parameters the revision model keeps.

  evaluations: (step, val_loss) in step order. The minimum is the first of the lowest
  losses; the kept one is `keep_past_minimum` measurements after it (0: the minimum
  itself), or the last if training ended sooner. The paper kept a checkpoint "slightly
  after" the minimum: revisions trained a little longer correct more, while the loss
  on the held-out targets barely changes. A non-finite loss means training diverged:
  measurements from the first one on are not considered.

  Raises:
    UserError: no measurement, or the first is not finite.
  """
  if keep_past_minimum < 0:
    raise ValueError(f"keep_past_minimum must be >= 0, got {keep_past_minimum}")
  finite = []
  for step, loss in evaluations:
    if not math.isfinite(loss):
      break
    finite.append((step, loss))
  if not finite:
    raise UserError("the revision model has no finite validation loss to select a checkpoint "
                    "by (training diverged, or measured nothing): lower "
                    "train_revision.learning_rate or check eval_every <= num_steps")
  minimum = min(range(len(finite)), key=lambda i: (finite[i][1], i))
  kept = min(minimum + keep_past_minimum, len(finite) - 1)
  return Selection(step=finite[kept][0], val_loss=finite[kept][1],
                   minimum_step=finite[minimum][0], minimum_val_loss=finite[minimum][1],
                   past_minimum=kept - minimum, keep_past_minimum=keep_past_minimum)


class KeepSelected:
  """A `trainer.EvalHook` that keeps in `directory` the parameters the rule selects.

  The rule's choice over the measurements so far is either the newest measurement or
  the choice before it (it only moves forward: the minimum's index never decreases), so
  saving the newest whenever it is chosen keeps the final choice without keeping every
  checkpoint. The choice before is kept too (two steps on disk) until the trainer's
  checkpoint of the new measurement is written: a run killed in between resumes from
  the checkpoint before, where that older choice is the right one.
  """

  def __init__(self, directory: str, keep_past_minimum: int):
    self.directory = directory
    self.keep_past_minimum = keep_past_minimum
    self.evaluations: list[tuple[int, float]] = []
    self._mngr = None

  def resume(self, step: int, evaluations: Sequence[tuple[int, float]]) -> None:
    self._mngr = checkpointing.manager(self.directory, keep=2)
    # Saved after the trainer's last checkpoint, so measured again and saved again.
    for saved in self._mngr.all_steps():
      if saved > step:
        self._mngr.delete(saved)
    self.evaluations = list(evaluations)
    if self.evaluations:
      expected = select_checkpoint(self.evaluations, self.keep_past_minimum).step
      if self._mngr.latest_step() != expected:
        raise UserError(f"{self.directory} lacks the parameters of step {expected}, which the "
                        "logged validation losses select; delete its output_dir and rerun")

  def after_eval(self, step: int, val_loss: float, state) -> None:
    self.evaluations.append((step, val_loss))
    if select_checkpoint(self.evaluations, self.keep_past_minimum).step == step:
      checkpointing.save(self._mngr, step, {"params": state.params}, 0)

  def finish(self, step: int) -> None:
    """Leaves `step` (the final choice) as the only one on disk."""
    mngr = self._mngr or checkpointing.manager(self.directory, keep=2)
    if step not in mngr.all_steps():
      raise UserError(f"{self.directory} lacks the selected parameters of step {step}; "
                      "delete its output_dir and rerun")
    for saved in mngr.all_steps():
      if saved != step:
        mngr.delete(saved)
    self.close()

  def close(self) -> None:
    if self._mngr is not None:
      self._mngr.wait_until_finished()
      self._mngr.close()
      self._mngr = None


# ----------------------------------------------------------------------------- the stage


def _check_args(num_steps, batch_size, eval_every, inputs_length, targets_length, log_every,
                learning_rate, warmup_steps, weight_decay, dropout_rate, validation_percent,
                keep_past_minimum) -> None:
  trainer.check_counts(STAGE, num_steps=num_steps, batch_size=batch_size,
                       eval_every=eval_every, inputs_length=inputs_length,
                       targets_length=targets_length, log_every=log_every)
  checks = (
      ("learning_rate", learning_rate, learning_rate > 0, "> 0"),
      ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
      ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
      ("dropout_rate", dropout_rate, 0 <= dropout_rate < 1, "in [0, 1)"),
      # Both splits must hold questions: one to train on, one to select by.
      ("validation_percent", validation_percent, 0 < validation_percent < 100, "in (0, 100)"),
      ("keep_past_minimum", keep_past_minimum,
       isinstance(keep_past_minimum, int) and not isinstance(keep_past_minimum, bool)
       and keep_past_minimum >= 0, "an integer >= 0"),
  )
  for name, value, ok, rule in checks:
    if not ok:
      raise UserError(f"{STAGE}.{name}={value!r} must be {rule}")


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_lengths(task: task_lib.Task, records: list[dict], inputs_length: int,
                   targets_length: int) -> tuple[int, int]:
  """(longest inputs, longest targets + EOS) in tokens; UserError if either is cut.

  seqio keeps the first inputs_length tokens of a prompt, which would drop the latest
  attempts, the ones the model revises; a cut target would end without its answer.
  """
  longest_inputs = data.longest_inputs(task, records)
  vocabulary = task.vocabulary()
  longest_targets = max((len(vocabulary.encode(e["target"])) + 1
                         for r in records for e in r["examples"]), default=0)
  if longest_inputs > inputs_length:
    raise UserError(f"the longest revision prompt has {longest_inputs} tokens, more than "
                    f"{STAGE}.inputs_length={inputs_length} (seqio would cut its latest "
                    f"attempts); set --gin.{STAGE}.inputs_length={longest_inputs}")
  if longest_targets > targets_length:
    raise UserError(f"the longest revision target has {longest_targets} tokens with EOS, more "
                    f"than {STAGE}.targets_length={targets_length}; set "
                    f"--gin.{STAGE}.targets_length={longest_targets}")
  return longest_inputs, longest_targets


@gin.configurable(denylist=["workdir"])
def train_revision(workdir: str, task=gin.REQUIRED, data_file: str = "revision_data.jsonl",
                   output_dir: str = "revision_model", num_steps: int = gin.REQUIRED,
                   batch_size: int = 128, learning_rate: float = 1e-5, warmup_steps: int = 20,
                   weight_decay: float = 0.0, dropout_rate: float = 0.0, eval_every: int = 50,
                   validation_percent: int = 10, keep_past_minimum: int = 1,
                   inputs_length: int = 640, targets_length: int = 144, log_every: int = 10,
                   seed: int = 0) -> dict:
  """Stage: fine-tunes `workdir`'s policy into a revision model in `<workdir>/<output_dir>`.

  Data: `<workdir>/<data_file>` (`make_revision_data`), served as the seqio task
  "<task name>_revision" (`data.register_revision_task`); `validation_percent` of the
  questions (by uid) are held out. Training starts from the policy's latest checkpoint
  (same model config; `dropout_rate` replaces its dropout) and runs `trainer.fit` for
  `num_steps` steps of `batch_size` packed rows of inputs_length + targets_length
  tokens, AdamW with `learning_rate` after `warmup_steps` of linear warmup, then
  cosine decay (`make_optimizer`; its other settings follow its gin bindings).

  Selection rule: the held-out loss is measured every `eval_every` steps and at the
  last; the kept parameters are those of the measurement `keep_past_minimum`
  measurements after the lowest loss (0: the minimum itself); if training ended
  sooner, the last measurement's (`select_checkpoint`). The stage prints the step kept
  and why, and writes `<output_dir>/summary.json`.

  A run killed at any point resumes where its last checkpoint left off and keeps the
  same parameters as an uninterrupted one; a rerun of a finished stage trains nothing.
  The settings are pinned in `<output_dir>.settings.json` (the data file by its
  SHA-256): a rerun with others is refused.

  Args:
    task: the task the data was made for (a `Task` or registered name) with a
      vocabulary of its own (the ttc work dir's character vocabulary).
    inputs_length, targets_length: tokens; refused (one line naming the value to set)
      if shorter than the longest revision prompt / target + EOS in the data.
  Returns:
    the summary: {"task", "data_file", "train_examples", "validation_examples",
     "longest_inputs", "longest_targets", "steps", "evaluations": [{"step",
     "val_loss"}], "minimum_step", "minimum_val_loss", "keep_past_minimum",
     "selected_step", "selected_val_loss", "reason"}.
  """
  _check_args(num_steps, batch_size, eval_every, inputs_length, targets_length, log_every,
              learning_rate, warmup_steps, weight_decay, dropout_rate, validation_percent,
              keep_past_minimum)
  task = task_lib.get(task)
  if task.vocabulary() is None:
    raise UserError(f"task {task.name!r} has no vocabulary of its own; the revision model "
                    "fine-tunes a ttc work dir's character-vocabulary policy (use a task such "
                    "as @register_arith_task())")
  config = dataclasses.replace(workdir_lib.load_model_config(workdir),
                               dropout_rate=dropout_rate)
  data_path = os.path.join(workdir, data_file)
  records = data.read_revision_data(data_path)
  split_examples = {"train": 0, "validation": 0}
  for record in records:
    split_examples[labeling.split_of_uid(record["uid"], validation_percent)] += len(
        record["examples"])
  for split, count in split_examples.items():
    if not count:
      raise UserError(f"the {split} questions of {data_path} have no revision examples "
                      f"(validation_percent={validation_percent}); sample more questions "
                      "with make_revision_data")
  longest_inputs, longest_targets = _check_lengths(task, records, inputs_length,
                                                   targets_length)

  out = os.path.join(workdir, output_dir)
  settings = {"task": task.name, "data_file": data_file, "data_sha256": _file_sha256(data_path),
              "num_steps": num_steps, "batch_size": batch_size,
              "learning_rate": learning_rate, "warmup_steps": warmup_steps,
              "weight_decay": weight_decay, "dropout_rate": dropout_rate,
              "eval_every": eval_every, "validation_percent": validation_percent,
              "keep_past_minimum": keep_past_minimum, "inputs_length": inputs_length,
              "targets_length": targets_length, "seed": seed}
  resumable.pin_settings(out, settings, resuming=epath.Path(out).exists(),
                         rename_hint=f"set {STAGE}.output_dir to another directory")
  revision_task = data.register_revision_task(f"{task.name}_revision", data_path, task,
                                              validation_percent)

  keeper = KeepSelected(os.path.join(out, workdir_lib.CHECKPOINTS), keep_past_minimum)
  try:
    trainer.fit(out, revision_task, num_steps=num_steps, batch_size=batch_size,
                inputs_length=inputs_length, targets_length=targets_length,
                model_config=config, seed=seed, checkpoint_every=eval_every,
                keep_checkpoints=1, log_every=log_every,
                optimizer_kwargs={"learning_rate": learning_rate,
                                  "warmup_steps": warmup_steps, "weight_decay": weight_decay},
                init_from=workdir, eval_every=eval_every, eval_hook=keeper,
                checkpoint_dir=TRAIN_CHECKPOINTS, stage=STAGE)
    evaluations = [(r["step"], r["val_loss"])
                   for r in metrics.read_metrics(os.path.join(out, metrics.FILE))
                   if "val_loss" in r]
    selection = select_checkpoint(evaluations, keep_past_minimum)
    keeper.finish(selection.step)
  finally:
    keeper.close()

  summary = _summary(task, data_file, split_examples, longest_inputs, longest_targets,
                     num_steps, evaluations, selection)
  resumable.write_json(os.path.join(out, "summary.json"), summary)
  print(f"{STAGE}: {split_examples['train']} train / {split_examples['validation']} "
        f"validation examples, {num_steps} steps; {selection.reason} -> "
        f"{os.path.join(out, workdir_lib.CHECKPOINTS)}")
  return summary


def _summary(task, data_file: str, split_examples: dict, longest_inputs: int,
             longest_targets: int, steps: int, evaluations, selection: Selection) -> dict:
  return {"task": task.name, "data_file": data_file,
          "train_examples": split_examples["train"],
          "validation_examples": split_examples["validation"],
          "longest_inputs": longest_inputs, "longest_targets": longest_targets, "steps": steps,
          "evaluations": [{"step": s, "val_loss": v} for s, v in evaluations],
          "minimum_step": selection.minimum_step,
          "minimum_val_loss": selection.minimum_val_loss,
          "keep_past_minimum": selection.keep_past_minimum,
          "selected_step": selection.step, "selected_val_loss": selection.val_loss,
          "reason": selection.reason}
