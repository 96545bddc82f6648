"""Trainer: one step sharded == one step on one device; kill -9 then resume == uninterrupted."""

import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import checkpointing, partitioning
from ttc.errors import UserError
from ttc.train import optimizer, trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, dropout_rate=0.1)


def _batch(batch=8, length=16):
  tokens = np.asarray(jax.random.randint(jax.random.key(3), (batch, length + 1), 3, 32))
  weights = np.ones((batch, length), np.float32)
  weights[:, :4] = 0  # prompt tokens carry no loss
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": weights,
          "decoder_positions": np.broadcast_to(np.arange(length), (batch, length)).copy(),
          "decoder_segment_ids": np.ones((batch, length), np.int32)}


B1, B2, ADAM_EPS = 0.9, 0.95, 1e-8  # the optimizer's betas; eps is optax.adamw's default
# A weight's gradient sums B*L = 128 per-token terms, each through f32 contractions of length
# <= 64. Any summation order lands within n*u = 128 * 6e-8 ~ 1e-5 of the exact sum relative to
# the summed magnitudes, for which the leaf's largest gradient stands in; the loss, a mean over
# the same tokens, gets the same bound. Measured between the meshes with AVX-512, AVX2 and
# SSE4.2 code, one thread, 128-bit vectors, fast math and -O0: gradients <= 7.3e-7 of the leaf's
# largest, loss <= 2.2e-7, grad norm <= 3.3e-7.
GRAD_RTOL = 1e-5


def _train_setup(mesh):
  """(init() -> state, step(host state) -> (state, metrics)) on `mesh`, both jitted."""
  model = Transformer(CONFIG)
  tx, schedule = optimizer.make_optimizer(10, learning_rate=1e-2, warmup_steps=0, b1=B1, b2=B2)
  rules = partitioning.logical_axis_rules()
  _, shardings, init = trainer.abstract_state(model, tx, mesh, rules)
  batch_sharding = partitioning.logical_to_sharding(
      ("activation_batch", "activation_length"), mesh, rules)
  init = jax.jit(init, out_shardings=shardings)
  step = jax.jit(trainer.make_train_step(model, tx, schedule, seed=0),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, partitioning.replicated(mesh)))

  def on_mesh(fn, *args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return fn(*args)
  return lambda: on_mesh(init, jax.random.key(0)), lambda state: on_mesh(step, state, _batch())


def _adam_update_tolerance(params, nu, t, lr, grad_tol):
  """Bound on |p8 - p1| after step t from one state, if the two gradients differ <= grad_tol.

  Adam moves p by -lr*(u + wd*p), u = m/(s + eps) with the bias-corrected moments
  m = mu/(1 - B1^t), s = sqrt(nu/(1 - B2^t)). A gradient change d moves m by <= c1*d and
  s by <= c2*d, c1 = (1-B1)/(1-B1^t), c2 = sqrt((1-B2)/(1-B2^t)); as |u| <= 1.01 (Cauchy-
  Schwarz: 1 at t = 1, 1.0004 at t = 2), u moves by <= (c1 + 1.01*c2)*d / (s - c2*d + eps).
  Where s is within noise of 0 that exceeds 2.02 >= |u8| + |u1|: Adam's sign-like step on a
  gradient lost in rounding is not set by the arithmetic (one such weight moved 1.1% of lr
  apart on an AVX-512 Xeon), so those weights (~100 of 20,640 here, most with zero gradient)
  get that cap only. Rounding adds an ulp of p and of lr*u.
  """
  c1, c2 = (1 - B1) / (1 - B1**t), np.sqrt((1 - B2) / (1 - B2**t))
  s = np.sqrt(nu / (1 - B2**t))
  moved = (c1 + 1.01 * c2) * grad_tol / (np.maximum(s - c2 * grad_tol, 0) + ADAM_EPS)
  return lr * np.minimum(moved, 2.02) + 2 * np.spacing(np.abs(params)) + 1e-6 * lr


def _adam_moments(state):
  return (optax.tree_utils.tree_get(state.opt_state, "mu"),
          optax.tree_utils.tree_get(state.opt_state, "nu"))


def test_train_step_on_8_device_mesh_matches_one_device():
  init_one, step_one = _train_setup(partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  init_eight, step_eight = _train_setup(partitioning.make_mesh(2, 2, 2))
  placed = init_eight()
  kernel = placed.params["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Initialisation is elementwise, no reductions: at most an ulp apart where vector and scalar
  # code split the shards differently (measured: bit-identical).
  state = jax.device_get(init_one())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(placed), state)

  # Both meshes take each step from the same state, so they differ by that step's reduction
  # order only; chained, Adam's steps on near-zero gradients would let the runs drift apart.
  for t in (1, 2):
    (one, one_metrics), (eight, eight_metrics) = [
        jax.device_get(step(state)) for step in (step_one, step_eight)]
    assert int(one.step) == int(eight.step) == t
    np.testing.assert_allclose(eight_metrics["loss"], one_metrics["loss"], rtol=GRAD_RTOL)
    np.testing.assert_allclose(eight_metrics["grad_norm"], one_metrics["grad_norm"],
                               rtol=GRAD_RTOL)
    # The clipped gradient each run fed Adam, read back from the first moment.
    mu_before, _ = _adam_moments(state)
    (mu_one, nu_one), (mu_eight, _) = _adam_moments(one), _adam_moments(eight)
    grad = lambda mu: jax.tree.map(lambda m, m0: (m - B1 * m0) / (1 - B1), mu, mu_before)
    grad_tol = jax.tree.map(lambda g: GRAD_RTOL * np.abs(g).max(), grad(mu_one))
    jax.tree.map(lambda a, b, tol: np.testing.assert_allclose(a, b, rtol=0, atol=tol),
                 grad(mu_eight), grad(mu_one), grad_tol)
    # Parameters, to what that gradient difference allows through Adam (median 1e-4 of lr).
    lr = float(one_metrics["learning_rate"])
    tol = jax.tree.map(lambda p, v, d: _adam_update_tolerance(p, v, t, lr, d), one.params,
                       nu_one, grad_tol)
    jax.tree.map(lambda a, b, tol: np.testing.assert_array_less(np.abs(a - b), tol),
                 eight.params, one.params, tol)
    state = one
  assert one_metrics["grad_norm"] > 0


def test_loss_ignores_unweighted_tokens():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
  targets = jnp.array([[1, 2, 3], [0, 4, 4]])
  weights = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  loss, _ = trainer.next_token_loss(logits, targets, weights)
  per_token = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(3)[None], targets]
  expected = (per_token[0, 0] + per_token[0, 2] + per_token[1, 2]) / 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["num_steps", "batch_size", "inputs_length", "targets_length",
                                  "checkpoint_every", "keep_checkpoints", "log_every"])
def test_counts_below_one_are_refused_before_any_work(tmp_path, name):
  args = {"num_steps": 10, name: 0}
  with pytest.raises(UserError, match=f"train.{name}=0 must be a positive integer"):
    trainer.train(str(tmp_path), "no_such_task", **args)
  assert not os.listdir(tmp_path)


def test_batch_that_does_not_split_over_the_mesh_is_refused(tmp_path):
  """The default mesh puts all 8 test devices on `data`: 12 rows cannot split over it."""
  with pytest.raises(UserError, match="batch_size=12 must be a multiple of the 8 devices"):
    trainer.train(str(tmp_path), "no_such_task", num_steps=10, batch_size=12)
  assert not os.listdir(tmp_path)


def _train_cmd(workdir, steps):
  return [sys.executable, "-m", "ttc.main", "--gin_file=configs/arith/quickstart.gin",
          f"--gin.WORKDIR='{workdir}'", "--gin.run.stages=[@train]",
          f"--gin.train.num_steps={steps}", "--gin.train.checkpoint_every=5",
          "--gin.train.batch_size=4", "--gin.train.log_every=5",
          "--gin.register_arith_task.num_train_per_level=50",
          "--gin.ModelConfig.embed_dim=32", "--gin.ModelConfig.mlp_dim=64",
          "--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.head_dim=8",
          "--gin.ModelConfig.dropout_rate=0.1"]


def _final_params(workdir):
  model = Transformer(ModelConfig(**__import__("json").load(
      open(os.path.join(workdir, "model_config.json")))))
  mesh = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  abstract, _ = partitioning.abstract_params(model, mesh, partitioning.logical_axis_rules())
  params, step = checkpointing.restore_params(os.path.join(workdir, "checkpoints"), abstract)
  return jax.device_get(params), step


def test_kill_9_then_rerun_resumes_to_identical_parameters(tmp_path):
  # 60 steps, a checkpoint every 5: each save takes a good part of a second, so the kill
  # lands within a few steps of the first one, long before the last.
  steps = 60
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI runs on one device
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  # The uninterrupted run, meanwhile on the other core.
  reference = subprocess.Popen(_train_cmd(straight, steps), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

  proc = subprocess.Popen(_train_cmd(resumed, steps), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = resumed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
    if any(5 <= s < steps for s in done):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "training finished before it could be killed; raise `steps`"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert killed_at < steps

  subprocess.run(_train_cmd(resumed, steps), cwd=REPO, env=env, check=True,
                 capture_output=True)
  _, stderr = reference.communicate(timeout=300)
  assert reference.returncode == 0, stderr[-2000:]
  (a, step_a), (b, step_b) = _final_params(straight), _final_params(resumed)
  assert step_a == step_b == steps
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit-identical
  logged = [__import__("json").loads(l)["step"] for l in open(resumed / "metrics.jsonl")]
  assert logged == sorted(set(logged)) and logged[-1] == steps  # no duplicated metric lines


def test_held_out_loss_counts_every_target_token_once():
  """One pass over the split, in fixed-shape batches: the last is filled up with empty rows
  that carry no weight, and the summed loss is next_token_loss's mean times its weight."""
  from ttc.data import arith_task, vocab
  task = arith_task.register_arith_task("test_trainer_held_out", num_train_per_level=2,
                                        num_eval_per_level=7, levels=[(1, 9)])
  # 7 examples of ~25 tokens, packed two or more to a row of 64: fewer than 8 rows.
  batches = trainer.held_out_batches(task.name, 8, 16, 48, "validation")
  assert len(batches) == 1 and batches[0]["decoder_input_tokens"].shape == (8, 64)
  targets = sum(len(vocab.CharVocabulary().encode(p.solution)) + 1  # + EOS
                for p in task.problems("validation"))
  assert sum(b["decoder_loss_weights"].sum() for b in batches) == targets
  assert (batches[-1]["decoder_segment_ids"] == 0).all(axis=1).any()  # filled-up rows

  model = Transformer(CONFIG)
  params = partitioning.init_params(model, jax.random.key(0))
  eval_step = jax.jit(trainer.make_eval_step(model))
  for batch in batches:
    loss_sum, weight = eval_step(params, batch)
    logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                            segment_ids_BxT=batch["decoder_segment_ids"])
    mean, _ = trainer.next_token_loss(logits, batch["decoder_target_tokens"],
                                      batch["decoder_loss_weights"].astype(np.float32))
    assert np.isfinite(loss_sum) and weight == batch["decoder_loss_weights"].sum()
    np.testing.assert_allclose(loss_sum, mean * weight, rtol=1e-5)


def test_fine_tuning_refuses_another_model_config_before_any_work(tmp_path):
  import dataclasses
  from ttc import workdir as workdir_lib
  policy, out = tmp_path / "policy", tmp_path / "out"
  workdir_lib.save_model_config(str(policy), dataclasses.replace(CONFIG, embed_dim=64))
  with pytest.raises(UserError, match=r"another model config than train's.*dropout_rate"):
    trainer.fit(str(out), "arith_sft", num_steps=2, batch_size=8, inputs_length=8,
                targets_length=8, model_config=CONFIG, init_from=str(policy))
  assert not out.exists()
  # Dropout may differ: a fine-tune sets its own.
  workdir_lib.save_model_config(str(policy), dataclasses.replace(CONFIG, dropout_rate=0.0))
  trainer._check_init_config(str(policy), CONFIG, "train")
