"""Weight-only int8 quantization of a float checkpoint, for faster decoding.

A decode step with few rows per prompt is bound by reading the weights, not by
arithmetic: SmolLM2-135M in float32 is 0.54 GB per token. Stored as int8 with one
float32 scale per output channel (symmetric, absmax / 127), the weights are a
quarter of that; `Dense` and `Embed` convert them back where they are used.
Activations, the KV cache and all arithmetic stay in the activation dtype. Whether
that pays depends on the backend's kernels: on XLA:CPU the fused int8 matrix-vector
product is slower than float32's (see `python -m ttc.bench.sampling`).

Error: each weight moves by at most scale / 2 = absmax / 254 of its channel; the
logit error this gives on SmolLM2 is measured in tests/models/test_quantization.py.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp

from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning


def quantize_int8(w, reduce_axes: tuple[int, ...]):
  """(int8 weights, float32 scales): w ~= q * scale, scale over the non-reduced axes.

  reduce_axes: the axes sharing one scale (a kernel's input axes; an embedding's
  embed axis). An all-zero channel gets scale 1 so dequantization stays finite.
  """
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=reduce_axes)
  scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
  q = jnp.round(w32 / jnp.expand_dims(scale, reduce_axes))
  return jnp.clip(q, -127, 127).astype(jnp.int8), scale


def _is_int8(targets: dict, module_path: tuple[str, ...]) -> bool:
  return any(targets.get(module_path + (name,), jnp.zeros(())).dtype == jnp.int8
             for name in ("kernel", "embedding"))


def quantize_params(config: ModelConfig, params, mesh=None, rules=None) -> tuple[ModelConfig, Any]:
  """(int8 config, int8 params) from float params of `Transformer(config)`.

  Runs as one jitted program whose outputs land in the int8 model's shardings
  (`mesh`/`rules` as for the loaders; default one device).
  """
  if config.quantization != "none":
    raise ValueError(f"parameters are already quantized ({config.quantization})")
  qconfig = dataclasses.replace(config, quantization="int8")
  mesh = partitioning.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
  rules = partitioning.DEFAULT_RULES if rules is None else rules
  abstract, shardings = partitioning.abstract_params(Transformer(qconfig), mesh, rules)

  targets = flax.traverse_util.flatten_dict(abstract)

  def convert(float_params):
    flat = flax.traverse_util.flatten_dict(float_params)
    out = {}
    for path, target in targets.items():
      if path[-1] == "scale" and _is_int8(targets, path[:-1]):
        continue  # written with its int8 sibling
      if target.dtype != jnp.int8:
        out[path] = flat[path].astype(target.dtype)
        continue
      w = flat[path]
      scale_path = path[:-1] + ("scale",)
      if path[-1] == "embedding":  # one scale per vocabulary row
        reduce_axes = (1,)
        out[path], out[scale_path] = quantize_int8(w, reduce_axes)
      else:  # [*in, *out] -> output-major [*out, *in] with one scale per output feature
        num_in = w.ndim - len(targets[scale_path].shape)
        w = jnp.moveaxis(w, tuple(range(num_in)), tuple(range(w.ndim - num_in, w.ndim)))
        out[path], out[scale_path] = quantize_int8(w, tuple(range(w.ndim - num_in, w.ndim)))
    return flax.traverse_util.unflatten_dict(out)

  return qconfig, jax.jit(convert, out_shardings=shardings)(params)
