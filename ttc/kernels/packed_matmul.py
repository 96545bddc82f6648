"""x @ w on CPU with the weights packed once into column panels (XLA FFI kernel).

XLA:CPU's matmul library repacks its weight operand into panels on every call. In
a decode step that multiplies a few dozen rows by every weight of the model, the
repacking was 23% of the CPU time (SmolLM2-135M, 64 rows). Decoding therefore packs
each weight once per sampling call (`pack`) and multiplies with `matmul`, which
streams the panels in order. Measured on the 2-core development CPU, a 30-layer
576 -> 1536 -> 576 MLP chain: 1.3-1.5x XLA's matmul at 64 rows, 2.8x at 7 rows,
0.9-1.1x at 1 row and at 128-2048 rows; a square 2048 matmul 1.16x.

Built by `ttc.kernels.cpu_library`; float32 and single-device only.
"""

import jax
import jax.numpy as jnp

from ttc.kernels import cpu_library

PANEL = 16  # columns per panel (two 8-float AVX vectors)


def usable(activation_dtype, weight_dtype) -> bool:
  """Whether `matmul` can run here for these dtypes (decided while tracing): both
  float32 and `cpu_library.usable_here()` (checked last: it builds the kernels)."""
  return (jnp.dtype(activation_dtype) == jnp.float32 and jnp.dtype(weight_dtype) == jnp.float32
          and cpu_library.usable_here())


def pack(w: jax.Array, transposed: bool = False) -> jax.Array:
  """[J, K, PANEL] float32 panels of a [K, N] w: panels[j, k, c] = w[k, PANEL * j + c].

  transposed: w is given as its [N, K] transpose (an embedding used as the tied
  output projection), read without materialising w.
  N is padded with zero columns to J * PANEL. A compiled kernel, not XLA's
  transpose, which took twice as long (see packed_matmul_cpu.cc).
  """
  cpu_library.require()
  n, k = w.shape if transposed else w.shape[::-1]
  out = jax.ShapeDtypeStruct((-(-n // PANEL), k, PANEL), jnp.float32)
  return jax.ffi.ffi_call(cpu_library.PACK_PANELS, out)(w.astype(jnp.float32),
                                                        transposed=transposed)


def matmul(x_MxK: jax.Array, panels_JxKxC: jax.Array, n: int) -> jax.Array:
  """[M, n] float32 x @ w, for panels = pack(w) of a [K, n] w."""
  cpu_library.require()
  m = x_MxK.shape[0]
  padded = panels_JxKxC.shape[0] * PANEL
  call = jax.ffi.ffi_call(cpu_library.PACKED_MATMUL,
                          jax.ShapeDtypeStruct((m, padded), jnp.float32))
  y_MxN = call(x_MxK.astype(jnp.float32), panels_JxKxC)
  return y_MxN if padded == n else y_MxN[:, :n]
