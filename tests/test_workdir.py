"""Tests for ttc/workdir.py: checkpoints of every kind, their codecs, and policy loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc import workdir
from ttc.data import task as task_lib
from ttc.data import vocab
from ttc.data.math import dataset as math_dataset
from ttc.decoding import samplers, sampling, steps
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
  # One token is the delimiter itself, found by decoding: no pair can split one character.
  assert codec.stop_rule(False, "\n") == sampling.StopRule(
      end_ids=(vocab.EOS_ID,), step_ids=tuple(vocab.CharVocabulary().encode("\n")))
  assert codec.stop_rule(False) == sampling.StopRule(end_ids=(vocab.EOS_ID,))
  with pytest.raises(UserError, match="can end the step delimiter '@'"):
    codec.stop_rule(False, "@")  # not in the alphabet
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


def test_a_relative_policy_names_a_checkpoint_under_the_work_dir(policy_dir, tmp_path,
                                                                 monkeypatch):
  # A second policy beside the first, as train.output_dir leaves it (flops_matched.gin).
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "policy_large").symlink_to(policy_dir)
  monkeypatch.chdir(tmp_path)  # "policy_large" is not a path from here
  with workdir.device_context() as devices:
    policy = workdir.load_policy("policy_large", devices, str(tmp_path / "run"))
  assert policy.kind == "workdir" and policy.describe()["policy"] == "policy_large"
  with pytest.raises(UserError, match="checkpoint nope not found"):
    with workdir.device_context() as devices:
      workdir.load_policy("nope", devices, str(tmp_path / "run"))


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


def test_smollm2_stop_rule_sees_a_blank_line_as_one_token_or_two(smol_codec):
  rule = smol_codec.stop_rule(True, "\n\n")
  assert rule.end_ids == (smol_codec.eos_id,)  # <|im_end|> is SmolLM2's EOS
  texts = [smol_codec.decode([i]) for i in range(smol_codec.vocab_size)]
  assert rule.step_ids == tuple(i for i, t in enumerate(texts) if t.endswith("\n\n"))
  (blank_line,) = smol_codec.encode("\n\n")
  assert blank_line in rule.step_ids and len(rule.step_ids) > 1
  # "x.\n\nSo" is written with two "\n" tokens: a pair of them ends a step.
  newline = 198
  assert smol_codec.encode("x.\n\nSo")[2:4] == [newline, newline]
  ((tails, heads),) = rule.step_pairs
  assert newline in tails and newline in heads
  assert all(texts[i].endswith("\n") and not texts[i].endswith("\n\n") for i in tails)
  assert all(texts[i].startswith("\n") for i in heads)


def test_smollm2_greedy_decode_of_scripted_text_stops_a_step_at_the_blank_line(smol_codec):
  """`sampling.decode` with a fake model that writes "x.\n\nSo" token by token."""
  script = smol_codec.encode("x.\n\nSo")
  script_S = jnp.asarray(script, jnp.int32)
  # The token after position p is script[p + 1].
  logits = lambda p_B: jax.nn.one_hot(script_S[jnp.minimum(p_B, len(script) - 1)],
                                      smol_codec.vocab_size)
  step = lambda token_B, position_B, cache: (logits(position_B + 1), cache)
  out, _ = sampling.decode(step, jnp.zeros(()), logits(jnp.zeros((1,), jnp.int32)),
                           jnp.zeros((1,), jnp.int32), jax.random.key(0), samplers.Greedy(),
                           len(script), smol_codec.stop_rule(True, "\n\n"), 0, None)
  n = int(out.lengths_B[0])
  assert smol_codec.decode(np.asarray(out.tokens_BxG[0, :n]).tolist()) == "x.\n\n"
  assert int(out.stop_reason_B[0]) == sampling.StopReason.STOP_TOKEN


@pytest.mark.slow  # ~30 s on 2 CPU cores; the scripted test above covers the rule
def test_smollm2_search_step_on_a_math_prompt_ends_at_a_blank_line(smol_codec):
  """Greedy SmolLM2 on a MATH chat prompt: its first step ends at the first blank line."""
  task = math_dataset.MathTask()
  with workdir.device_context() as devices:
    policy = workdir.load_policy(workdir.SMOLLM2, devices)
    ids = policy.codec.encode_prompt(task.prompt(task_lib.Problem(
        uid="x", question="What is $2 + 3 \\cdot 4$?", answer="14", level=1)), task.chat)
    tokens, lengths = sampling.left_pad([ids], sampling.bucket(len(ids), 16))
    state = steps.start(policy.model, policy.params, tokens, lengths, num_rows=1,
                        max_tokens=64)
    out, _ = steps.continue_until_step(
        policy.model, policy.params, state, jax.random.key(0), samplers.Greedy(),
        max_step_tokens=64, stops=policy.codec.stop_rule(task.chat, task.step_delimiter))
  n = int(out.lengths_B[0])
  text = policy.codec.decode(np.asarray(out.tokens_BxG[0, :n]).tolist())
  assert int(out.stop_reason_B[0]) == sampling.StopReason.STOP_TOKEN, text
  assert text.endswith("\n\n") and "\n\n" not in text[:-2], text


def test_smollm2_chat_prompt_ends_with_the_assistant_turn(smol_codec):
  ids = smol_codec.encode_prompt("What is 1+1?", True)
  text = smol_codec.decode(ids)
  assert text.rstrip().endswith("assistant") and "What is 1+1?" in text
  assert smol_codec.stop_ids(True) == () and smol_codec.stop_ids(False) == ()
  assert smol_codec.decode([smol_codec.eos_id]) == "<|im_end|>"
