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

from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.train import checkpointing, optimizer, partitioning, trainer

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


def _one_step(mesh):
  model = Transformer(CONFIG)
  tx, schedule = optimizer.make_optimizer(10, learning_rate=1e-2, warmup_steps=0)
  rules = partitioning.logical_axis_rules()
  _, shardings, init = trainer.abstract_state(model, tx, mesh, rules)
  batch_sharding = partitioning.logical_to_sharding(
      ("activation_batch", "activation_length"), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(trainer.make_train_step(model, tx, schedule, seed=0),
                   in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, partitioning.replicated(mesh)))
    state, metrics = step(state, _batch())
    state, metrics = step(state, _batch())
  return jax.device_get(state), jax.device_get(metrics), state


def test_train_step_on_8_device_mesh_matches_one_device():
  one, one_metrics, _ = _one_step(partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight, eight_metrics, placed = _one_step(partitioning.make_mesh(2, 2, 2))
  kernel = placed.params["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Loss and gradient agree to float32 reduction-order noise (rtol 1e-5). Parameters get
  # atol 1e-4 = 1% of the learning rate: Adam divides by sqrt(v), which turns that noise in
  # near-zero gradients into update differences of up to a few 1e-5.
  np.testing.assert_allclose(eight_metrics["loss"], one_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(eight_metrics["grad_norm"], one_metrics["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=0),
               eight.params, one.params)
  # The step did something: parameters moved away from their initialisation.
  assert one_metrics["grad_norm"] > 0


def test_loss_ignores_unweighted_tokens():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
  targets = jnp.array([[1, 2, 3], [0, 4, 4]])
  weights = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  loss, _ = trainer.next_token_loss(logits, targets, weights)
  per_token = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(3)[None], targets]
  expected = (per_token[0, 0] + per_token[0, 2] + per_token[1, 2]) / 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


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
  steps = 300
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # the CLI runs on one device
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  subprocess.run(_train_cmd(straight, steps), cwd=REPO, env=env, check=True,
                 capture_output=True)

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
  (a, step_a), (b, step_b) = _final_params(straight), _final_params(resumed)
  assert step_a == step_b == steps
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit-identical
  logged = [__import__("json").loads(l)["step"] for l in open(resumed / "metrics.jsonl")]
  assert logged == sorted(set(logged)) and logged[-1] == steps  # no duplicated metric lines
