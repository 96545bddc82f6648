"""Device mesh and the one table mapping logical axis names onto it.

Layers name their axes logically ("embed", "activation_batch", "cache_sequence"...).
The rules below, bound in gin as `logical_axis_rules.rules`, decide which mesh axis
(`data`, `fsdp`, `tensor`) each name is split over. A name without a rule, or
mapped to None, is replicated.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ttc.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes). Parameters are split over `fsdp` along embed
# and over `tensor` along heads/mlp/vocab (Megatron style); activations are split
# over the batch on `data` x `fsdp` and along heads/mlp/vocab on `tensor`.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_layers", None),
    ("cache_batch", ("data", "fsdp")),
    ("cache_sequence", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)


@gin.configurable
def logical_axis_rules(rules: Sequence[Sequence[Any]] = DEFAULT_RULES):
  """The rules table; override in gin, e.g. `logical_axis_rules.rules = [...]`."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices.

  Raises UserError (one line naming the fix) for sizes that cannot lay out the devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  named = dict(zip(MESH_AXES, (data, fsdp, tensor)))
  for axis, size in named.items():
    integer = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    if not integer or size == 0 or size < -1:
      raise UserError(f"make_mesh.{axis}={size!r} must be a positive integer or -1 (the "
                      f"remaining devices); set e.g. --gin.make_mesh.{axis}=1")
  sizes = list(named.values())
  shape = ", ".join(f"{axis}={size}" for axis, size in named.items())
  fix = f"set --gin.make_mesh.data/fsdp/tensor to multiply to {len(devices)} (one may be -1)"
  if sizes.count(-1) > 1:
    raise UserError(f"make_mesh: {shape} has more than one -1; {fix}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"make_mesh: {shape} needs a multiple of {known} devices, found "
                      f"{len(devices)}; {fix}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"make_mesh: {shape} needs {math.prod(sizes)} devices, found "
                    f"{len(devices)}; {fix}")
  return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def shards_along(logical_axis: str, mesh: Mesh, rules) -> int:
  """Into how many pieces the rules split an array axis named `logical_axis` on `mesh`."""
  axes = nn.logical_to_mesh_axes((logical_axis,), rules)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[axis] for axis in axes)


def logical_to_sharding(logical_axes_tree, mesh: Mesh, rules) -> Any:
  """Pytree of logical axis tuples (or PartitionSpecs) -> pytree of NamedSharding."""
  def one(axes):
    spec = nn.logical_to_mesh_axes(tuple(axes), rules)
    return NamedSharding(mesh, spec if spec is not None else PartitionSpec())
  is_leaf = lambda x: isinstance(x, (tuple, PartitionSpec)) and all(
      a is None or isinstance(a, str) for a in x)
  return jax.tree_util.tree_map(one, logical_axes_tree, is_leaf=is_leaf)


def boxed_shardings(boxed_tree, mesh: Mesh, rules) -> Any:
  """Shardings for a pytree of `nn.Partitioned` boxes (e.g. `eval_shape` of init)."""
  return logical_to_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def init_params(model: nn.Module, key: jax.Array):
  """Freshly initialised, unboxed parameters (call under jit with out_shardings)."""
  tokens = jax.numpy.zeros((1, 1), jax.numpy.int32)
  return nn.unbox(model.init(key, tokens, tokens))


def abstract_params(model: nn.Module, mesh: Mesh, rules):
  """(ShapeDtypeStructs carrying shardings, NamedShardings) of the model's parameters."""
  tokens = jax.numpy.zeros((1, 1), jax.numpy.int32)
  boxed = jax.eval_shape(lambda k: model.init(k, tokens, tokens), jax.random.key(0))
  shardings = boxed_shardings(boxed, mesh, rules)
  # Read the boxes' values directly: nn.unbox would also apply sharding constraints.
  shapes = jax.tree.map(lambda b: b.value if isinstance(b, nn.Partitioned) else b, boxed,
                        is_leaf=lambda b: isinstance(b, nn.Partitioned))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings
