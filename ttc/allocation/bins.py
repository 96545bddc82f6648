"""Difficulty bins: 5 quantile bins of a per-question statistic (paper §3.2).

Oracle bins rank questions by pass@1 estimated from many policy samples; predicted
bins by the mean final verifier score of the same samples (no answer key). Bin 1 is
the easiest (highest statistic), as the paper's level 1.

Bins hold equal counts (within one): a tied statistic, common for pass@1 of easy
questions, is split across bins by a fixed hash of the question's uid, so the split
is reproducible and unrelated to the order the task lists its questions in.
"""

import zlib
from typing import Mapping


def _tie_break(uid: str) -> int:
  return zlib.crc32(uid.encode())


def quantile_bins(values: Mapping[str, float], num_bins: int = 5) -> dict[str, int]:
  """{uid: bin in 1..num_bins}, bin 1 = the highest values; counts differ by at most 1.

  values: {uid: statistic}, higher = easier (pass@1, mean verifier score).
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  if len(values) < num_bins:
    raise ValueError(f"{len(values)} questions cannot fill {num_bins} bins")
  order = sorted(values, key=lambda uid: (-values[uid], _tie_break(uid), uid))
  n = len(order)
  # rank r goes to bin floor(r * num_bins / n) + 1: sizes are floor or ceil of n / num_bins.
  return {uid: rank * num_bins // n + 1 for rank, uid in enumerate(order)}


def halves(bins: Mapping[str, int], seed: int = 0) -> dict[str, int]:
  """{uid: 0 or 1}: the two halves of the 2-fold selection, balanced within each bin
  (each bin's questions, in a fixed hashed order, alternate between the halves)."""
  by_bin: dict[int, list[str]] = {}
  for uid, b in bins.items():
    by_bin.setdefault(b, []).append(uid)
  fold = {}
  for members in by_bin.values():
    members.sort(key=lambda uid: (zlib.crc32(f"{seed}:{uid}".encode()), uid))
    for i, uid in enumerate(members):
      fold[uid] = i % 2
  return fold
