"""A policy work dir (model_config.json + orbax checkpoint) with random weights, in seconds."""

import atexit
import dataclasses
import json
import pathlib
import shutil
import tempfile

import jax
import pytest

from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import checkpointing, partitioning
from ttc.train import optimizer, trainer

POLICY_CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, mlp_dim=64)


_WRITTEN = {}  # (writer, config, seed): a directory written once in this test session


def _written_once(writer, path, config, seed):
  """Copies into `path` what `writer(directory, config, seed)` writes, writing it only the
  first time in the session: initialising and saving with orbax takes seconds, a copy
  milliseconds, and many modules want the same random tiny models."""
  key = (writer.__name__, config, seed)
  if key not in _WRITTEN:
    cache = pathlib.Path(tempfile.mkdtemp(prefix="ttc_tiny_"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    writer(cache / "d", config, seed)
    _WRITTEN[key] = cache / "d"
  shutil.copytree(_WRITTEN[key], path, dirs_exist_ok=True)
  return path


def write_policy_workdir(path, config: ModelConfig = POLICY_CONFIG, seed: int = 0):
  """What `train` leaves behind, minus the training: config and one checkpoint."""
  return _written_once(_write_policy_workdir, path, config, seed)


def _write_policy_workdir(path, config: ModelConfig, seed: int):
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


def write_tiny_hf_policy(directory, alphabet: str, seed: int = 0) -> str:
  """A random HF Llama whose BPE tokenizer covers `alphabet` and merges a digit with the
  newline after it ("7\\n") and "\\boxed" into single tokens, so its token indices are
  not character indices. Vocabulary: <unk> <s> </s>, the characters, the merges."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models

  merges = [(d, "\n") for d in "0123456789"]
  boxed = "\\boxed"
  merges += [(boxed[:i], boxed[i]) for i in range(1, len(boxed))]
  words = ["<unk>", "<s>", "</s>"] + list(alphabet) + ["".join(m) for m in merges]
  tok = Tokenizer(models.BPE({w: i for i, w in enumerate(words)}, merges, unk_token="<unk>"))
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
      json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
      tie_word_embeddings=False, max_position_embeddings=256)
  transformers.LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
  return str(directory)


def write_reward_model(directory, seed: int, config: ModelConfig = POLICY_CONFIG):
  """What train_prm / train_orm leave behind (model_config.json, best/), with random
  weights whose value head is scaled so the scores spread over (0, 1)."""
  return _written_once(_write_reward_model, directory, config, seed)


def _write_reward_model(directory, config: ModelConfig, seed: int):
  from ttc import workdir as workdir_lib
  from ttc.verifiers import reward_model
  model = reward_model.RewardModel(config)
  params = partitioning.init_params(model, jax.random.key(seed))
  params["params"]["value_head"]["kernel"] *= 100.0
  workdir_lib.save_model_config(str(directory), config)
  mngr = checkpointing.manager(str(directory / "best"), keep=1)
  checkpointing.save(mngr, 1, {"params": params}, 1)
  mngr.close()
  return directory
