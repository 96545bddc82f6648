"""python -m ttc.generate: SmolLM2 says Paris, left padding changes nothing, seeds reproduce,
bad input is one `error:` line.

The SmolLM2 CLI runs take ~45 s each on two CPU cores (11 s dequantising, the rest compiling
30 layers), so the plain run is the default test and the --chat run is `slow`; the chat
prompt ids are also checked without loading weights. The batching and sampling tests use a
tiny random HF Llama. If greedy batched != greedy alone, suspect `sampling.left_pad` or
the bucket length first (pad slots must get position -1).
"""

import io
import json
import os
import subprocess
import sys

import pytest

from ttc import generate, workdir
from ttc.decoding import sampling
from ttc.errors import UserError
from ttc.models import smollm2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The capital of France is"


def _cli(*args, timeout=300):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "ttc.generate", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _json_lines(result):
  assert result.returncode == 0, result.stderr
  return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def smol_path():
  try:
    return smollm2.gguf_path()
  except UserError as e:
    pytest.skip(str(e))


def test_smollm2_json_says_paris(smol_path):
  (line,) = _json_lines(_cli("--checkpoint", smol_path, "--prompt", PROMPT,
                             "--max_new_tokens", "8", "--json"))
  assert line["prompt"] == PROMPT
  assert line["prompt_ids"] and all(isinstance(i, int) for i in line["prompt_ids"])
  (ids,) = line["generated_ids"]
  assert ids and len(ids) <= 8
  assert "Paris" in line["texts"][0], line


def test_smollm2_chat_prompt_starts_with_im_start(smol_path):
  codec = workdir.open_checkpoint(smol_path).codec  # tokenizer only, no weights
  ids = codec.encode_prompt("What is the capital of France?", True)
  im_start = codec.encode_prompt("<|im_start|>", False)
  assert len(im_start) == 1 and ids[0] == im_start[0]
  # SmolLM2's EOS is <|im_end|>: no extra stop id.
  assert codec.stop_ids(True) == () and codec.decode([codec.eos_id]) == "<|im_end|>"
  assert codec.encode_prompt(PROMPT, False)[0] != im_start[0]  # no BOS: add_bos_token is false


@pytest.mark.slow
def test_smollm2_chat_cli(smol_path):
  (line,) = _json_lines(_cli("--checkpoint", smol_path, "--prompt",
                             "What is the capital of France?", "--chat",
                             "--max_new_tokens", "8", "--json"))
  assert line["prompt_ids"][0] == 1  # <|im_start|>
  assert line["generated_ids"][0] and "Paris" in line["texts"][0], line


def _save_tiny_llama(directory, max_position_embeddings):
  """A random Llama (vocab: <unk> <s> </s> w3..w127) with a word-level tokenizer.json."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders
  torch.manual_seed(0)
  # Large init: the default 0.02 gives near-tied logits, making greedy equality float noise.
  config = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
      tie_word_embeddings=False, initializer_range=0.2,
      max_position_embeddings=max_position_embeddings)
  transformers.LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
  words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 128)]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)
  return str(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return _save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), max_position_embeddings=128)


def _run(argv) -> list[dict]:
  out = io.StringIO()
  generate.run(generate.parse_args(argv), out=out)
  return [json.loads(line) for line in out.getvalue().splitlines()]


def test_greedy_alone_equals_batched_with_a_longer_prompt(tiny):
  short = "w5 w9 w17"
  long = " ".join(f"w{i}" for i in range(20, 45))  # 25 tokens: a bigger bucket than alone
  assert sampling.bucket(3, generate.MIN_BUCKET) != sampling.bucket(25, generate.MIN_BUCKET)
  args = ["--checkpoint", tiny, "--max_new_tokens", "12", "--json"]
  (alone,) = _run(args + ["--prompt", short])
  batched = _run(args + ["--prompt", short, "--prompt", long])
  assert [b["prompt"] for b in batched] == [short, long]
  assert alone["prompt_ids"] == [5, 9, 17]
  assert len(alone["generated_ids"][0]) > 0
  assert batched[0]["generated_ids"] == alone["generated_ids"]
  assert batched[0]["texts"] == alone["texts"]


def test_num_samples_are_seeded_and_reproduce_across_processes(tiny):
  args = ["--checkpoint", tiny, "--prompt", "w5 w9 w17", "--max_new_tokens", "10",
          "--num_samples", "3", "--temperature", "1", "--top_k", "40", "--top_p", "0.95",
          "--json"]
  (first,) = _json_lines(_cli(*args, "--seed", "0"))
  assert len(first["generated_ids"]) == 3 and len(first["texts"]) == 3
  assert all(0 < len(ids) <= 10 for ids in first["generated_ids"])
  assert all(2 not in ids for ids in first["generated_ids"])  # EOS (</s>) excluded
  (again,) = _run(args + ["--seed", "0"])
  (other,) = _run(args + ["--seed", "1"])
  assert again == first
  assert other["generated_ids"] != first["generated_ids"]


def _assert_one_error_line(result):
  assert result.returncode == 2, (result.stdout, result.stderr)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_missing_checkpoint_is_one_error_line(tmp_path):
  line = _assert_one_error_line(_cli("--checkpoint", str(tmp_path / "nope.gguf"),
                                     "--prompt", "hi"))
  assert "not found" in line


def test_prompt_longer_than_context_is_one_error_line(tmp_path):
  directory = _save_tiny_llama(tmp_path, max_position_embeddings=16)
  prompt = " ".join(f"w{3 + i}" for i in range(40))
  line = _assert_one_error_line(_cli("--checkpoint", directory, "--prompt", prompt,
                                     "--max_new_tokens", "4"))
  assert "40 tokens" in line and "max_position_embeddings" in line, line


def test_bad_flags_and_kinds_are_user_errors(tmp_path):
  with pytest.raises(SystemExit) as e:
    generate.parse_args(["--checkpoint", "x"])  # no --prompt
  assert e.value.code == 2
  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(UserError, match="unknown checkpoint kind"):
    workdir.open_checkpoint(str(tmp_path / "weights.bin"))
  with pytest.raises(UserError, match="unknown checkpoint kind"):
    workdir.open_checkpoint(str(tmp_path))
