"""load_gguf on SmolLM2-135M-Instruct (Q4_1): same logits and greedy text as transformers.

The reference LlamaForCausalLM gets the same dequantised weights (`hf_state_dict`), so a
logit mismatch points at the GGUF -> ttc layout mapping; a wrong q/k un-permutation
shows up instead as incoherent text in `test_greedy_continuations_match_transformers`.
"""

import numpy as np
import pytest

from ttc.errors import UserError
from ttc.models import gguf_loader, hf_reference

from tests.models.parity_utils import pad_prompts, torch_greedy, torch_logits, ttc_greedy, ttc_logits

LOGIT_TOL = 1e-3  # float32 on both sides; 30 layers of differently ordered sums
NUM_NEW = 32
PROMPTS = ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def reference(smol):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  return hf_reference.from_gguf(smol[0])[1]


def test_config_from_metadata(smol):
  _, config, params, tokenizer = smol
  assert (config.num_layers, config.embed_dim, config.num_heads, config.num_kv_heads) == (
      30, 576, 9, 3)
  assert (config.mlp_dim, config.vocab_size, config.rope_theta) == (1536, 49152, 100_000.0)
  assert config.tied_embeddings and "lm_head" not in params["params"]
  assert tokenizer.vocab_size == 49152


def test_tokenizer_round_trips_and_knows_chat_tokens(smol):
  tokenizer = smol[3]
  text = "Hello, world! 12345 The capital of France is"
  ids = tokenizer.encode(text)
  assert ids[:4] == [19556, 28, 905, 17]  # Hello , Ġworld !
  assert ids[5:10] == [33, 34, 35, 36, 37]  # digits split one by one
  assert tokenizer.decode(ids) == text
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  assert tokenizer.encode("x", add_bos=True)[0] == 1
  prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
  assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
  ids = tokenizer.encode(prompt)
  assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|>, <|im_end|> kept whole
  assert tokenizer.decode(ids) == prompt


def test_logits_match_transformers(smol, reference):
  _, config, params, tokenizer = smol
  prompts = [tokenizer.encode(p) for p in PROMPTS]
  buf, lengths = pad_prompts(prompts, 0)
  ours, theirs = ttc_logits(config, params, buf), torch_logits(reference, buf)
  valid = np.arange(buf.shape[1])[None, :] < lengths[:, None]
  diff = np.abs(ours - theirs).max(axis=-1)[valid].max()
  print(f"SmolLM2 max-abs logit diff {diff:.3g}")
  assert diff <= LOGIT_TOL


def test_greedy_continuations_match_transformers(smol, reference):
  _, config, params, tokenizer = smol
  prompts = [tokenizer.encode(p) for p in PROMPTS]
  ours = ttc_greedy(config, params, prompts, NUM_NEW)
  theirs = torch_greedy(reference, prompts, NUM_NEW)
  for p, row in zip(PROMPTS, ours):
    print(repr(p + tokenizer.decode(row)))
  np.testing.assert_array_equal(ours, theirs)
  assert "Paris" in tokenizer.decode(ours[0])  # q/k un-permuted correctly


def test_truncated_gguf_is_a_user_error(tmp_path, smol):
  path = tmp_path / "cut.gguf"
  with open(smol[0], "rb") as f:
    path.write_bytes(f.read(5_000_000))
  with pytest.raises(UserError, match="cut.gguf.*truncated") as e:
    gguf_loader.load_gguf(str(path))
  assert "\n" not in str(e.value)
  path.write_bytes(b"GGUF\x03\x00\x00\x00\x10")
  with pytest.raises(UserError, match="cut.gguf"):
    gguf_loader.load_gguf(str(path))


def test_missing_tokenizer_is_a_user_error(tmp_path):
  gguf = pytest.importorskip("gguf")
  path = tmp_path / "no_tokenizer.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.add_embedding_length(8)
  writer.add_head_count(2)
  writer.add_feed_forward_length(8)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(4)
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(UserError, match="no tokenizer"):
    gguf_loader.load_gguf(str(path))


def test_missing_hf_tokenizer_is_a_user_error(tmp_path):
  from ttc.models.tokenizer import tokenizer_from_hf  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="tokenizer.json not found"):
    tokenizer_from_hf(str(tmp_path))
