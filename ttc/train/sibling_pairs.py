"""Sibling pairs for the PRM's ranking loss: two distinct next steps of one prefix.

Beam search, lookahead and DVTS only ever compare the candidate next steps of one
prefix. The per-step cross-entropy of `reward_training` mostly rewards knowing how hard
a question is (the labels of a question's steps move together), and a PRM trained on it
alone ranked siblings at chance (within-sibling AUROC 0.49, issue 18) while its labels
rank them at 0.89. `RewardTraining.sibling_weight` adds a Bradley-Terry loss on the
pairs found here, which scores exactly the difference selection uses. On the paper
labels it did not lift the held-out sibling ranking of a policy-sized PRM in 300 steps
(issue 18); the policy's own step likelihood ranks siblings far better
(`selection.with_step_likelihood`).

Everything here is host-side numpy over `reward_training.Examples` arrays, except
`loss`, which runs inside the jitted training step.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Pairs:
  """P pairs of PRM targets: (row_a_P, slot_a_P) against (row_b_P, slot_b_P).

  Rows index the examples, slots their label columns (label_index_MxS). target_P
  (float32) is the probability that a ranks above b under the labels:
  0.5 + (label_a - label_b) / 2, never exactly 0.5 (pairs of equal labels are left out).
  """

  row_a_P: np.ndarray
  slot_a_P: np.ndarray
  row_b_P: np.ndarray
  slot_b_P: np.ndarray
  target_P: np.ndarray

  def __len__(self):
    return self.target_P.shape[0]


def find(tokens_MxL, label_index_MxS, label_MxS, weight_MxS, question_M) -> Pairs:
  """Every pair of distinct sibling steps whose labels differ, once per pair.

  Two steps are siblings if they belong to solutions of the same question
  (question_M, any int id), follow the same prefix tokens (prompt and earlier steps)
  and differ in their own tokens. A step repeated by several solutions is one
  candidate, represented by its first row, with the mean of its copies' labels.
  Arrays as in `reward_training.Examples`; the step of slot s spans the tokens after
  label_index[s - 1] up to and including label_index[s].
  """
  # {(question, prefix tokens): {step tokens: (row, slot, [labels])}}
  candidates: dict = {}
  for m in range(len(question_M)):
    begin = 0  # the first "step" carries the prompt too, which a question's rows share
    for s, end in enumerate(label_index_MxS[m][weight_MxS[m] > 0]):
      key = (int(question_M[m]), tokens_MxL[m, :begin].tobytes())
      step = tokens_MxL[m, begin:end + 1].tobytes()
      _, _, labels = candidates.setdefault(key, {}).setdefault(step, (m, s, []))
      labels.append(float(label_MxS[m, s]))
      begin = end + 1
  row_a, slot_a, row_b, slot_b, target = [], [], [], [], []
  for siblings in candidates.values():
    kids = [(m, s, float(np.mean(labels))) for m, s, labels in siblings.values()]
    for i, (ma, sa, ya) in enumerate(kids):
      for mb, sb, yb in kids[i + 1:]:
        if ya != yb:
          row_a.append(ma), slot_a.append(sa), row_b.append(mb), slot_b.append(sb)
          target.append(0.5 + (ya - yb) / 2)
  as_int = lambda x: np.asarray(x, np.int32)
  return Pairs(as_int(row_a), as_int(slot_a), as_int(row_b), as_int(slot_b),
               np.asarray(target, np.float32))


def in_batch(pairs: Pairs, rows_M: np.ndarray, num_examples: int, max_pairs: int) -> dict:
  """The pairs whose two rows are both in a batch, as batch arrays of fixed size.

  rows_M: the example indices of the batch (a repeated row counts at its first
  place). Returns int32 pair_a_P / pair_a_slot_P / pair_b_P / pair_b_slot_P (places in
  the batch), float32 pair_target_P and pair_weight_P (1 real, 0 padding), with
  P = max_pairs; pairs beyond max_pairs are dropped (the first ones are kept).
  """
  place = np.full(num_examples, -1, np.int64)
  distinct, first = np.unique(rows_M, return_index=True)
  place[distinct] = first
  a, b = place[pairs.row_a_P], place[pairs.row_b_P]
  kept = np.flatnonzero((a >= 0) & (b >= 0))[:max_pairs]
  n = len(kept)
  pad = lambda x, dtype: np.concatenate([np.asarray(x, dtype), np.zeros(max_pairs - n, dtype)])
  return {"pair_a_P": pad(a[kept], np.int32), "pair_a_slot_P": pad(pairs.slot_a_P[kept], np.int32),
          "pair_b_P": pad(b[kept], np.int32), "pair_b_slot_P": pad(pairs.slot_b_P[kept], np.int32),
          "pair_target_P": pad(pairs.target_P[kept], np.float32),
          "pair_weight_P": pad(np.ones(n), np.float32)}


def loss(logits_MxS, batch: dict):
  """(mean Bradley-Terry cross-entropy over the batch's pairs, number of pairs,
  number ranked the way their labels are).

  The PRM's score is sigmoid(logit), so the pair's probability that a ranks above b
  is sigmoid(logit_a - logit_b), fitted to pair_target_P.
  """
  a = logits_MxS[batch["pair_a_P"], batch["pair_a_slot_P"]]
  b = logits_MxS[batch["pair_b_P"], batch["pair_b_slot_P"]]
  weight = batch["pair_weight_P"]
  losses = optax.sigmoid_binary_cross_entropy(a - b, batch["pair_target_P"])
  count = weight.sum()
  right = ((a - b) * (batch["pair_target_P"] - 0.5) > 0) + 0.5 * (a == b)
  return ((losses * weight).sum() / jnp.maximum(count, 1.0), count, (right * weight).sum())
