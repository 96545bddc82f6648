"""A policy work dir (model_config.json + orbax checkpoint) with random weights, in seconds."""

import dataclasses
import json

import jax
import pytest

from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import checkpointing, partitioning
from ttc.train import optimizer, trainer

POLICY_CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, mlp_dim=64)


def write_policy_workdir(path, config: ModelConfig = POLICY_CONFIG, seed: int = 0):
  """What `train` leaves behind, minus the training: config and one checkpoint."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "model_config.json").write_text(json.dumps(dataclasses.asdict(config)))
  model = Transformer(config)
  tx, _ = optimizer.make_optimizer(10)
  mesh = partitioning.make_mesh()
  _, shardings, init = trainer.abstract_state(model, tx, mesh, partitioning.logical_axis_rules())
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
  mngr = checkpointing.manager(str(path / "checkpoints"), keep=1)
  checkpointing.save(mngr, 1, state, 0)
  mngr.close()
  return path


@pytest.fixture
def policy_workdir(tmp_path):
  return write_policy_workdir(tmp_path / "work")
