"""Tests for ttc/workdir.py: checkpoints of every kind, their codecs, and policy loading."""

import numpy as np
import pytest

from ttc import workdir
from ttc.data import vocab
from ttc.errors import UserError
from ttc.models import smollm2
from tests.verifiers.conftest import write_policy_workdir


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
  return write_policy_workdir(tmp_path_factory.mktemp("policy") / "work")


def test_work_dir_codec_is_the_character_vocabulary(policy_dir):
  checkpoint = workdir.open_checkpoint(str(policy_dir))
  codec = checkpoint.codec
  assert checkpoint.kind == "workdir"
  assert codec.encode_prompt("1+2\n", False) == vocab.encode_prompt("1+2\n")
  assert codec.decode(codec.encode("17+25=42|42\n")) == "17+25=42|42\n"
  assert codec.eos_id == vocab.EOS_ID and codec.stop_ids(True) == ()
  assert codec.step_ids("\n") == tuple(vocab.CharVocabulary().encode("\n"))
  with pytest.raises(UserError, match="chat template"):
    codec.encode_prompt("1+2", True)


def test_load_policy_from_a_work_dir(policy_dir):
  with workdir.device_context() as devices:
    policy = workdir.load_policy("", devices, str(policy_dir))
    by_path = workdir.load_policy(str(policy_dir), devices)
  assert policy.kind == "workdir" and policy.step == 1
  # The work dir's own policy pins "", so a moved work dir still matches its results.
  assert policy.describe() == {"policy": "", "policy_kind": "workdir", "policy_step": 1}
  assert by_path.describe()["policy"] == str(policy_dir)
  assert policy.model.config == workdir.load_model_config(str(policy_dir))
  (table,) = policy.params["params"]["embed_tokens"].values()
  assert np.asarray(table).shape == (32, 32)  # [vocab, embed] of the fixture's config


def test_a_stage_without_policy_or_work_dir_is_a_user_error():
  with pytest.raises(UserError, match="no policy named"):
    workdir.load_policy("", workdir.Devices(None, None))


def test_bad_sources_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    workdir.open_checkpoint(str(tmp_path / "missing"))
  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(UserError, match="unknown checkpoint kind"):
    workdir.open_checkpoint(str(tmp_path / "weights.bin"))
  with pytest.raises(UserError, match="unknown checkpoint kind"):
    workdir.open_checkpoint(str(tmp_path))
  with pytest.raises(UserError, match="not a trained ttc work dir"):
    workdir.load_model_config(str(tmp_path))


@pytest.fixture(scope="module")
def smol_codec():
  try:
    smollm2.gguf_path()
  except UserError as e:
    pytest.skip(str(e))
  return workdir.open_checkpoint(workdir.SMOLLM2).codec  # tokenizer only, no weights


def test_smollm2_is_named_by_its_short_name(smol_codec):
  assert workdir.resolve(workdir.SMOLLM2) == smollm2.gguf_path()
  assert workdir.open_checkpoint(workdir.SMOLLM2).kind == "gguf"


def test_smollm2_step_ids_are_every_token_ending_a_blank_line(smol_codec):
  ids = smol_codec.step_ids("\n\n")
  (blank_line,) = smol_codec.encode("\n\n")
  assert blank_line in ids and len(ids) > 1
  assert all(smol_codec.decode([i]).endswith("\n\n") for i in ids)
  assert all(smol_codec.decode([i]).endswith("\n") for i in smol_codec.step_ids("\n"))


def test_smollm2_chat_prompt_ends_with_the_assistant_turn(smol_codec):
  ids = smol_codec.encode_prompt("What is 1+1?", True)
  text = smol_codec.decode(ids)
  assert text.rstrip().endswith("assistant") and "What is 1+1?" in text
  assert smol_codec.stop_ids(True) == () and smol_codec.stop_ids(False) == ()
  assert smol_codec.decode([smol_codec.eos_id]) == "<|im_end|>"
