"""Load a Hugging Face Llama / Qwen2 checkpoint directory into `Transformer` parameters.

A directory holds `config.json` and one `*.safetensors` file, or several listed in
`model.safetensors.index.json`. Tensors are read with the `safetensors` package (numpy,
no torch), reshaped to the kernel layouts of `ttc.models.transformer`, and placed
straight into their mesh shardings: each device receives only its own slice.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open

from ttc.errors import UserError
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_PLAIN_ROPE = (None, "default")


def _rope_theta(hf: dict) -> float:
  """rope_theta, refusing scaled RoPE variants the model does not implement."""
  # transformers >= 5 nests RoPE settings in `rope_parameters`; older files use
  # `rope_theta` and `rope_scaling` at the top level.
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for table in (params, scaling):
    kind = table.get("rope_type", table.get("type"))
    if kind not in _PLAIN_ROPE:
      raise UserError(f"rope scaling type {kind!r} is not supported (only plain Llama RoPE); "
                      "use a checkpoint without rope_scaling")
  return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def config_from_hf(hf: dict, dtype: str = "float32") -> ModelConfig:
  """ModelConfig from a parsed HF `config.json`."""
  arch = hf.get("model_type")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise UserError(f"unknown architecture model_type={arch!r} in config.json; "
                    f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
  if arch == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
    raise UserError("llama checkpoints with attention_bias/mlp_bias are not supported")
  if arch == "qwen2" and hf.get("use_sliding_window"):
    raise UserError("qwen2 with use_sliding_window=true is not supported; "
                    "set use_sliding_window=false in config.json")
  if hf.get("hidden_act", "silu") != "silu":
    raise UserError(f"hidden_act={hf['hidden_act']!r} is not supported (only silu)")
  num_heads = hf["num_attention_heads"]
  return ModelConfig(
      vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
      mlp_dim=hf["intermediate_size"],
      rope_theta=_rope_theta(hf),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      qkv_bias=arch == "qwen2",
      tied_embeddings=bool(hf.get("tie_word_embeddings")),
      dtype=dtype,
      param_dtype=dtype,
  )


def hf_to_ttc_tree(config: ModelConfig, get: Callable[[str], np.ndarray]) -> dict:
  """Nested dict of `() -> np.ndarray` thunks in `Transformer`'s parameter layout.

  get(hf_name): the HF tensor as numpy ([out, in] for linear weights). Thunks defer each
  read so one tensor at a time is held on the host.
  """
  c = config
  h, k, e, d = c.num_heads, c.num_kv_heads, c.head_dim, c.embed_dim

  def linear(name, *out_shape):
    # HF stores [out, in]; our kernels are [in, *out].
    return lambda: get(name).T.reshape(d, *out_shape)

  def layer(i):
    p = f"model.layers.{i}."
    attn = {
        "q_proj": {"kernel": linear(p + "self_attn.q_proj.weight", h, e)},
        "k_proj": {"kernel": linear(p + "self_attn.k_proj.weight", k, e)},
        "v_proj": {"kernel": linear(p + "self_attn.v_proj.weight", k, e)},
        # o_proj: [D, H*E] -> [H, E, D].
        "o_proj": {"kernel": lambda: get(p + "self_attn.o_proj.weight").T.reshape(h, e, d)},
    }
    if c.qkv_bias:
      for proj, heads in (("q_proj", h), ("k_proj", k), ("v_proj", k)):
        name = f"{p}self_attn.{proj}.bias"
        attn[proj]["bias"] = lambda name=name, heads=heads: get(name).reshape(heads, e)
    return {
        "input_layernorm": {"scale": lambda: get(p + "input_layernorm.weight")},
        "post_attention_layernorm": {"scale": lambda: get(p + "post_attention_layernorm.weight")},
        "self_attn": attn,
        "mlp": {
            "gate_proj": {"kernel": lambda: get(p + "mlp.gate_proj.weight").T},
            "up_proj": {"kernel": lambda: get(p + "mlp.up_proj.weight").T},
            "down_proj": {"kernel": lambda: get(p + "mlp.down_proj.weight").T},
        },
    }

  tree = {
      "embed_tokens": {"embedding": lambda: get("model.embed_tokens.weight")},
      "norm": {"scale": lambda: get("model.norm.weight")},
      **{f"layers_{i}": layer(i) for i in range(c.num_layers)},
  }
  if not c.tied_embeddings:
    tree["lm_head"] = {"kernel": lambda: get("lm_head.weight").T}
  return {"params": tree}


def place_params(model: Transformer, thunks: dict, mesh: Optional[Mesh] = None, rules=None):
  """Materialise a tree of host-array thunks as jax arrays in the model's shardings.

  Each leaf is built with `jax.make_array_from_callback`, so every device copies only
  its own shard from the host array; no device holds the full parameter set.
  """
  mesh = partitioning.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
  rules = partitioning.DEFAULT_RULES if rules is None else rules
  abstract, _ = partitioning.abstract_params(model, mesh, rules)
  if jax.tree.structure(abstract) != jax.tree.structure(thunks):
    raise ValueError(f"parameter tree mismatch:\n{jax.tree.structure(abstract)}\n"
                     f"vs\n{jax.tree.structure(thunks)}")

  def place(spec: jax.ShapeDtypeStruct, thunk):
    host = np.ascontiguousarray(thunk()).astype(spec.dtype, copy=False)
    if host.shape != spec.shape:
      raise UserError(f"checkpoint tensor has shape {host.shape}, the model expects "
                      f"{spec.shape}; config.json does not match the weights")
    return jax.make_array_from_callback(spec.shape, spec.sharding, lambda idx: host[idx])

  return jax.tree.map(place, abstract, thunks)


class _SafetensorsDir:
  """Name -> file index over the safetensors shards of one directory."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if not files:
      raise UserError(f"no *.safetensors files in {directory}; download the checkpoint's "
                      "safetensors weights (pytorch .bin files are not supported)")
    self.location = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise UserError(f"{path} is listed in model.safetensors.index.json but missing")
      with self._open(path) as f:
        for key in f.keys():
          self.location[key] = path

  @staticmethod
  def _open(path):
    try:
      return safe_open(path, framework="np")
    except Exception as e:  # safetensors raises its own error types for bad headers.
      raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); the file is truncated "
                      "or corrupt, download it again") from None

  def __contains__(self, name):
    return name in self.location

  def get(self, name: str) -> np.ndarray:
    if name not in self.location:
      raise UserError(f"tensor {name!r} missing from the safetensors files")
    path = self.location[name]
    with self._open(path) as f:
      try:
        return f.get_tensor(name)
      except Exception as e:
        raise UserError(f"cannot read tensor {name!r} from {path} ({type(e).__name__}: {e}); "
                        "the file is truncated or corrupt, download it again") from None


def load_hf(directory: str, mesh: Optional[Mesh] = None, rules=None,
            dtype: str = "float32") -> tuple[ModelConfig, Any]:
  """(ModelConfig, {"params": ...}) from an HF Llama/Qwen2 directory.

  mesh/rules: where parameters land (default: one device, `partitioning.DEFAULT_RULES`).
  dtype: parameter and activation dtype of the returned config and arrays.
  """
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"{config_path} not found; pass a Hugging Face checkpoint directory")
  with open(config_path) as f:
    hf = json.load(f)
  config = config_from_hf(hf, dtype)  # Validates before any weights are read.
  tensors = _SafetensorsDir(directory)
  if "lm_head.weight" not in tensors:
    config = dataclasses.replace(config, tied_embeddings=True)
  model = Transformer(config)
  params = place_params(model, hf_to_ttc_tree(config, tensors.get), mesh, rules)
  return config, params
