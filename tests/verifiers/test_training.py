"""Reward model training: targets land on the right tokens, a learnable signal is learnt,
early stopping keeps the best parameters, and kill -9 then resume == uninterrupted."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ttc import partitioning, resumable, workdir as workdir_lib
from ttc.data import arith, arith_task, task as task_lib, vocab
from ttc.errors import UserError
from ttc.train import reward_training as training
from ttc.verifiers import labeling, reward_model, scoring

from tests.verifiers.conftest import write_tiny_hf_policy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK = "rm_training_test"


def _problems():
  task = arith_task.register_arith_task(name=TASK, num_train_per_level=40,
                                        num_eval_per_level=1, levels=[(2, 9), (3, 9)],
                                        max_value=99, seed=0)
  return task.arith_problems("train")


def _sample(problem, text, correct, soft, codec):
  truth = arith.step_correctness(problem.question, text)
  return {"text": text, "correct": correct, "soft": soft, "hard": [s > 0 for s in soft],
          "true": truth,
          "step_ends": labeling.step_end_tokens(arith_task.ArithTask(), codec, text)}


def write_labels(path, codec=None, policy=None, wrong_first_step=False):
  """Per question: its reference solution (labels 1) and the same text with a space
  before every step (labels 0): a signal a tiny model learns in a few dozen steps.

  codec: the tokenizer of the policy that "sampled" them (default: a work dir's);
  policy: its checkpoint, recorded in the settings as label_prm would;
  wrong_first_step: the labels-0 text also gets a wrong first result, so its
  ground-truth step labels ("true") say so.
  """
  codec = codec or workdir_lib.char_codec()
  lines = []
  for p in _problems():
    good = p.solution
    bad = "\n".join(" " + line for line in good.split("\n"))
    if wrong_first_step:
      bad = bad.replace("=", "=1", 1)
    n = len(arith.split_steps(good))
    samples = [_sample(p, good, True, [1.0] * n, codec),
               _sample(p, bad, False, [0.0] * n, codec)]
    lines.append(json.dumps({"uid": p.uid, "question": p.question, "prompt": p.prompt,
                             "answer": str(p.answer), "level": p.level, "num_sampled": 2,
                             "samples": samples}))
  path.write_text("\n".join(lines) + "\n")
  if policy is not None:
    resumable.pin_settings(str(path), {"task": TASK, "policy": policy, "policy_kind": "hf",
                                       "policy_step": None}, False, "")


def _settings(**overrides):
  base = dict(num_steps=100, batch_size=8, learning_rate=1e-2, warmup_steps=2, dropout_rate=0.0,
              eval_every=25, patience=3, validation_percent=20, max_length=64)
  base.update(overrides)
  return training.RewardTraining(**base)


def test_batches_are_epoch_permutations():
  rows = np.concatenate([training.batch_rows(s, 4, 10, seed=3) for s in range(5)])
  assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
  np.testing.assert_array_equal(training.batch_rows(3, 4, 10, seed=3), rows[12:16])


def test_prm_targets_sit_on_step_ends(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  name = labeling.register_prm_labels_task("targets_test", str(policy_workdir / "prm_labels.jsonl"),
                                           20)
  args = (_settings(), task_lib.get(TASK), workdir_lib.char_codec())
  prm = training.load_examples(name, "train", "prm", *args)
  orm = training.load_examples(name, "train", "orm", *args)
  [newline] = vocab.CharVocabulary().encode("\n")
  eos = vocab.EOS_ID
  for m in range(len(prm)):
    tokens = prm.tokens_MxL[m]
    ends = prm.label_index_MxS[m][prm.weight_MxS[m] > 0]
    assert all(tokens[i] == newline for i in ends[:-1]) and tokens[ends[-1]] == eos
    assert orm.label_index_MxS[m, 0] == prm.lengths_M[m] - 1 == ends[-1]
  assert set(prm.label_MxS[prm.weight_MxS > 0]) == {0.0, 1.0}


def test_prm_learns_and_keeps_its_best_parameters(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  summary = training.train_prm(str(policy_workdir), task=TASK, training=_settings())
  records = [json.loads(l) for l in open(policy_workdir / "prm" / "metrics.jsonl")]
  assert [r["step"] for r in records] == [25, 50, 75, 100]
  assert summary["best_val_loss"] == min(r["val_loss"] for r in records) < 0.05
  # The saved parameters are the best measurement's: re-measure their held-out loss.
  mesh, rules = partitioning.make_mesh(), partitioning.logical_axis_rules()
  model, params = reward_model.load(str(policy_workdir / "prm"), mesh, rules)
  val = training.load_examples(
      labeling.register_prm_labels_task("best_test", str(policy_workdir / "prm_labels.jsonl"),
                                        20), "validation", "prm", _settings(), task_lib.get(TASK),
      workdir_lib.char_codec())
  loss, _ = training.value_loss(model, params, val.take(np.arange(len(val))))
  assert float(loss) == pytest.approx(summary["best_val_loss"], rel=1e-4)
  # And they separate the two kinds of solution on held-out questions.
  scores = scoring.score_sequences(model, params, val.tokens_MxL, val.lengths_M)
  last = np.asarray(scores)[np.arange(len(val)), val.lengths_M - 1]
  good = val.label_MxS[:, 0] == 1
  assert last[good].min() > last[~good].max()


def test_the_sibling_loss_trains_and_the_held_out_ranking_is_reported(policy_workdir):
  # Each question's right and wrong solutions differ from their first step on: one
  # sibling pair per question, ranked by its labels 1 vs 0.
  write_labels(policy_workdir / "prm_labels.jsonl")
  summary = training.train_prm(str(policy_workdir), task=TASK,
                               training=_settings(sibling_weight=1.0))
  records = [json.loads(l) for l in open(policy_workdir / "prm" / "metrics.jsonl")]
  for r in records:
    assert r["val_loss"] == pytest.approx(r["val_cross_entropy"] + r["val_sibling_loss"])
  assert summary["best_val_loss"] == min(r["val_loss"] for r in records)
  assert records[-1]["val_sibling_accuracy"] == 1.0
  # Without the loss, the ranking is still measured, and the objective is the
  # cross-entropy alone.
  plain = training.train_prm(str(policy_workdir), task=TASK, output_dir="prm_plain",
                             training=_settings(num_steps=25))
  [record] = [json.loads(l) for l in open(policy_workdir / "prm_plain" / "metrics.jsonl")]
  assert record["val_loss"] == record["val_cross_entropy"] == plain["best_val_loss"]
  assert 0 <= record["val_sibling_accuracy"] <= 1


def test_the_sibling_loss_is_refused_for_an_orm(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  with pytest.raises(UserError, match="PRM option"):
    training.train_orm(str(policy_workdir), task=TASK, training=_settings(sibling_weight=1.0))


def test_early_stopping_stops_after_patience(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  summary = training.train_orm(str(policy_workdir), task=TASK,
                               training=_settings(learning_rate=1e-9, patience=2, eval_every=5))
  # The held-out loss barely moves after the first measurement: stop 2 measurements later.
  assert summary["stopped_early"] and summary["steps"] <= 20


def test_missing_labels_file_is_one_clear_error(policy_workdir):
  with pytest.raises(UserError, match="label_prm"):
    training.train_prm(str(policy_workdir), task=TASK, training=_settings())


def test_labels_of_another_task_are_refused(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  (policy_workdir / "prm_labels.settings.json").write_text(json.dumps(
      {"task": "math500", "policy": "", "policy_kind": "workdir", "policy_step": 1}))
  with pytest.raises(UserError, match=r"labels task 'math500', not 'rm_training_test'"):
    training.train_prm(str(policy_workdir), task=TASK, training=_settings())


def test_a_reward_model_starts_from_the_hf_policy_that_sampled_its_labels(tmp_path):
  """Labels of an HF checkpoint with its own BPE tokenizer: the reward model takes that
  checkpoint's shape and weights, reads its token ids, and learns the labels."""
  _problems()
  hf_dir = write_tiny_hf_policy(tmp_path / "hf", vocab.ALPHABET)
  codec = workdir_lib.open_checkpoint(hf_dir).codec
  work = tmp_path / "work"  # no policy of its own
  work.mkdir()
  write_labels(work / "prm_labels.jsonl", codec, policy=hf_dir)
  name = labeling.register_prm_labels_task("hf_targets_test", str(work / "prm_labels.jsonl"),
                                           20)
  prm = training.load_examples(name, "train", "prm", _settings(), task_lib.get(TASK), codec)
  # Step ends are the merged "<digit>\n" tokens, then the EOS: not character indices.
  for m in range(len(prm)):
    ends = prm.label_index_MxS[m][prm.weight_MxS[m] > 0]
    assert all(codec.decode([prm.tokens_MxL[m, i]]).endswith("\n") for i in ends[:-1])
    assert prm.tokens_MxL[m, ends[-1]] == codec.eos_id == prm.tokens_MxL[m, prm.lengths_M[m] - 1]
  assert any(len(codec.decode([t])) > 1 for t in prm.tokens_MxL[0])

  summary = training.train_prm(str(work), task=TASK, training=_settings())
  assert summary["best_val_loss"] < 0.05, summary
  with workdir_lib.device_context() as devices:
    model, params = workdir_lib.load_reward_model(str(work / "prm"), devices, codec)
    policy = workdir_lib.load_policy(hf_dir, devices)
  assert model.config == dataclasses.replace(policy.model.config, dropout_rate=0.0)
  # Fine-tuned from the policy's weights: rows of ids the labels never use (<unk>, <s>)
  # get no gradient and are still the policy's; the used ones have moved.
  before = np.asarray(policy.params["params"]["embed_tokens"]["embedding"])
  after = np.asarray(params["params"]["backbone"]["embed_tokens"]["embedding"])
  used = np.isin(np.arange(len(before)), prm.tokens_MxL[prm.tokens_MxL > 0])
  assert not used[:2].any() and used.sum() > 10
  np.testing.assert_array_equal(after[~used], before[~used])
  assert (np.abs(after - before).max(axis=1)[used] > 0).all()


def test_a_larger_backbone_of_the_same_tokens_starts_the_reward_model(policy_workdir):
  """train_prm.backbone: the reward model takes the backbone's shape and weights (here
  twice the policy's layers, under the work dir), and one with other tokens is refused."""
  from tests.verifiers.conftest import POLICY_CONFIG, write_policy_workdir
  write_labels(policy_workdir / "prm_labels.jsonl")
  larger = dataclasses.replace(POLICY_CONFIG, num_layers=2 * POLICY_CONFIG.num_layers)
  write_policy_workdir(policy_workdir / "backbone", larger, seed=3)
  summary = training.train_prm(str(policy_workdir), task=TASK, backbone="backbone",
                               training=_settings(num_steps=25))
  assert summary["backbone"] == str(policy_workdir / "backbone")
  assert summary["matmul_params"] == larger.num_matmul_params() > POLICY_CONFIG.num_matmul_params()
  with workdir_lib.device_context() as devices:
    model, params = workdir_lib.load_reward_model(str(policy_workdir / "prm"), devices,
                                                  workdir_lib.char_codec())
    start = workdir_lib.load_policy(str(policy_workdir / "backbone"), devices).params
  assert model.config == dataclasses.replace(larger, dropout_rate=0.0)
  # Fine-tuned from the backbone: the embedding rows of ids the labels never use are
  # still the backbone's (a fresh or the policy's initialisation would differ).
  before = np.asarray(start["params"]["embed_tokens"]["embedding"])
  after = np.asarray(params["params"]["backbone"]["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(after[vocab.UNK_ID], before[vocab.UNK_ID])

  hf_dir = write_tiny_hf_policy(policy_workdir.parent / "hf", vocab.ALPHABET)
  with pytest.raises(UserError, match="other tokens than the policy"):
    training.train_prm(str(policy_workdir), task=TASK, backbone=hf_dir, output_dir="prm_hf",
                       training=_settings(num_steps=5))


def _train_script(workdir):
  return (
      "import sys; sys.path.insert(0, %r)\n"
      "from tests.verifiers.test_training import _problems, _settings\n"
      "_problems()  # registers the task\n"
      "from ttc.train import reward_training as training\n"
      "training.train_prm(%r, task=%r, training=_settings(num_steps=60, eval_every=5, "
      "patience=100))\n"
      % (REPO, str(workdir), TASK))


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
  from tests.verifiers.conftest import write_policy_workdir
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  dirs = []
  for name in ("killed", "straight"):
    d = write_policy_workdir(tmp_path / name)
    write_labels(d / "prm_labels.jsonl")
    dirs.append(d)
  killed, straight = dirs
  proc = subprocess.Popen([sys.executable, "-c", _train_script(killed)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = killed / "prm" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(metrics.read_text().splitlines()) < 12, "killed too late to test resuming"
  for d in dirs:
    subprocess.run([sys.executable, "-c", _train_script(d)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
  read = lambda d: [(r["step"], round(r["val_loss"], 6)) for r in
                    map(json.loads, open(d / "prm" / "metrics.jsonl"))]
  assert read(killed) == read(straight)
  mesh, rules = partitioning.make_mesh(), partitioning.logical_axis_rules()
  a = reward_model.load(str(killed / "prm"), mesh, rules)[1]
  b = reward_model.load(str(straight / "prm"), mesh, rules)[1]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)


def test_cut_labels_file_through_the_driver_is_one_error_line(policy_workdir):
  write_labels(policy_workdir / "prm_labels.jsonl")
  data = (policy_workdir / "prm_labels.jsonl").read_bytes()
  (policy_workdir / "prm_labels.jsonl").write_bytes(data[:-40])  # kill -9 mid-line
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "ttc.main", "--gin_file=configs/arith/verifiers_quick.gin",
       "--gin.run.stages=[@train_prm]", f"--gin.WORKDIR='{policy_workdir}'"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "prm_labels.jsonl line 80 is cut mid-line" in errors[0], errors[0]


@pytest.mark.parametrize("field, value", [
    ("patience", 0), ("max_length", 0), ("warmup_steps", -1), ("dropout_rate", 1.0),
    ("learning_rate", 0.0), ("validation_percent", 101), ("batch_size", 0),
    ("sibling_weight", -1.0)])
def test_bad_hyperparameters_are_user_errors(field, value):
  with pytest.raises(UserError, match=field):
    training.RewardTraining(**{field: value})
