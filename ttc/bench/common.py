"""Shared measuring helpers for the benchmark commands."""

import os
import time

import jax
import jax.numpy as jnp

# The checkout holding configs/, so benchmarks find gin files from any working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_call(fn, *args, repeats: int = 5) -> float:
  """Median wall seconds of fn(*args) after one warm-up call (compilation excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def matmul_peak_flops(sizes=(512, 1024, 2048), dtype=jnp.float32) -> float:
  """Best FLOP/s of a square matmul on the default device: the same-run ceiling."""
  best = 0.0
  for n in sizes:
    a = jnp.ones((n, n), dtype)
    seconds = time_call(jax.jit(lambda x: x @ x), a)
    best = max(best, 2 * n ** 3 / seconds)
  return best
