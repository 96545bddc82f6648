"""Tests for ttc/revision/model.py: the revision model's fine-tune and checkpoint selection.

The data file is written by hand (reference solutions as targets, a wrong answer as
context), the policy is a random tiny work dir, and training runs a few steps: what is
checked is the plumbing (starts from the policy, logs val_loss, keeps what the rule
selects, resumes to the same result), not that revisions improve.
"""

import json
import re
import shutil
import types

import jax
import numpy as np
import pytest

from tests.verifiers.conftest import POLICY_CONFIG, write_policy_workdir
from ttc import checkpointing, partitioning, workdir as workdir_lib
from ttc.data import arith_task, vocab
from ttc.errors import UserError
from ttc.models.transformer import Transformer
from ttc.revision import data, model
from ttc.train import metrics

TASK = "test_revision_model_arith"
NUM_STEPS, EVAL_EVERY = 6, 2
# Tiny shapes; lr large enough that parameters visibly move in NUM_STEPS steps.
SETTINGS = dict(num_steps=NUM_STEPS, batch_size=8, learning_rate=1e-4, warmup_steps=0,
                eval_every=EVAL_EVERY, validation_percent=25, keep_past_minimum=1,
                inputs_length=48, targets_length=40, log_every=2)
# Character ids past the vocabulary's: never an input, so their embedding rows get no
# gradient and (weight decay 0) never change.
UNUSED_IDS = np.arange(vocab.CharVocabulary().vocab_size, POLICY_CONFIG.vocab_size)


@pytest.fixture(scope="module")
def task():
  return arith_task.register_arith_task(TASK, num_train_per_level=12, num_eval_per_level=2,
                                        levels=[(1, 9), (2, 9)])


def _wrong(solution: str) -> str:
  """The reference steps with another boxed answer: a near miss to revise."""
  head, _, answer = solution.rpartition("\\boxed{")
  return f"{head}\\boxed{{{int(answer.rstrip('}')) + 1}}}"


def write_revision_data(path, task):
  """One line per train question, two examples each: no context, and one wrong attempt."""
  lines = []
  for p in task.problems("train"):
    examples = [{"context": [], "target": p.solution, "k": 0},
                {"context": [_wrong(p.solution)], "target": p.solution, "k": 1}]
    lines.append(json.dumps({
        "uid": p.uid, "question": p.question, "prompt": task.prompt(p), "answer": p.answer,
        "level": p.level, "num_sampled": 3, "num_correct": 2, "num_incorrect": 1,
        "examples": examples}) + "\n")
  path.write_text("".join(lines))
  return path


def make_workdir(path, task):
  """A work dir with a random policy (seed 1, not the trainer's 0) and revision data."""
  write_policy_workdir(path, seed=1)
  write_revision_data(path / "revision_data.jsonl", task)
  return path


def copy_workdir(source, path):
  """The policy and data of `source`, without its revision model."""
  path.mkdir(parents=True)
  shutil.copytree(source / "checkpoints", path / "checkpoints")
  for name in ("model_config.json", "revision_data.jsonl"):
    shutil.copy(source / name, path)
  return path


def _params(directory, step=None):
  """Host copies of the params of a train-state checkpoint directory, and the step."""
  mesh = partitioning.make_mesh()
  abstract, _ = partitioning.abstract_params(Transformer(POLICY_CONFIG), mesh,
                                             partitioning.logical_axis_rules())
  params, step = checkpointing.restore_params(str(directory), abstract, step)
  return jax.device_get(params), step


@pytest.fixture(scope="module")
def trained(tmp_path_factory, task):
  """(work dir, summary) of one uninterrupted run."""
  workdir = make_workdir(tmp_path_factory.mktemp("straight"), task)
  return workdir, model.train_revision(str(workdir), task=task, **SETTINGS)


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("losses, keep, kept, minimum", [
    ([5, 3, 4, 2, 2.5, 2.6], 1, 50, 40),  # one past the minimum
    ([5, 3, 4, 2, 2.5, 2.6], 0, 40, 40),  # the minimum itself
    ([5, 3, 4, 2, 2.5, 2.6], 2, 60, 40),
    ([5, 3, 4, 2, 2.5, 2.6], 3, 60, 40),  # ended sooner: the last
    ([5, 4, 3, 2], 1, 40, 40),  # the minimum is the last
    ([3, 2, 2, 4], 1, 30, 20),  # equal losses: the first is the minimum
    ([3, 2, float("nan"), 1], 1, 20, 20),  # diverged: nothing from the NaN on
    ([3, 2, float("inf")], 0, 20, 20),
])
def test_select_checkpoint_keeps_the_measurement_past_the_minimum(losses, keep, kept, minimum):
  evaluations = [(10 * (i + 1), loss) for i, loss in enumerate(losses)]
  selection = model.select_checkpoint(evaluations, keep)
  assert (selection.step, selection.minimum_step) == (kept, minimum)
  assert selection.val_loss == dict(evaluations)[kept]
  assert selection.past_minimum == (kept - minimum) // 10 <= keep
  assert f"at step {minimum}" in selection.reason and f"step {kept}" in selection.reason
  if selection.past_minimum < keep:
    assert "training ended" in selection.reason


def test_select_checkpoint_needs_a_finite_measurement():
  for evaluations in ([], [(10, float("nan")), (20, 1.0)]):
    with pytest.raises(UserError, match="no finite validation loss"):
      model.select_checkpoint(evaluations, 1)


def _fake_state(step):
  return types.SimpleNamespace(params={"params": {"w": np.full((3,), step, np.float32)}})


def _saved(directory):
  """{step: w} of what KeepSelected left in `directory`."""
  mngr = checkpointing.manager(str(directory), keep=2)
  steps = mngr.all_steps()
  mngr.close()
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), np.float32)}}
  return {s: float(checkpointing.restore_params(str(directory), abstract, s)[0]["params"]["w"][0])
          for s in steps}


def test_keep_selected_saves_what_the_rule_selects_and_survives_a_restart(tmp_path):
  losses = [5, 3, 4, 2, 2.5, 2.6, 2.7]
  directory = tmp_path / "checkpoints"
  keeper = model.KeepSelected(str(directory), keep_past_minimum=1)
  keeper.resume(0, [])
  for i, loss in enumerate(losses):
    step = 10 * (i + 1)
    keeper.after_eval(step, loss, _fake_state(step))
    chosen = model.select_checkpoint(keeper.evaluations, 1).step
    saved = _saved(directory)
    # The choice so far is on disk (the newest), with its parameters; at most two kept.
    assert max(saved) == chosen and saved[chosen] == chosen and len(saved) <= 2
  keeper.finish(50)
  assert _saved(directory) == {50: 50.0}

  # Killed after the save at step 30 and before the trainer's checkpoint of it: the rerun
  # restarts at step 20, and the save of step 30 (to be measured again) is dropped.
  directory = tmp_path / "killed"
  keeper = model.KeepSelected(str(directory), keep_past_minimum=1)
  keeper.resume(0, [])
  for i, loss in enumerate(losses[:3]):
    keeper.after_eval(10 * (i + 1), loss, _fake_state(10 * (i + 1)))
  keeper.close()
  assert sorted(_saved(directory)) == [20, 30]
  keeper = model.KeepSelected(str(directory), keep_past_minimum=1)
  keeper.resume(20, [(10, 5.0), (20, 3.0)])
  assert _saved(directory) == {20: 20.0}
  keeper.close()
  # A log that selects a step whose parameters are gone is refused, not trained past.
  keeper = model.KeepSelected(str(directory), keep_past_minimum=0)
  with pytest.raises(UserError, match="lacks the parameters of step 10"):
    keeper.resume(20, [(10, 1.0), (20, 3.0)])
  keeper.close()


# ----------------------------------------------------------------------------- the stage


def test_fine_tune_starts_from_the_policy_logs_val_loss_and_keeps_the_selection(trained):
  workdir, summary = trained
  out = workdir / "revision_model"
  records = metrics.read_metrics(str(out / "metrics.jsonl"))
  evaluations = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
  assert [s for s, _ in evaluations] == list(range(EVAL_EVERY, NUM_STEPS + 1, EVAL_EVERY))
  assert all(np.isfinite(v) and v > 0 for _, v in evaluations)
  selection = model.select_checkpoint(evaluations, SETTINGS["keep_past_minimum"])
  assert summary["selected_step"] == selection.step
  assert summary["minimum_step"] == selection.minimum_step
  assert summary["evaluations"] == [{"step": s, "val_loss": v} for s, v in evaluations]
  assert json.loads((out / "summary.json").read_text()) == summary
  assert summary["train_examples"] > 0 and summary["validation_examples"] > 0

  # The output is a ttc work dir holding the selected step only.
  with workdir_lib.device_context() as devices:
    policy = workdir_lib.load_policy(str(out), devices)
  assert policy.step == selection.step and policy.kind == "workdir"
  kept, _ = _params(out / "checkpoints")
  assert [int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit()] == [
      selection.step]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(policy.params), kept)
  if selection.step == NUM_STEPS:  # then also the trainer's last state
    jax.tree.map(np.testing.assert_array_equal, kept, _params(out / "train_checkpoints")[0])

  # Fine-tuned from the policy: each Adam step moves a weight by about lr at most, while
  # a random initialisation (the trainer's seed 0; the policy's is 1) is far away.
  policy_params, _ = _params(workdir / "checkpoints")
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), kept, policy_params))
  assert 0 < max(moved) < 3 * NUM_STEPS * SETTINGS["learning_rate"]
  embedding = lambda p: p["params"]["embed_tokens"]["embedding"]
  np.testing.assert_array_equal(embedding(kept)[UNUSED_IDS], embedding(policy_params)[UNUSED_IDS])


def test_rerun_trains_nothing_and_other_settings_are_refused(trained, task):
  workdir, summary = trained
  out = workdir / "revision_model"
  metrics = (out / "metrics.jsonl").read_bytes()
  train_steps = sorted(d.name for d in (out / "train_checkpoints").iterdir())
  assert model.train_revision(str(workdir), task=task, **SETTINGS) == summary
  assert (out / "metrics.jsonl").read_bytes() == metrics
  assert sorted(d.name for d in (out / "train_checkpoints").iterdir()) == train_steps
  with pytest.raises(UserError, match=r"other settings \(keep_past_minimum 1 -> 0\).*"
                                      r"train_revision.output_dir"):
    model.train_revision(str(workdir), task=task, **{**SETTINGS, "keep_past_minimum": 0})


def test_a_run_killed_between_saves_resumes_to_the_same_selection(tmp_path, task, trained,
                                                                   monkeypatch):
  """Killed at the worst moment: step 4's parameters are kept (the rule chose them) but
  the trainer's checkpoint of step 4 is not written."""
  straight, summary = trained
  workdir = copy_workdir(straight, tmp_path / "work")
  real_save = checkpointing.save

  def save_then_die(mngr, step, state, batches_consumed):
    if str(mngr.directory).endswith(model.TRAIN_CHECKPOINTS) and step == 4:
      raise KeyboardInterrupt("killed")
    return real_save(mngr, step, state, batches_consumed)

  monkeypatch.setattr(checkpointing, "save", save_then_die)
  with pytest.raises(KeyboardInterrupt):
    model.train_revision(str(workdir), task=task, **SETTINGS)
  out = workdir / "revision_model"
  assert 4 in [int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit()]
  monkeypatch.setattr(checkpointing, "save", real_save)

  assert model.train_revision(str(workdir), task=task, **SETTINGS) == summary
  jax.tree.map(np.testing.assert_array_equal, _params(out / "checkpoints"),
               _params(straight / "revision_model" / "checkpoints"))
  steps = [r["step"] for r in metrics.read_metrics(str(out / "metrics.jsonl"))]
  assert steps == sorted(set(steps))  # the lost step-4 line was measured once again


@pytest.mark.parametrize("override, message", [
    ({"inputs_length": 20}, r"longest revision prompt has \d+ tokens, more than "
                            r"train_revision.inputs_length=20 .*inputs_length=\d+$"),
    ({"targets_length": 8}, r"longest revision target has \d+ tokens.*targets_length=\d+$"),
    ({"keep_past_minimum": -1}, r"keep_past_minimum=-1 must be an integer >= 0"),
    ({"validation_percent": 0}, r"validation_percent=0 must be in \(0, 100\)"),
    ({"eval_every": 0}, r"train_revision.eval_every=0 must be a positive integer"),
    ({"data_file": "none.jsonl"}, r"none.jsonl not found; run make_revision_data first"),
])
def test_bad_settings_are_one_line_errors_before_any_work(tmp_path, task, trained, override,
                                                          message):
  workdir = copy_workdir(trained[0], tmp_path / "work")
  with pytest.raises(UserError) as error:
    model.train_revision(str(workdir), task=task, **{**SETTINGS, **override})
  # The first line is what the driver prints (gin appends where the call came from).
  assert re.search(message, str(error.value).splitlines()[0])
  assert not (workdir / "revision_model").exists()


def test_the_longest_prompt_fits_exactly(task, tmp_path):
  """The bound is the data's own longest prompt: one token less is refused."""
  path = write_revision_data(tmp_path / "revision_data.jsonl", task)
  records = data.read_revision_data(str(path))
  longest = data.longest_inputs(task, records)
  assert model._check_lengths(task, records, longest, 40)[0] == longest
  with pytest.raises(UserError, match=f"inputs_length={longest}$"):
    model._check_lengths(task, records, longest - 1, 40)
