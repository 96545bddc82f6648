"""load_hf: tiny random Llama / Qwen2 checkpoints give transformers' logits and greedy text.

If parity fails, diff one layer first: q/k kernels (the [out, in] -> [in, heads, head_dim]
reshape) and RoPE's rotate-half layout are the usual suspects.
"""

import json
import os

import numpy as np
import pytest

from ttc.errors import UserError
from ttc.models.hf_loader import load_hf
from ttc import partitioning

from tests.models.parity_utils import torch_greedy, torch_logits, ttc_greedy, ttc_logits

LOGIT_TOL = 1e-4  # float32 on both sides
NUM_NEW = 32


def _save_llama(directory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  # Large init: random tiny models with the default 0.02 give near-tied logits,
  # which would make greedy equality a test of float noise.
  config = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=5_000.0, rms_norm_eps=1e-5,
      tie_word_embeddings=False, initializer_range=0.2, max_position_embeddings=128)
  model = transformers.LlamaForCausalLM(config).eval()
  # A small max_shard_size forces several files and an index.
  model.save_pretrained(directory, safe_serialization=True, max_shard_size="40KB")
  return model


def _save_qwen2(directory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(1)
  config = transformers.Qwen2Config(
      vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=True, initializer_range=0.2, max_position_embeddings=128)
  model = transformers.Qwen2ForCausalLM(config).eval()
  with torch.no_grad():  # HF initialises biases to zero; make them count.
    for layer in model.model.layers:
      for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        proj.bias.normal_(0.0, 0.2)
  model.save_pretrained(directory, safe_serialization=True)
  return model


def _check_parity(ref, config, params):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (3, 16))
  diff = np.abs(ttc_logits(config, params, tokens) - torch_logits(ref, tokens)).max()
  print(f"max-abs logit diff {diff:.3g}")
  assert diff <= LOGIT_TOL
  prompts = [list(rng.integers(0, config.vocab_size, n)) for n in (5, 9, 3)]
  ours, theirs = ttc_greedy(config, params, prompts, NUM_NEW), torch_greedy(ref, prompts, NUM_NEW)
  np.testing.assert_array_equal(ours, theirs)


def test_llama_sharded_checkpoint_matches_transformers(tmp_path):
  ref = _save_llama(tmp_path)
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len(list(tmp_path.glob("*.safetensors"))) >= 2
  # Parameters land split over a 2x2x2 mesh of the 8 fake CPU devices.
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  config, params = load_hf(str(tmp_path), mesh=mesh)
  assert not config.tied_embeddings and not config.qkv_bias
  assert config.rope_theta == 5_000.0 and config.norm_eps == 1e-5
  kernel = params["params"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert kernel.shape == (64, 4, 16)
  assert kernel.addressable_shards[0].data.shape == (32, 2, 16)  # embed/fsdp, heads/tensor
  _check_parity(ref, config, params)


def test_qwen2_bias_and_tied_embeddings_match_transformers(tmp_path):
  ref = _save_qwen2(tmp_path)
  config, params = load_hf(str(tmp_path))
  assert config.qkv_bias and config.tied_embeddings
  assert "lm_head" not in params["params"]
  _check_parity(ref, config, params)


def _write_config(directory, **fields):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 8, **fields}, f)


def test_unknown_architecture_is_a_user_error(tmp_path):
  _write_config(tmp_path, model_type="gpt_neox")
  with pytest.raises(UserError, match="unknown architecture.*gpt_neox"):
    load_hf(str(tmp_path))


def test_rope_scaling_is_refused(tmp_path):
  _write_config(tmp_path, rope_scaling={"rope_type": "yarn", "factor": 4.0})
  with pytest.raises(UserError, match="'yarn' is not supported"):
    load_hf(str(tmp_path))


def test_missing_config_and_weights_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="config.json not found"):
    load_hf(str(tmp_path))
  _write_config(tmp_path)
  with pytest.raises(UserError, match="no \\*.safetensors"):
    load_hf(str(tmp_path))


def test_truncated_safetensors_is_a_user_error(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  _write_config(tmp_path)
  path = tmp_path / "model.safetensors"
  save_file({"model.embed_tokens.weight": np.ones((8, 8), np.float32)}, str(path))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 40])
  with pytest.raises(UserError, match="model.safetensors.*truncated or corrupt") as e:
    load_hf(str(tmp_path))
  assert "\n" not in str(e.value)
