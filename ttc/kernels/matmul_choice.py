"""Which matmul a CPU decode step uses, packed panels or XLA's dot: measured, not assumed.

The first packed kernel (`packed_matmul`'s "packed") was written and tuned on an AMD
EPYC with AVX2, where it ran a 64-row decode step's weight matmuls 1.3-1.5x faster
than XLA's dot. On an Intel Xeon with AVX-512 the same kernel was 0.73x XLA's dot,
whose library uses the wider registers. So the first time a model shape is decoded
at a row count on a CPU, XLA's dot and every float32 packed format whose kernel this
CPU can run ("packed", and "packed_avx512" where it has AVX-512) are timed on that
model's weight shapes, and the fastest is kept.

The choice is cached on disk (`matmul_choice.json` beside the compiled kernels),
keyed by the kernel build (`cpu_library.library_key`: sources, flags, jax version,
CPU model and flags), the rows (rounded up to a power of two) and the shapes. Later
processes reuse it, and processes sharing the cache measure one at a time under a
file lock, so they all decide the same: a run resumed after a kill decodes with the
matmul its first half used.

`--gin.decode_matmul.choice='xla'` (or a format name) skips the measurement. The
bfloat16 format is used only when named so: it rounds x and w to bfloat16.
"""

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc.kernels import cpu_library, packed_matmul

CHOICES = ("measure", "xla", *packed_matmul.FORMATS)
_FILE = "matmul_choice.json"
_chosen: dict[str, dict] = {}  # this process's answers, by key


@gin.configurable
def decode_matmul(choice: str = "measure") -> str:
  """Gin switch: "measure" (default) times the float32 choices here; "xla" or a
  `packed_matmul.FORMATS` name forces one."""
  if choice not in CHOICES:
    raise ValueError(f"decode_matmul.choice must be one of {CHOICES}, got {choice!r}")
  return choice


def fastest(timers: Mapping[str, Callable[[], float]], runs_here: Callable[[str], bool],
            rounds: int = 5) -> tuple[str, dict[str, float]]:
  """(the name whose best time is least, {name: best seconds}) over the names that run here.

  A name that cannot run here is never timed (its timer may not even be callable on
  this CPU). Timers take turns, round by round, so a slow spell of a shared machine
  falls on each alike; the best of `rounds` counts.
  """
  names = [name for name in timers if runs_here(name)]
  if not names:
    raise ValueError(f"none of {sorted(timers)} runs here")
  best = {name: math.inf for name in names}
  for _ in range(rounds):
    for name in names:
      best[name] = min(best[name], timers[name]())
  return min(names, key=best.__getitem__), best


def _runs_here(name: str) -> bool:
  return name == "xla" or (packed_matmul.usable(jnp.float32, jnp.float32)
                           and packed_matmul.runs_here(name))


def one_after_another(products, total):
  """`total` plus a vanishing part of each product's [0, 0] entry, product by product.

  products: callables of the running total, each returning a [rows, n] matmul result.
  Each one's input waits for the one before, as in a decode step: independent matmuls
  would run side by side on XLA's thread pool, which a decode step never does and which
  favours whichever matmul gains more from it (at one row of SmolLM2, weight matmuls
  timed side by side read 38.8 tokens/s against 29.6 in turn, on 2 AMD EPYC cores). The
  dependence also keeps XLA from hoisting or skipping any of them.
  """
  for product in products:
    total = total + product(total)[0, 0] * 1e-30
  return total


def _step_timer(config, rows: int, name: str) -> Callable[[], float]:
  """Seconds of one decode step's weight matmuls at `rows` rows, with `name`'s matmul.

  One layer's weights and the output projection are timed as two compiled programs; a
  step is num_layers layers and one projection. Packed, a layer's weights are four
  (q|k|v and gate|up fused, as `Transformer` packs them); for XLA's dot, seven.
  Weights are random (the speed does not depend on their values) and, for a packed
  format, packed before timing, as decoding packs them once per call.
  """
  packed = name != "xla"
  draw = np.random.default_rng(0)
  timed = []
  for shapes, repeat in ((config.layer_matmul_shapes(fused=packed), config.num_layers),
                         ((config.output_matmul_shape,), 1)):
    weights = [jax.device_put(draw.standard_normal(shape, np.float32)) for shape in shapes]
    inputs = {k: jax.device_put(draw.standard_normal((rows, k), np.float32))
              for k in {k for k, _ in shapes}}
    if packed:
      pack = jax.jit(packed_matmul.pack, static_argnames=("transposed", "format_name"))
      weights = [pack(w, format_name=name) for w in weights]
      product = lambda x, w, n: packed_matmul.matmul(x, w, n)
    else:
      product = lambda x, w, n: jnp.dot(x, w)

    def step(weights, inputs, shapes=shapes, product=product):
      return one_after_another(
          [lambda t, w=w, k=k, n=n: product(inputs[k] + t, w, n)
           for w, (k, n) in zip(weights, shapes)], jnp.float32(0))

    program = jax.jit(step).lower(weights, inputs).compile()
    jax.block_until_ready(program(weights, inputs))  # warm: first-touch of the outputs
    timed.append((program, weights, inputs, repeat))

  def seconds() -> float:
    total = 0.0
    for program, weights, inputs, repeat in timed:
      started = time.perf_counter()
      jax.block_until_ready(program(weights, inputs))
      total += (time.perf_counter() - started) * repeat
    return total
  return seconds


def _bucket(rows: int) -> int:
  """Rows rounded up to a power of two: one measurement serves a range of row counts."""
  return 1 << max(0, rows - 1).bit_length()


# Names how a step is timed: choices measured another way are measured again.
_METHOD = "chained, fused when packed, formats " + ",".join(packed_matmul.FLOAT32_FORMATS)


def _key(config, bucket: int) -> str:
  return (f"{cpu_library.library_key()} {_METHOD} rows={bucket} layers={config.num_layers}x"
          f"{list(config.layer_matmul_shapes())} output={list(config.output_matmul_shape)}")


def _read(path) -> dict:
  try:
    with open(path) as f:
      table = json.load(f)
    return table if isinstance(table, dict) else {}
  except (OSError, ValueError):
    return {}  # none yet, or damaged: measured again


@contextlib.contextmanager
def _locked(directory):
  with open(directory / (_FILE + ".lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def measured(config, rows: int) -> dict:
  """{"choice": "xla" | a format, "seconds": {name: best seconds of a step}} for decoding
  `rows` rows of a `config` model here, measured on first use (see the module doc)."""
  bucket = _bucket(rows)
  key = _key(config, bucket)
  if key in _chosen:
    return _chosen[key]
  directory = cpu_library.cache_dir()
  path = directory / _FILE
  with _locked(directory):
    table = _read(path)
    if key not in table:
      # Concrete arrays and compiled programs, also when called while a decode
      # program is being traced.
      with jax.ensure_compile_time_eval():
        timers = {name: functools.partial(_step_timer, config, bucket, name)
                  for name in ("xla", *packed_matmul.FLOAT32_FORMATS)}
        choice, seconds = fastest({name: _lazy(make) for name, make in timers.items()},
                                  _runs_here)
      table[key] = {"choice": choice, "seconds": seconds}
      logging.info("decode matmul at %d rows: %s (best step seconds %s)", bucket, choice,
                   seconds)
      partial = path.with_name(f"{_FILE}.{os.getpid()}.partial")
      partial.write_text(json.dumps(table, indent=1, sort_keys=True))
      os.replace(partial, path)
  _chosen[key] = table[key]
  return table[key]


def _lazy(make_timer: Callable[[], Callable[[], float]]) -> Callable[[], float]:
  """A timer built (compiled, weights packed) on its first call: a name that does not
  run here is never built."""
  timer = []

  def seconds() -> float:
    if not timer:
      timer.append(make_timer())
    return timer[0]()
  return seconds


def decode_format(config, rows: int) -> str | None:
  """The `packed_matmul` format decoding `rows` rows of a `config` model packs its weights
  in here, or None for XLA's dot: the gin choice, else the measured one.

  None where no packed kernel runs (another backend, a mesh, no compiler). A format
  named in gin whose instructions this CPU lacks is an error, not a silent fallback.
  """
  choice = decode_matmul()
  if choice == "measure":
    if not _runs_here(packed_matmul.PACKED.name):
      return None
    chosen = measured(config, rows)["choice"]
    return None if chosen == "xla" else chosen
  if choice == "xla" or not packed_matmul.usable(jnp.float32, jnp.float32):
    return None
  if not packed_matmul.runs_here(choice):
    raise ValueError(f"decode_matmul.choice={choice!r} cannot run here: it needs the CPU "
                     f"flags {packed_matmul.FORMATS[choice].cpu_flags} and kernels built "
                     "for them (x86-64, GCC)")
  return choice
