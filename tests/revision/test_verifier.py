"""Tests for ttc/revision/verifier.py: the revision ORM reads each attempt after its own
context, its labels keep every attempt's prompt, and train_orm learns from them."""

import json

import jax
import numpy as np
import pytest

from ttc import partitioning, workdir as workdir_lib
from ttc.data import arith_task, task as task_lib
from ttc.errors import UserError
from ttc.revision import chains as chains_lib, context, verifier
from ttc.train import reward_training
from ttc.verifiers import labeling, reward_model, scoring
from tests.verifiers.conftest import POLICY_CONFIG, write_policy_workdir

TASK = "revision_verifier_test"


@pytest.fixture(scope="module")
def task():
  return arith_task.register_arith_task(name=TASK, num_train_per_level=8, num_eval_per_level=1,
                                        levels=[(1, 9), (2, 9)], max_value=99)


def _wrong(text: str) -> str:
  """The solution with its boxed answer off by one, and a space before every step: a
  wrong attempt that a tiny ORM can learn to tell apart without doing arithmetic."""
  head, _, tail = text.rpartition("\\boxed{")
  wrong = f"{head}\\boxed{{{int(tail.rstrip('}')) + 1}}}"
  return "\n".join(" " + line for line in wrong.split("\n"))


def _chains(task, problems, length=6):
  """Per problem two chains that alternate wrong and right attempts (right first in
  chain 1), plus an unfinished attempt at the end of chain 0."""
  attempts = []
  for p in problems:
    right, wrong = p.solution, _wrong(p.solution)
    per_problem = []
    for c in range(2):
      chain = []
      for position in range(length):
        text = right if (position + c) % 2 else wrong
        chain.append(chains_lib.Attempt(text, True, task.extract_answer(text), len(text) + 1))
      per_problem.append(chain)
    per_problem[0][-1] = chains_lib.Attempt("1+", False, None, 2)
    attempts.append(per_problem)
  return chains_lib.Chains(list(problems), attempts)


def test_an_attempt_is_read_after_the_last_four_attempts_of_its_chain(task):
  codec = workdir_lib.char_codec()
  problem = task.problems("train")[0]
  texts = [f"{i}+{i}={2 * i}|{2 * i}\n\\boxed{{{2 * i}}}" for i in range(6)]
  ids, ends = verifier.attempt_tokens(task, codec, problem, texts, 5)
  prompt = codec.encode_prompt(task.revision_prompt(problem, texts[1:5]), False)
  assert ids == prompt + codec.encode(texts[5]) + [codec.eos_id]
  assert ends[-1] == len(ids) - 1
  assert context.context_attempts(texts[:5]) == texts[1:5]


def test_score_chains_scores_each_attempt_in_its_context(task):
  codec = workdir_lib.char_codec()
  problems = task.problems("train")[:2]
  chains = _chains(task, problems, length=3)
  model = reward_model.RewardModel(POLICY_CONFIG)
  params = partitioning.init_params(model, jax.random.key(0))
  params["params"]["value_head"]["kernel"] *= 100.0  # spread the scores
  scores = verifier.score_chains(model, params, task, codec, chains, batch_size=4)
  q, c, position = 1, 1, 2
  ids, _ = verifier.attempt_tokens(task, codec, problems[q], chains.texts(q, c), position)
  alone = scoring.score_sequences(model, params, np.asarray([ids], np.int32),
                                  np.asarray([len(ids)], np.int32))
  assert [len(chain) for chain in scores[0]] == [3, 3]
  assert scores[q][c][position] == pytest.approx(float(np.asarray(alone)[0, -1]), abs=1e-5)
  flat = [s for per_problem in scores for chain in per_problem for s in chain]
  assert all(0 < s < 1 for s in flat) and len(set(np.round(flat, 6))) > 1


def test_orm_labels_keep_each_attempt_with_its_prompt_and_train(task, tmp_path, monkeypatch):
  """label_revision_orm writes finished, answered attempts with the prompt they
  continued; train_orm reads those prompts and learns right from wrong."""
  write_policy_workdir(tmp_path / verifier.REVISION_MODEL)
  calls = []

  def fake_revise(policy, task_, problems, *, num_chains, chain_length, rng, **_):
    calls.append((len(problems), num_chains, chain_length))
    return _chains(task_, problems, length=chain_length)

  monkeypatch.setattr(chains_lib, "revise", fake_revise)
  summary = verifier.label_revision_orm(str(tmp_path), task=TASK, num_chains=2,
                                        chain_length=6, questions_per_chunk=5)
  assert calls == [(5, 2, 6), (5, 2, 6), (5, 2, 6), (1, 2, 6)]
  records = labeling.read_labels(summary["path"])
  assert len(records) == 16 and summary["attempts"] == 16 * 11  # the unfinished one dropped
  assert summary["correct"] == pytest.approx(5 / 11)
  problem = task_lib.get(TASK).problems("train")[0]
  by_uid = {r["uid"]: r for r in records}
  sample = by_uid[problem.uid]["samples"][3]  # chain 0, position 3
  texts = _chains(task, [problem]).texts(0, 0)
  assert (sample["chain"], sample["position"]) == (0, 3)
  assert sample["prompt"] == context.revision_prompt(task, problem, texts[:3])
  assert sample["correct"] is True and set(sample["soft"]) == {1.0}
  settings = json.loads((tmp_path / "revision_orm_labels.settings.json").read_text())
  assert settings["policy"] == str(tmp_path / verifier.REVISION_MODEL)
  # A rerun finds every question done: nothing sampled.
  verifier.label_revision_orm(str(tmp_path), task=TASK, num_chains=2, chain_length=6,
                              questions_per_chunk=5)
  assert len(calls) == 4
  with pytest.raises(UserError, match="other settings"):
    verifier.label_revision_orm(str(tmp_path), task=TASK, num_chains=3, chain_length=6)

  name = labeling.register_prm_labels_task("revision_orm_test", summary["path"], 20)
  examples = reward_training.load_examples(
      name, "train", "orm", reward_training.RewardTraining(max_length=512), task,
      workdir_lib.char_codec())
  codec = workdir_lib.char_codec()
  prompts = {codec.decode(examples.tokens_MxL[m, 1:examples.lengths_M[m]])
             for m in range(len(examples))}
  assert any(p.startswith(sample["prompt"] + sample["text"]) for p in prompts)

  out = reward_training.train_orm(
      str(tmp_path), task=TASK, labels_file="revision_orm_labels.jsonl",
      output_dir="revision_orm",
      training=reward_training.RewardTraining(
          num_steps=100, batch_size=16, learning_rate=1e-2, warmup_steps=2, dropout_rate=0.0,
          eval_every=25, patience=3, validation_percent=20, max_length=512))
  assert out["best_val_loss"] < 0.3, out
