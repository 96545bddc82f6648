"""RMSNorm of a decode step's rows as one compiled CPU kernel (XLA FFI).

XLA:CPU splits the model's RMSNorm into three thunks (a sum of squares, the rsqrt,
the scaling multiply), and at a decode step's few dozen rows each costs more in
dispatch than in arithmetic. Profiled on SmolLM2 at 64 rows (2-core AMD EPYC), the
61 norms of a step took 6.6 ms of 168 as XLA's thunks, 1.0 ms of 131 as this kernel,
and the bench's share of the step outside the weight matmuls fell from 18% to 15%.
`rms_norm_cpu.cc` normalises each row in one pass while it is in cache.

It has no gradient: the model uses it only where nothing is differentiated (with a
KV cache). Built and registered by `ttc.kernels.cpu_library`; under a mesh of
several devices, off CPU or without a compiler, the model's jnp RMSNorm runs.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ttc.kernels import cpu_library


def usable(x: jax.Array, scale: jax.Array) -> bool:
  """Whether `normalize` can run these operands here (decided while tracing): float32
  x and scale, and `cpu_library.usable_here()` (checked last: it builds the kernels)."""
  return x.dtype == jnp.float32 and scale.dtype == jnp.float32 and cpu_library.usable_here()


def normalize(x: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """float32 (x * rsqrt(mean(x^2, axis=-1) + eps)) * scale, per row of x [..., D].

  The same arithmetic as the model's float32 RMSNorm except the order of the sum of
  squares (vectorised), so results agree to float32 rounding, not bit for bit.
  """
  cpu_library.require()
  x_2d = x.reshape(-1, x.shape[-1])
  call = jax.ffi.ffi_call(cpu_library.RMS_NORM, jax.ShapeDtypeStruct(x_2d.shape, jnp.float32))
  return call(x_2d, scale_D, eps=np.float32(eps)).reshape(x.shape)
