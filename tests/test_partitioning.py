import jax
import pytest

from ttc import partitioning
from ttc.errors import UserError


def test_mesh_fills_minus_one_axis():
  mesh = partitioning.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_mesh_rejects_sizes_that_do_not_multiply_to_device_count():
  with pytest.raises(UserError, match="needs 3 devices, found 8"):
    partitioning.make_mesh(data=3, fsdp=1, tensor=1)
  with pytest.raises(UserError, match="needs a multiple of 3 devices, found 8"):
    partitioning.make_mesh(data=-1, fsdp=1, tensor=3)
  with pytest.raises(UserError, match="more than one -1"):
    partitioning.make_mesh(data=-1, fsdp=-1, tensor=1)


@pytest.mark.parametrize("sizes", [(0, 1, 1), (-1, -2, 1), (-1, 1, 2.0), (-1, True, 1)])
def test_mesh_rejects_sizes_that_are_not_positive_or_minus_one(sizes):
  with pytest.raises(UserError, match="must be a positive integer or -1"):
    partitioning.make_mesh(*sizes)


def test_rules_map_logical_names_to_mesh_axes():
  mesh = partitioning.make_mesh(2, 2, 2)
  rules = partitioning.logical_axis_rules()
  sharding = partitioning.logical_to_sharding(("activation_batch", "activation_length"), mesh,
                                              rules)
  assert sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  sharding = partitioning.logical_to_sharding(("embed", "mlp"), mesh, rules)
  assert sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_rules_can_be_overridden():
  rules = partitioning.logical_axis_rules([("embed", None), ("mlp", ["data", "tensor"])])
  mesh = partitioning.make_mesh(2, 2, 2)
  sharding = partitioning.logical_to_sharding(("embed", "mlp"), mesh, rules)
  assert sharding.spec == jax.sharding.PartitionSpec(None, ("data", "tensor"))


def test_gin_rules_table_matches_the_library_default():
  """configs/partitioning/default.gin spells out DEFAULT_RULES; they must not drift apart."""
  import os

  import gin
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_file(os.path.join(repo, "configs/partitioning/default.gin"))
    try:
      assert partitioning.logical_axis_rules() == partitioning.DEFAULT_RULES
    finally:
      gin.clear_config()
