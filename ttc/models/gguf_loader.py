"""Load a llama.cpp GGUF file (Llama architecture) into `Transformer` parameters.

Quantised tensors (Q4_1, Q8_0, F16, ...) are dequantised to float32 on the host with
`gguf.quants.dequantize`. llama.cpp's converter permutes the rows of q/k projections
(interleaved RoPE pairs); `_unpermute` restores HF's "rotate half" layout, after which
the tensors map exactly like an HF checkpoint (see `hf_loader.hf_to_ttc_tree`).
"""

from typing import Any, Optional

import gguf
import numpy as np
from jax.sharding import Mesh

from ttc.errors import UserError
from ttc.models import hf_loader
from ttc.models.config import ModelConfig
from ttc.models.tokenizer import TextTokenizer, tokenizer_from_gguf
from ttc.models.transformer import Transformer

# GGUF tensor name -> HF tensor name ("{i}" is the layer index).
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _hf_name(gguf_name: str) -> Optional[str]:
  parts = gguf_name.split(".")
  if parts[0] == "blk":
    key = ".".join(["blk", "{i}", *parts[2:]])
    return _GGUF_TO_HF.get(key, "").replace("{i}", parts[1]) or None
  return _GGUF_TO_HF.get(gguf_name)


def _unpermute(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of convert_hf_to_gguf's `permute` for q/k weights [heads*E, D].

  llama.cpp stores each head's rows as interleaved pairs (x0, x_half, x1, ...);
  HF keeps the two halves contiguous.
  """
  out, rest = w_OxI.shape[0], w_OxI.shape[1:]
  return (w_OxI.reshape(num_heads, out // num_heads // 2, 2, *rest)
          .swapaxes(1, 2).reshape(w_OxI.shape))


def _field(reader: gguf.GGUFReader, key: str, default: Any = None):
  f = reader.get_field(key)
  if f is None:
    if default is None:
      raise UserError(f"GGUF metadata {key!r} missing; the file is not a llama model")
    return default
  return f.contents()


def open_gguf(path: str) -> gguf.GGUFReader:
  """A GGUFReader, with unreadable or truncated files reported as one-line UserErrors."""
  try:
    reader = gguf.GGUFReader(path)
  except FileNotFoundError:
    raise UserError(f"{path} not found") from None
  except Exception as e:  # Truncation surfaces as ValueError/IndexError/struct errors.
    raise UserError(f"cannot read GGUF file {path} ({type(e).__name__}: {e}); the file is "
                    "truncated or corrupt, download it again") from None
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > len(reader.data) or t.data.nbytes != t.n_bytes:
      raise UserError(f"GGUF file {path} is truncated (tensor {t.name} ends past the end "
                      "of the file); download it again")
  return reader


def config_from_gguf(reader: gguf.GGUFReader, dtype: str = "float32") -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise UserError(f"unknown architecture {arch!r} in GGUF metadata; supported: llama")
  num_heads = int(_field(reader, "llama.attention.head_count"))
  embed_dim = int(_field(reader, "llama.embedding_length"))
  head_dim = embed_dim // num_heads
  rope_dim = int(_field(reader, "llama.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise UserError(f"partial RoPE (rope.dimension_count={rope_dim} != head_dim={head_dim}) "
                    "is not supported")
  if reader.get_field("llama.rope.scaling.type") is not None:
    kind = _field(reader, "llama.rope.scaling.type")
    if kind not in ("none", "linear") or float(_field(reader, "llama.rope.scaling.factor",
                                                      1.0)) != 1.0:
      raise UserError(f"rope scaling type {kind!r} is not supported (only plain Llama RoPE)")
  tokens = reader.get_field("tokenizer.ggml.tokens")
  vocab_size = len(tokens.data) if tokens is not None else int(_field(reader, "llama.vocab_size"))
  return ModelConfig(
      vocab_size=vocab_size,
      embed_dim=embed_dim,
      num_layers=int(_field(reader, "llama.block_count")),
      num_heads=num_heads,
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", num_heads)),
      head_dim=head_dim,
      mlp_dim=int(_field(reader, "llama.feed_forward_length")),
      rope_theta=float(_field(reader, "llama.rope.freq_base", 10_000.0)),
      norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
      qkv_bias=False,
      tied_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
      dtype=dtype,
      param_dtype=dtype,
  )


def hf_tensors(reader: gguf.GGUFReader, config: ModelConfig) -> dict:
  """{HF name: () -> float32 numpy}, dequantised and with q/k rows un-permuted."""
  thunks = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      continue  # e.g. rope_freqs: not used by plain RoPE.

    def read(t=t, name=name):
      try:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
      except NotImplementedError as e:
        raise UserError(f"GGUF tensor {t.name}: {e}") from None
      w = np.asarray(w, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
      if name.endswith("q_proj.weight"):
        w = _unpermute(w, config.num_heads)
      elif name.endswith("k_proj.weight"):
        w = _unpermute(w, config.num_kv_heads)
      return w

    thunks[name] = read
  return thunks


def load_gguf(path: str, mesh: Optional[Mesh] = None, rules=None, dtype: str = "float32"
              ) -> tuple[ModelConfig, Any, TextTokenizer]:
  """(ModelConfig, {"params": ...}, TextTokenizer) from a llama GGUF file.

  mesh/rules: where parameters land (default: one device, `partitioning.DEFAULT_RULES`).
  """
  reader = open_gguf(path)
  config = config_from_gguf(reader, dtype)
  tokenizer = tokenizer_from_gguf(reader)  # Fails fast, before minutes of dequantising.
  tensors = hf_tensors(reader, config)

  def get(name):
    if name not in tensors:
      raise UserError(f"tensor for {name!r} missing from GGUF file {path}")
    return tensors[name]()

  params = hf_loader.place_params(Transformer(config), hf_loader.hf_to_ttc_tree(config, get),
                                  mesh, rules)
  return config, params, tokenizer


def hf_state_dict(path: str) -> dict:
  """{HF name: float32 numpy} of a GGUF file, for building a reference model in tests."""
  reader = open_gguf(path)
  config = config_from_gguf(reader)
  return {name: read() for name, read in hf_tensors(reader, config).items()}
