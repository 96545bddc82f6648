"""Tests for ttc/verifiers/evaluation.py: `evaluate_verifiers` on samples of the fake
policy of test_labeling (outcomes known by construction), scored by random reward models.

Of every problem's 5 samples exactly one (the reference solution) is right, two box the
same wrong answer and two give none, so pass@1 is 0.2 and majority vote over all 5 is
always wrong, whatever the reward models say.
"""

import json

import jax
import pytest

from ttc import partitioning, workdir as workdir_lib
from ttc.data import arith_task
from ttc.decoding import sampling
from ttc.errors import UserError
from ttc.verifiers import evaluation, labeling
from ttc.models.transformer import Transformer
from tests.verifiers.conftest import POLICY_CONFIG, write_reward_model
from tests.verifiers.test_labeling import LEVELS, FakePolicy, no_step_checker_task


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """The fake char-vocabulary policy, and a random PRM and ORM that read its tokens.

  Its samples come from `FakePolicy`; a random tiny Transformer stands in for its
  weights, which only the steps' likelihoods read."""
  monkeypatch.setattr(sampling, "sample_prompts", FakePolicy())
  model = Transformer(POLICY_CONFIG)
  params = partitioning.init_params(model, jax.random.key(3))
  monkeypatch.setattr(workdir_lib, "load_policy", lambda source, devices, workdir="": workdir_lib.Policy(
      model, params, workdir_lib.char_codec(), source, "workdir", 7))
  for name, seed in (("prm", 1), ("orm", 2)):
    write_reward_model(tmp_path / name, seed)
  return tmp_path


def _evaluate(workdir, task, **overrides):
  return evaluation.evaluate_verifiers(
      str(workdir), task=task, split="test", num_samples=5, ns=(1, 5), max_new_tokens=40,
      batch_size=10, max_problems_per_level=2, score_batch_size=16, validation_percent=50,
      **overrides)


def _check_answer_level(results):
  assert results["problems"] == 4 and results["samples_per_problem"] == 5
  assert results["pass@1"] == pytest.approx(0.2)
  assert results["accuracy"]["majority"]["1"][0] == pytest.approx(0.2)
  assert results["accuracy"]["majority"]["5"][0] == 0.0
  for name in ("ORM weighted", "PRM-last weighted", "PRM-min weighted", "PRM-prod weighted"):
    assert 0.0 <= results["accuracy"][name]["5"][0] <= 1.0
  # Equal scores through the weighted rule: majority vote, tie rule and all.
  assert results["accuracy"]["constant"] == results["accuracy"]["majority"]
  # The paired difference's mean is the difference of the means, whatever its interval.
  for name, row in results["difference_to_orm"].items():
    for n, (mean, low, high) in row.items():
      want = results["accuracy"][name][n][0] - results["accuracy"]["ORM weighted"][n][0]
      assert mean == pytest.approx(want) and low <= mean <= high
  assert set(results["difference_to_orm"]) == {"PRM-last weighted", "PRM-min weighted",
                                               "PRM-prod weighted"}
  assert 0.0 <= results["outcome_auroc"]["ORM"] <= 1.0


def test_step_metrics_of_a_task_with_a_step_checker(workdir):
  task = arith_task.register_arith_task("test_evaluation_arith", num_train_per_level=50,
                                        num_eval_per_level=5, levels=LEVELS)
  # The held-out questions of these labels tune the first-error threshold.
  labeling.label_prm(str(workdir), task=task, split="train", num_questions=10, num_solutions=5,
                     num_rollouts=4, max_new_tokens=40, batch_size=8)
  results = _evaluate(workdir, task)
  _check_answer_level(results)
  assert results["step_checker"] is True and results["task"] == "test_evaluation_arith"
  assert 0.0 <= results["prm_first_error_auroc"] <= 1.0
  for key in ("prm_first_error_f1@0.5", "prm_first_error_f1@held_out_threshold"):
    f1 = results[key]
    # Kinds 1, 2 and 3 (its extra line) have a wrong step; kinds 0 and 4 have none.
    assert (f1["num_error"], f1["num_correct"]) == (12, 8)
    assert 0.0 <= f1["f1"] <= 1.0
  assert results["prm_first_error_f1@0.5"]["threshold"] == 0.5
  assert results["constant_first_error_auroc"] == 0.5
  within, constant = results["sibling_auroc"]["PRM"], results["sibling_auroc"]["constant"]
  assert 0.0 <= within["low"] <= within["auroc"] <= within["high"] <= 1.0
  assert (constant["auroc"], constant["low"], constant["high"]) == (0.5, 0.5, 0.5)
  # Two parents per problem have a wrong child: the root (kind 1's first step) and the
  # reference steps (kind 2's wrong box vs kind 0's box and kind 3's box + newline, a
  # distinct verifier input). At the root of a one-step problem kind 4's bare step also
  # differs from the step + newline: 2 + 2 pairs there, 1 + 2 for two-step problems.
  assert (within["pairs"], within["parents"], within["questions"]) == (14, 8, 4)
  assert constant["pairs"] == within["pairs"]
  # The policy's step likelihood and the PRM weighed with it rank the same pairs.
  assert set(results["sibling_auroc"]) == {"PRM", "constant", "policy likelihood",
                                           "PRM + 8 x likelihood"}
  for name in ("policy likelihood", "PRM + 8 x likelihood"):
    ranked = results["sibling_auroc"][name]
    assert ranked["pairs"] == within["pairs"] and 0.0 <= ranked["auroc"] <= 1.0


def test_a_task_without_step_checker_reports_step_metrics_as_null(workdir, capsys):
  # No labels file either: without a checker there is no threshold to tune.
  results = _evaluate(workdir, no_step_checker_task("test_evaluation_unchecked"),
                      output_name="verifiers_other_prm.json")
  _check_answer_level(results)
  assert results["step_checker"] is False
  for key in ("prm_first_error_auroc", "constant_first_error_auroc", "sibling_auroc",
              "prm_first_error_f1@0.5", "prm_first_error_f1@held_out_threshold"):
    assert results[key] is None
  assert not (workdir / "verifiers_test.json").exists()
  written = json.loads((workdir / "verifiers_other_prm.json").read_text())
  assert written["prm_first_error_auroc"] is None and written["pass@1"] == results["pass@1"]
  assert (written["prm_dir"], written["orm_dir"]) == ("prm", "orm")
  assert len(written["samples_sha256"]) == 64
  assert "no ground-truth step checker" in capsys.readouterr().out


def test_a_reward_model_of_another_vocabulary_is_refused(workdir, monkeypatch):
  codec = workdir_lib.char_codec()
  monkeypatch.setattr(workdir_lib, "load_policy", lambda source, devices, workdir="": workdir_lib.Policy(
      None, None, workdir_lib.Codec(codec.encode_prompt, codec.encode, codec.decode,
                                    codec.eos_id, vocab_size=49152), source, "gguf", None))
  with pytest.raises(UserError, match="32 token ids but the policy's tokenizer 49152"):
    _evaluate(workdir, no_step_checker_task("test_evaluation_unchecked"))


@pytest.mark.parametrize("overrides", [dict(ns=()), dict(ns=(0,)), dict(num_samples=0),
                                       dict(score_batch_size=0)])
def test_bad_settings_are_user_errors_before_any_work(tmp_path, overrides):
  kwargs = dict(task="arith_sft", split="test", num_samples=4, ns=(1, 4))
  kwargs.update(overrides)
  with pytest.raises(UserError, match="evaluate_verifiers"):
    evaluation.evaluate_verifiers(str(tmp_path), **kwargs)


def test_a_steps_likelihood_is_the_mean_over_its_own_tokens():
  # Prompt tokens 0..1; steps end at tokens 3 and 5 (delimiter, then EOS).
  assert evaluation._step_mean_logprobs([0.0, -9.0, -1.0, -2.0, -3.0, -5.0], [3, 5], 2) == [
      -1.5, -4.0]
