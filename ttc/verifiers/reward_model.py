"""Reward models (PRM and ORM): a transformer backbone with a scalar value head.

The same module serves both verifiers of the paper; only the training targets
differ (`ttc.verifiers.training`): a PRM learns the Monte-Carlo soft label at the
last token of every step, an ORM the final correctness at the last token of a
whole solution. The backbone is the policy's `Transformer`, so a reward model is
initialised from a policy checkpoint (or an open checkpoint of the same family),
shards with the same logical axis rules and keeps the same KV caches, which is
what incremental scoring (`ttc.verifiers.scoring`) relies on.
"""

import dataclasses
import json
import os
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.kv_cache import KVCache, PrefixCache
from ttc.models.transformer import Dense, Transformer
from ttc.train import checkpointing, partitioning

BACKBONE = "backbone"


class RewardModel(nn.Module):
  """`__call__` returns ([B, T] float32 value logits, cache); score = sigmoid(logit).

  The value after token t is the model's estimate that the solution so far leads
  to a correct answer; it is read at each step's last token (its delimiter, or the
  EOS of the final step). Same arguments as `Transformer.__call__`.
  """

  config: ModelConfig

  def setup(self):
    self.backbone = Transformer(self.config, name=BACKBONE)
    # "value" has no rule in the axis table: the [D, 1] head is split over fsdp only.
    self.value_head = Dense((1,), ("embed", "value"), use_bias=True,
                            dtype=self.config.activation_dtype,
                            param_dtype=self.config.weight_dtype, name="value_head")

  def __call__(self, tokens_BxT, positions_BxT, cache: Optional[KVCache] = None,
               deterministic: bool = True, segment_ids_BxT=None,
               prefix: Optional[PrefixCache] = None):
    x_BxTxD, new_cache = self.backbone.hidden_states(tokens_BxT, positions_BxT, cache,
                                                     deterministic, segment_ids_BxT, prefix)
    return self.value_head(x_BxTxD)[..., 0].astype(jnp.float32), new_cache


def with_backbone(params, policy_params):
  """Reward-model params whose backbone is taken from a policy's params.

  The policy's output projection (`lm_head`, when untied) has no use in a reward
  model, which reads hidden states, so it is left out.
  """
  inner = dict(params["params"])
  policy = policy_params["params"]
  missing = set(inner[BACKBONE]) - set(policy)
  if missing:
    raise ValueError(f"policy params lack {sorted(missing)}: not the reward model's backbone")
  inner[BACKBONE] = {name: policy[name] for name in inner[BACKBONE]}
  return {**params, "params": inner}


def save_config(directory: str, config: ModelConfig):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "model_config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=1)


def load(directory: str, mesh, rules):
  """(RewardModel, params placed in their shardings) from a trained reward-model dir.

  `directory` holds model_config.json and the `best/` checkpoint written by
  `ttc.verifiers.training` (the parameters of the best held-out loss).
  """
  path = os.path.join(directory, "model_config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: train the reward model first (train_prm / train_orm)")
  with open(path) as f:
    config = dataclasses.replace(ModelConfig(**json.load(f)), dropout_rate=0.0)
  model = RewardModel(config)
  abstract, _ = partitioning.abstract_params(model, mesh, rules)
  params, _ = checkpointing.restore_params(os.path.join(directory, "best"), abstract)
  return model, params
