"""Reward models (PRM and ORM): a transformer backbone with a scalar value head.

The same module serves both verifiers of the paper; only the training targets
differ (`ttc.train.reward_training`): a PRM learns the Monte-Carlo soft label at the
last token of every step, an ORM the final correctness at the last token of a
whole solution. The backbone is the policy's `Transformer`, so a reward model is
initialised from a policy checkpoint (or an open checkpoint of the same family),
shards with the same logical axis rules and keeps the same KV caches, which is
what incremental scoring (`ttc.verifiers.scoring`) relies on.
"""

import dataclasses
import os
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
from etils import epath

from ttc import checkpointing, partitioning, workdir as workdir_lib
from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.kv_cache import KVCache, PrefixCache
from ttc.models.transformer import Dense, Transformer

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

  def hidden_states(self, tokens_BxT, positions_BxT, cache: Optional[KVCache] = None,
                    deterministic: bool = True, segment_ids_BxT=None,
                    prefix: Optional[PrefixCache] = None):
    """The backbone's final hidden states [B, T, D] and cache (`Transformer.hidden_states`)."""
    return self.backbone.hidden_states(tokens_BxT, positions_BxT, cache, deterministic,
                                       segment_ids_BxT, prefix)

  def logits(self, x_BxTxD):
    """[B, T] float32 value logits from hidden states: the head in the policy's `logits`
    place, so code that runs either model (`sampling.prefill`) reads one contract."""
    return self.value_head(x_BxTxD)[..., 0].astype(jnp.float32)

  def __call__(self, tokens_BxT, positions_BxT, cache: Optional[KVCache] = None,
               deterministic: bool = True, segment_ids_BxT=None,
               prefix: Optional[PrefixCache] = None):
    x_BxTxD, new_cache = self.hidden_states(tokens_BxT, positions_BxT, cache, deterministic,
                                            segment_ids_BxT, prefix)
    return self.logits(x_BxTxD), new_cache


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


def load(directory: str, mesh, rules):
  """(RewardModel, params placed in their shardings) from a trained reward-model dir.

  `directory` holds model_config.json and the `best/` checkpoint written by
  `ttc.train.reward_training` (the parameters of the best held-out loss).
  """
  path = os.path.join(directory, workdir_lib.MODEL_CONFIG)
  if not epath.Path(path).exists():
    raise UserError(f"{path} not found: train the reward model first (train_prm / train_orm)")
  config = dataclasses.replace(workdir_lib.load_model_config(directory), dropout_rate=0.0)
  model = RewardModel(config)
  abstract, _ = partitioning.abstract_params(model, mesh, rules)
  params, _ = checkpointing.restore_params(os.path.join(directory, "best"), abstract)
  return model, params
