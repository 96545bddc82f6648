"""FLOPs matching (paper §7): test-time compute on a small model against a model M times
larger, at equal total (pretraining + inference) FLOPs.

With P parameters, pretraining costs 6·P·D_pretrain FLOPs and inference 2·P·D_inference
(D in tokens). A model of M·P parameters answering each question once costs
6·M·P·D_pretrain + 2·M·P·D_inference; the small model spends the same total if it
generates X times as many inference tokens, where

    X = M + 3 · (D_pretrain / D_inference) · (M - 1) = M + 3 · (M - 1) / R,

R = D_inference / D_pretrain. So X generations per question of the small model
(its compute-optimal accuracy at budget X) are compared with the large model's pass@1.
The paper's R: 0.16, 0.79 and 22 (inference-light to inference-heavy deployments).
"""

import math
from typing import Sequence

import numpy as np

PAPER_RATIOS = (0.16, 0.79, 22.0)  # R = D_inference / D_pretrain


def pretraining_flops(params: float, tokens: float) -> float:
  """6 · params · tokens (forward and backward over every pretraining token)."""
  return 6.0 * params * tokens


def inference_flops(params: float, tokens: float) -> float:
  """2 · params · tokens (one forward pass per token, the prefix shared once)."""
  return 2.0 * params * tokens


def matched_multiplier(m: float, r: float) -> float:
  """X = M + 3 (M - 1) / R: the small model's generations per question that cost what one
  generation of the M-times-larger model costs, pretraining included (module docstring)."""
  if m < 1 or r <= 0:
    raise ValueError(f"need M >= 1 and R > 0, got M={m}, R={r}")
  return m + 3.0 * (m - 1.0) / r


def accuracy_at(budgets: Sequence[int], accuracy: Sequence[float],
                budget: float) -> tuple[float, str]:
  """(accuracy, kind) of a curve at a budget between its measured ones, linear in
  log2(budget); kind "=" inside the range, "<" below the smallest (NaN: not measured),
  ">" past the largest (the largest budget's accuracy: a curve that was still rising
  would give more)."""
  if budget < budgets[0]:
    return float("nan"), "<"
  if budget > budgets[-1]:
    return float(accuracy[-1]), ">"
  return float(np.interp(math.log2(budget), np.log2(np.asarray(budgets, np.float64)),
                         np.asarray(accuracy, np.float64))), "="


def matched_table(budgets: Sequence[int], small_BxK: Sequence[Sequence[float]],
                  large_K: Sequence[float], m: float,
                  ratios: Sequence[float] = PAPER_RATIOS) -> list[dict]:
  """The paper's Fig. 9 as rows: per R and bin, the small model's accuracy at X(M, R)
  generations against the large model's pass@1.

  budgets: [B] the small model's curve budgets; small_BxK: [B][K] its accuracy per
  budget and bin (K bins, the last entry may be "all"); large_K: [K] the large model's
  pass@1 on the same questions per bin. Rows: {"R", "X", "bin" (1-based index into K),
  "small", "small_kind" (`accuracy_at`'s kind), "large", "small_minus_large"}.
  """
  small_KxB = np.asarray(small_BxK, np.float64).T
  rows = []
  for r in ratios:
    x = matched_multiplier(m, r)
    for k, (curve, large) in enumerate(zip(small_KxB, large_K), start=1):
      small, kind = accuracy_at(budgets, curve, x)
      rows.append({"R": r, "X": x, "bin": k, "small": small, "small_kind": kind,
                   "large": float(large), "small_minus_large": small - float(large)})
  return rows
