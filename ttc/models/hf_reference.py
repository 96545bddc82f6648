"""transformers reference models from ttc configs and weights, for parity tests and benchmarks.

torch and transformers are test-only dependencies, so they are imported inside the
functions; nothing on ttc's own path imports this module.
"""

import numpy as np

from ttc.models.config import ModelConfig


def llama_config(config: ModelConfig, **overrides):
  """A transformers `LlamaConfig` of the same shape as a Llama-family `ModelConfig`."""
  import transformers
  if config.qkv_bias:
    raise ValueError("LlamaConfig has no q/k/v-only bias; build a Qwen2 reference instead")
  kwargs = dict(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps,
      tie_word_embeddings=config.tied_embeddings, max_position_embeddings=2048)
  kwargs.update(overrides)
  return transformers.LlamaConfig(**kwargs)


def from_gguf(path: str):
  """(ttc config, `LlamaForCausalLM` in eval mode) holding a GGUF file's dequantised weights."""
  import torch
  import transformers
  from ttc.models import gguf_loader
  config = gguf_loader.config_from_gguf(gguf_loader.open_gguf(path))
  model = transformers.LlamaForCausalLM(llama_config(config)).eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in gguf_loader.hf_state_dict(path).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  if unexpected or not set(missing) <= {"lm_head.weight"}:
    raise ValueError(f"GGUF tensors do not match LlamaForCausalLM: missing {missing}, "
                     f"unexpected {unexpected}")
  model.tie_weights()
  return config, model
