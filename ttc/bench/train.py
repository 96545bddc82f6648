"""Training throughput: tokens/s and the fraction of the same run's matmul peak.

    python -m ttc.bench.train [--gin_file=configs/arith/policy_tiny.gin] [--batch=32]
        [--length=176] [--steps=10]

FLOPs per token follow `ModelConfig.flops_per_token` (6 x matmul parameters plus
attention, causal: a query sees on average half the row).
"""

import argparse

import flax.linen as nn
import gin
import jax
import numpy as np

from ttc.bench.common import REPO_ROOT, matmul_peak_flops, time_call
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning
from ttc.train import optimizer, trainer


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", default="configs/arith/policy_tiny.gin")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=176)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  gin.add_config_file_search_path(REPO_ROOT)
  gin.parse_config_file(args.gin_file)
  config = ModelConfig()

  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  model = Transformer(config)
  tx, schedule = optimizer.make_optimizer(1000)
  _, shardings, init = trainer.abstract_state(model, tx, mesh, rules)
  rng = np.random.default_rng(0)
  b, l = args.batch, args.length
  batch = {"decoder_input_tokens": rng.integers(3, config.vocab_size, (b, l)),
           "decoder_target_tokens": rng.integers(3, config.vocab_size, (b, l)),
           "decoder_loss_weights": np.ones((b, l), np.float32),
           "decoder_positions": np.broadcast_to(np.arange(l), (b, l)).copy(),
           "decoder_segment_ids": np.ones((b, l), np.int32)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(trainer.make_train_step(model, tx, schedule, seed=0))
    seconds = time_call(lambda s: step(s, batch), state, repeats=args.steps)
  peak = matmul_peak_flops()
  tokens_per_s = b * l / seconds
  flops = config.flops_per_token(context_len=(l + 1) / 2, training=True) * tokens_per_s
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"model: {config.num_matmul_params():,} matmul params, batch {b} x {l} tokens")
  print(f"train step: {seconds * 1e3:.1f} ms, {tokens_per_s:,.0f} tokens/s")
  print(f"model FLOP/s: {flops / 1e9:.1f} G; matmul peak (same run): {peak / 1e9:.1f} G")
  print(f"fraction of matmul peak: {flops / peak:.3f}")


if __name__ == "__main__":
  main()
