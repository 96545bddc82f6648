"""Compute-optimal allocation (paper §3.2, §5–7): difficulty bins, per-bin selection of
the best test-time strategy, the efficiency ratio against best-of-N, FLOPs matching."""
