"""Shared measuring helpers for the benchmark commands."""

import os
import time

import jax
import jax.numpy as jnp

from ttc.kernels import packed_matmul

# The checkout holding configs/, so benchmarks find gin files from any working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def call_timer(fn, *args):
  """A callable returning the wall seconds of one fn(*args), made after one warm-up
  call (compilation excluded)."""
  jax.block_until_ready(fn(*args))

  def seconds():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start
  return seconds


def median_seconds(timer, repeats: int) -> float:
  return sorted(timer() for _ in range(repeats))[repeats // 2]


def time_call(fn, *args, repeats: int = 5) -> float:
  """Median wall seconds of fn(*args) after one warm-up call (compilation excluded)."""
  return median_seconds(call_timer(fn, *args), repeats)


def matmul_peak_flops(sizes=(512, 1024, 2048), dtype=jnp.float32, repeats: int = 5) -> float:
  """Best FLOP/s of a square matmul on the default device: the same-run ceiling.

  Both XLA's matmul and, where they run, ttc's packed-weight CPU kernels of the
  same dtype (`ttc.kernels.packed_matmul`, weights packed before timing) are timed:
  the peak is the fastest, so a model using a kernel is not measured against a lower
  bar. The best of `repeats` timed calls counts (a peak, not a typical speed).
  """
  products = {"xla": lambda x, w: x @ w}
  if packed_matmul.usable(dtype, dtype):
    for name, fmt in packed_matmul.FORMATS.items():
      if fmt.dtype == dtype and packed_matmul.runs_here(name):
        products[name] = lambda x, w: packed_matmul.matmul(x, w, x.shape[0])
  best = 0.0
  for n in sizes:
    a = jnp.ones((n, n), dtype)
    for name, product in products.items():
      w = a if name == "xla" else packed_matmul.pack(a, format_name=name)
      fn, args = jax.jit(product), (a, w)
      jax.block_until_ready(fn(*args))
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
  return best
