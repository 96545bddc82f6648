"""The one text-generation driver of the stages: many prompts, N samples each, as text.

Stages that sample whole solutions (evaluate, label_prm, evaluate_verifiers, the CLI)
call `generate_texts`; it batches prompts into calls of `sampling.sample_prompts`
(one shared prefix cache per prompt, shapes bucketed to powers of two) and decodes
the rows with the policy's codec.
"""

import dataclasses
from typing import Sequence

import jax
import numpy as np
import tqdm

from ttc.decoding import samplers, sampling


@dataclasses.dataclass
class Generations:
  """Prompt-major rows: `num_samples` consecutive rows per prompt.

  texts: the generated text of each row, without its stop token.
  finished: the row stopped at EOS or a stop id (False: it ran out of tokens).
  num_tokens: tokens generated over all rows, stop tokens included.
  """

  texts: list[str]
  finished: list[bool]
  num_tokens: int

  def per_prompt(self, q: int, num_samples: int) -> tuple[list[str], list[bool]]:
    rows = slice(q * num_samples, (q + 1) * num_samples)
    return self.texts[rows], self.finished[rows]


def decode_rows(codec, samples: sampling.Samples) -> tuple[list[str], list[bool], list[int]]:
  """Per row of `samples`: (its text without the stop token, whether it stopped at EOS
  or a stop id rather than running out of tokens, tokens generated with the stop)."""
  tokens_BxG, lengths_B = np.asarray(samples.tokens_BxG), np.asarray(samples.lengths_B)
  stopped_B = np.isin(np.asarray(samples.stop_reason_B),
                      (sampling.StopReason.EOS, sampling.StopReason.STOP_TOKEN))
  texts = [codec.decode(row[:n - int(stop)].tolist())
           for row, n, stop in zip(tokens_BxG, lengths_B, stopped_B)]
  return texts, stopped_B.tolist(), lengths_B.tolist()


def generate_texts(policy, prompts: Sequence[Sequence[int]], rng, sampler: samplers.Sampler, *,
                   num_samples: int, max_new_tokens: int, prompts_per_call: int,
                   stop_ids: tuple[int, ...] = (), progress: str = "") -> Generations:
  """`num_samples` continuations of each prompt (token ids), in calls of `prompts_per_call`.

  policy: a `ttc.workdir.Policy` (model, params, codec). Call c draws from
  fold_in(rng, c), so the result depends only on the prompts, their order, the rng
  and `prompts_per_call`. `stop_ids`: ids besides the codec's EOS that end a row
  (e.g. a chat end-of-turn). `progress`: a tqdm label, or "" for no bar.
  """
  codec = policy.codec
  texts, finished, num_tokens = [], [], 0
  prompts_per_call = max(1, prompts_per_call)
  starts = range(0, len(prompts), prompts_per_call)
  for call, start in enumerate(tqdm.tqdm(starts, desc=progress, disable=not progress or None)):
    out = sampling.sample_prompts(policy.model, policy.params,
                                  [list(p) for p in prompts[start:start + prompts_per_call]],
                                  jax.random.fold_in(rng, call), sampler,
                                  num_samples=num_samples, max_new_tokens=max_new_tokens,
                                  eos_id=codec.eos_id, stop_ids=tuple(stop_ids))
    call_texts, call_finished, lengths = decode_rows(codec, out)
    texts += call_texts
    finished += call_finished
    num_tokens += sum(lengths)
  return Generations(texts, finished, num_tokens)
