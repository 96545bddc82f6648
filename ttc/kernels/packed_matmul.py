"""x @ w on CPU with the weights packed once into column panels (XLA FFI kernels).

XLA:CPU's matmul library repacks its weight operand into panels on every call. In
a decode step that multiplies a few dozen rows by every weight of the model, the
repacking was 23% of the CPU time (SmolLM2-135M, 64 rows). Decoding therefore packs
each weight once per sampling call (`pack`) and multiplies with `matmul`, which
streams the panels in order.

Three panel formats, each with its kernel (`FORMATS`):
- "packed": float32 panels of 16 columns, a 6 x 16 register tile written for AVX2
  (portable vector code; any CPU the library compiles for runs it). On a 2-core
  AMD EPYC with AVX2, a 30-layer 576 -> 1536 -> 576 MLP chain ran 1.3-1.5x XLA's
  matmul at 64 rows, 2.8x at 7 rows.
- "packed_avx512": float32 panels of 32 columns, a 12 x 32 tile in AVX-512's 32
  registers. Same sums as "packed" in a different order.
- "packed_avx512_bf16": bfloat16 panels of 32 columns, for CPUs with avx512_bf16:
  x and w are rounded to bfloat16 and each instruction sums two products into
  float32. It changes the numbers (relative error ~2^-9 per operand; see
  tests/kernels/test_packed_matmul.py for the stated tolerance), so it is only
  used when asked for (`--gin.decode_matmul.choice`).
Which float32 format (or XLA's dot) a decode step uses is measured per CPU:
`ttc.kernels.matmul_choice`. The panels carry their format (dtype and width), so
`matmul` needs no other argument to pick its kernel.

Built by `ttc.kernels.cpu_library`; single-device only.
"""

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp

from ttc.kernels import cpu_library


@dataclasses.dataclass(frozen=True)
class Format:
  """One panel layout and the kernel that multiplies by it."""
  name: str
  columns: int  # output columns per panel
  dtype: jnp.dtype  # of the panels, and of x as the kernel reads it
  cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags the kernel needs
  matmul_target: str
  pack_target: str

  def panels_shape(self, k: int, n: int) -> tuple[int, ...]:
    """[J, K, C] float32 panels; [J, ceil(K / 2), C, 2] bfloat16 pair panels."""
    j = -(-n // self.columns)
    if self.dtype == jnp.bfloat16:
      return (j, -(-k // 2), self.columns, 2)
    return (j, k, self.columns)


PACKED = Format("packed", 16, jnp.float32, (), cpu_library.PACKED_MATMUL,
                cpu_library.PACK_PANELS)
PACKED_AVX512 = Format("packed_avx512", 32, jnp.float32, ("avx512f",),
                       cpu_library.PACKED_MATMUL_AVX512, cpu_library.PACK_PANELS)
PACKED_AVX512_BF16 = Format("packed_avx512_bf16", 32, jnp.bfloat16, ("avx512f", "avx512_bf16"),
                            cpu_library.PACKED_MATMUL_BF16, cpu_library.PACK_PANELS_BF16)
FORMATS = {f.name: f for f in (PACKED, PACKED_AVX512, PACKED_AVX512_BF16)}
# The formats that keep float32 numbers: the ones a measurement may choose.
FLOAT32_FORMATS = tuple(name for name, f in FORMATS.items() if f.dtype == jnp.float32)

_packing = contextvars.ContextVar("packing_format", default=PACKED)


@contextlib.contextmanager
def packing(format_name: str):
  """Within it, `pack` (and so `Transformer.pack_weights`) writes panels of this format
  unless told another."""
  token = _packing.set(FORMATS[format_name])
  try:
    yield
  finally:
    _packing.reset(token)


def usable(activation_dtype, weight_dtype) -> bool:
  """Whether `matmul` can run here for these dtypes (decided while tracing): both
  float32 and `cpu_library.usable_here()` (checked last: it builds the kernels)."""
  return (jnp.dtype(activation_dtype) == jnp.float32 and jnp.dtype(weight_dtype) == jnp.float32
          and cpu_library.usable_here())


def runs_here(format_name: str) -> bool:
  """Whether this CPU has the instructions of the format's kernel, and the library was
  built with it (the AVX-512 kernels need x86-64 and GCC). Whether the kernels build
  and run on this backend at all is `usable`'s question."""
  fmt = FORMATS[format_name]
  return set(fmt.cpu_flags) <= cpu_library.cpu_flags() and (
      fmt.matmul_target == cpu_library.PACKED_MATMUL or cpu_library.avx512_kernels_built())


def format_of(panels: jax.Array) -> Format:
  """The format panels were packed in, read off their dtype and width."""
  for f in FORMATS.values():
    if panels.dtype == f.dtype and panels.shape[2] == f.columns:
      return f
  raise ValueError(f"not packed panels: {panels.dtype} {panels.shape}")


def matrix_shape(panels: jax.Array) -> tuple[int, int]:
  """(K, N) of the w the panels hold, both padded as packed (K to pairs for bfloat16)."""
  fmt = format_of(panels)
  k = panels.shape[1] * (2 if fmt.dtype == jnp.bfloat16 else 1)
  return k, panels.shape[0] * fmt.columns


def pack(w: jax.Array, transposed: bool = False, format_name: str | None = None) -> jax.Array:
  """Panels of a [K, N] w in `format_name`'s format, else the current one (`packing`;
  "packed" by default). A function jitted around `pack` reads the context while it is
  traced, and jit does not retrace when it changes: name the format there.

  "packed" and "packed_avx512": [J, K, C] float32, panels[j, k, c] = w[k, C j + c].
  "packed_avx512_bf16": [J, ceil(K / 2), 32, 2] bfloat16, panels[j, p, c, i] =
  w[2 p + i, 32 j + c] rounded to nearest even.
  transposed: w is given as its [N, K] transpose (an embedding used as the tied
  output projection), read without materialising w.
  N (and K for pairs) is padded with zeros. A compiled kernel, not XLA's transpose,
  which took twice as long (see packed_matmul_cpu.cc).
  """
  cpu_library.require()
  fmt = FORMATS[format_name] if format_name else _packing.get()
  n, k = w.shape if transposed else w.shape[::-1]
  out = jax.ShapeDtypeStruct(fmt.panels_shape(k, n), fmt.dtype)
  return jax.ffi.ffi_call(fmt.pack_target, out)(w.astype(jnp.float32), transposed=transposed)


def matmul(x_MxK: jax.Array, panels: jax.Array, n: int) -> jax.Array:
  """[M, n] float32 x @ w, for panels = pack(w) of a [K, n] w (any format)."""
  cpu_library.require()
  fmt = format_of(panels)
  m = x_MxK.shape[0]
  x = x_MxK.astype(fmt.dtype)
  if fmt.dtype == jnp.bfloat16 and x.shape[1] % 2:
    x = jnp.pad(x, ((0, 0), (0, 1)))  # the pair panels' zero row past K
  padded = matrix_shape(panels)[1]
  call = jax.ffi.ffi_call(fmt.matmul_target, jax.ShapeDtypeStruct((m, padded), jnp.float32))
  y_MxN = call(x, panels)
  return y_MxN if padded == n else y_MxN[:, :n]
