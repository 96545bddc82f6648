"""Every stage takes an open checkpoint as its policy: here a tiny random HF Llama whose
BPE tokenizer is not the character vocabulary (it merges "<digit>\\n" and "\\boxed"), so a
stage that assumed work-dir token ids would misplace steps or read the wrong ids.

The policy is random, so what is checked is the plumbing, not accuracy: each stage runs
with `policy=<hf dir>`, pins the checkpoint it used, and reads text with its tokenizer.
"""

import json

import pytest

from ttc import evaluate, workdir as workdir_lib
from ttc.data import vocab
from ttc.errors import UserError
from ttc.search import results, sweep
from ttc.train import reward_training
from ttc.verifiers import evaluation, labeling

from tests.verifiers import test_training
from tests.verifiers.conftest import write_tiny_hf_policy

TASK = test_training.TASK
TINY = dict(num_steps=5, batch_size=8, learning_rate=1e-3, warmup_steps=1, eval_every=5,
            patience=2, validation_percent=20, max_length=64)


@pytest.fixture(scope="module")
def hf_work(tmp_path_factory):
  """(work dir with hand-written labels of the HF policy and its PRM and ORM, HF dir)."""
  test_training._problems()  # registers TASK
  root = tmp_path_factory.mktemp("open_checkpoint")
  hf_dir = write_tiny_hf_policy(root / "hf", vocab.ALPHABET)
  work = root / "work"
  work.mkdir()
  test_training.write_labels(work / "prm_labels.jsonl",
                             workdir_lib.open_checkpoint(hf_dir).codec, policy=hf_dir,
                             wrong_first_step=True)
  for stage in (reward_training.train_prm, reward_training.train_orm):
    stage(str(work), task=TASK, training=reward_training.RewardTraining(**TINY))
  return work, hf_dir


def test_step_rule_of_the_bpe_policy_ends_steps_at_merged_newlines(hf_work):
  _, hf_dir = hf_work
  codec = workdir_lib.open_checkpoint(hf_dir).codec
  rule = codec.stop_rule(chat=False, delimiter="\n")
  merged = {codec.encode(f"{d}\n")[0] for d in range(10)}
  assert merged | set(codec.encode("\n")) <= set(rule.step_ids)
  assert rule.end_ids == (codec.eos_id,)


def test_label_prm_samples_the_hf_policy_and_pins_it(hf_work, tmp_path):
  _, hf_dir = hf_work
  summary = labeling.label_prm(str(tmp_path), task=TASK, policy=hf_dir, num_questions=2,
                               num_solutions=2, num_rollouts=2, max_new_tokens=8)
  assert summary["questions"] == 2 and summary["solutions_sampled"] == 4
  settings = json.loads((tmp_path / "prm_labels.settings.json").read_text())
  assert (settings["policy"], settings["policy_kind"]) == (hf_dir, "hf")


def test_evaluate_samples_the_hf_policy(hf_work, tmp_path):
  _, hf_dir = hf_work
  out = evaluate.evaluate(str(tmp_path), task=TASK, policy=hf_dir, split="test",
                          num_samples=2, ks=(1, 2), max_new_tokens=8, max_problems=2)
  assert 0 <= out["overall"]["pass@1"] <= 1
  saved = json.loads((tmp_path / "eval_test.json").read_text())
  assert (saved["policy"], saved["policy_kind"]) == (hf_dir, "hf")
  assert saved["tokens_generated"] > 0


def test_evaluate_verifiers_scores_hf_samples_with_its_reward_models(hf_work):
  work, hf_dir = hf_work
  out = evaluation.evaluate_verifiers(str(work), task=TASK, policy=hf_dir, num_samples=2,
                                      ns=(1, 2), max_new_tokens=8,
                                      max_problems_per_level=1)
  assert out  # ran: sampled with the HF policy, scored by reward models of its ids


def test_search_sweep_searches_with_the_hf_policy_and_its_prm(hf_work, tmp_path):
  work, hf_dir = hf_work
  table = sweep.search_sweep(str(work), task=TASK, policy=hf_dir,
                             method_names=("best_of_n", "beam_m2"), budgets=(2,),
                             max_problems_per_level=1, max_solution_tokens=16,
                             max_step_tokens=8, results_file="hf_search.jsonl")
  assert set(table) == {"best_of_n", "beam_m2", "majority"}
  records = results.read_results(str(work / "hf_search.jsonl"))
  assert {r["method"] for r in records} == {"best_of_n", "beam_m2"}
  settings = json.loads((work / "hf_search.settings.json").read_text())
  assert settings["policy_kind"] == "hf"


def test_a_reward_model_of_another_policy_is_refused(hf_work, tmp_path):
  """The HF PRM reads 45 ids; SmolLM2's ids go up to 49,151: refused before sampling."""
  work, _ = hf_work
  codec = workdir_lib.char_codec()  # 30 ids: within the PRM's vocabulary, so accepted
  with workdir_lib.device_context() as devices:
    model, _ = workdir_lib.load_reward_model(str(work / "prm"), devices, codec)
    assert model.config.vocab_size == 45
    wide = workdir_lib.Codec(encode_prompt=None, encode=None, decode=None, eos_id=0,
                             vocab_size=49152)
    with pytest.raises(UserError, match="use it with the policy it was trained from"):
      workdir_lib.load_reward_model(str(work / "prm"), devices, wide)

