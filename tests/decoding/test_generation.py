"""Tests for ttc/decoding/generation.py: the one text-generation driver of the stages."""

import jax
import numpy as np
import pytest

from ttc import workdir
from ttc.decoding import generation, samplers, sampling
from tests.verifiers.conftest import write_policy_workdir

EOS, STOP = 1, 7


class _Recorder:
  """Stands in for `sampling.sample_prompts`: row r of a call writes ids 10 + r, then ends
  by EOS, a stop id, or running out of tokens (r % 3 = 0, 1, 2)."""

  def __init__(self):
    self.calls = []

  def __call__(self, model, params, prompts, rng, sampler, *, num_samples, max_new_tokens,
               eos_id, stop_ids=(), **_):
    self.calls.append((len(prompts), np.asarray(jax.random.key_data(rng)).tolist(), stop_ids))
    rows = len(prompts) * num_samples
    tokens = np.zeros((rows, max_new_tokens), np.int32)
    lengths, reasons = [], []
    for r in range(rows):
      kind = r % 3
      body = [10 + r] * (max_new_tokens - 1 if kind == 2 else 2)
      ids = body + ([eos_id] if kind == 0 else [STOP] if kind == 1 else [10 + r])
      tokens[r, :len(ids)] = ids
      lengths.append(len(ids))
      reasons.append((sampling.StopReason.EOS, sampling.StopReason.STOP_TOKEN,
                      sampling.StopReason.MAX_NEW_TOKENS)[kind])
    return sampling.Samples(tokens_BxG=tokens, logprobs_BxG=np.zeros(tokens.shape, np.float32),
                            lengths_B=np.asarray(lengths, np.int32),
                            stop_reason_B=np.asarray(reasons, np.int32))


def _policy():
  codec = workdir.Codec(encode_prompt=lambda t, c: [], encode=lambda t: [],
                        decode=lambda ids: ",".join(map(str, ids)), eos_id=EOS)
  return workdir.Policy(model=None, params=None, codec=codec, source="fake", kind="fake")


def test_batches_prompts_strips_stop_tokens_and_counts_tokens(monkeypatch):
  recorder = _Recorder()
  monkeypatch.setattr(sampling, "sample_prompts", recorder)
  rng = jax.random.key(3)
  out = generation.generate_texts(_policy(), [[1]] * 5, rng, samplers.Greedy(), num_samples=2,
                                  max_new_tokens=4, prompts_per_call=2, stop_ids=(STOP,))
  # Calls of 2, 2 and 1 prompts, each with its own key fold_in(rng, call).
  assert [c[0] for c in recorder.calls] == [2, 2, 1]
  assert [c[1] for c in recorder.calls] == [
      np.asarray(jax.random.key_data(jax.random.fold_in(rng, i))).tolist() for i in range(3)]
  assert all(c[2] == (STOP,) for c in recorder.calls)
  assert len(out.texts) == len(out.finished) == 10
  # Row 0 of a call ended at EOS, row 1 at the stop id (both dropped), row 2 ran out.
  assert out.texts[:3] == ["10,10", "11,11", "12,12,12,12"]
  assert out.finished[:3] == [True, True, False]
  assert out.num_tokens == 2 * (3 + 3 + 4 + 3) + (3 + 3)  # calls of 4, 4 and 2 rows
  assert out.per_prompt(1, 2) == (out.texts[2:4], out.finished[2:4])


@pytest.fixture(scope="module")
def random_policy(tmp_path_factory):
  path = write_policy_workdir(tmp_path_factory.mktemp("gen") / "work")
  with workdir.device_context() as devices:
    yield workdir.load_policy(str(path), devices)


def test_real_policy_greedy_rows_agree_and_match_sample_n(random_policy):
  prompts = [random_policy.codec.encode_prompt(q, False) for q in ("1+2\n", "3*4-5\n")]
  out = generation.generate_texts(random_policy, prompts, jax.random.key(0), samplers.Greedy(),
                                  num_samples=2, max_new_tokens=6, prompts_per_call=2)
  assert out.texts[0] == out.texts[1] and out.texts[2] == out.texts[3]  # greedy
  direct = sampling.sample_prompts(random_policy.model, random_policy.params, prompts,
                                   jax.random.key(0), samplers.Greedy(), num_samples=1,
                                   max_new_tokens=6, eos_id=random_policy.codec.eos_id)
  for q in range(2):
    n = int(direct.lengths_B[q])
    stopped = int(direct.stop_reason_B[q]) == sampling.StopReason.EOS
    ids = np.asarray(direct.tokens_BxG[q, :n - stopped]).tolist()
    assert out.texts[2 * q] == random_policy.codec.decode(ids)
