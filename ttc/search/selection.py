"""Which rows survive a search round, and how many times each is forked.

One rule covers beam search, DVTS and best-of-N (paper §5.2):

  Rows of a problem form groups of `group_size` rows (one group of N for beam
  search, N / M groups of M for DVTS). Finished rows keep their slot: they are
  final candidates. The A unfinished slots of a group are refilled with the group's
  ceil(A / expand) best unfinished rows, each copied `expand` times (the last one
  fewer if A is not a multiple), best first.

With A = N and expand = M this is "keep the top N/M, expand each M ways"; with
group_size = expand = M it is DVTS's greedy choice within each subtree.
"""

import jax.numpy as jnp


def select_parents(value_QxN, alive_QxN, *, group_size: int, expand: int):
  """[Q, N] int32 parent of each row, an index within its problem's N rows.

  value_QxN: float how good each row's latest step is (PRM score, or lookahead value).
  alive_QxN: bool the row can still grow (not finished).
  Ties go to the lower row index.
  """
  num_problems, num_rows = value_QxN.shape
  if num_rows % group_size or not 1 <= expand <= group_size:
    raise ValueError(f"need group_size | N and 1 <= expand <= group_size; got N={num_rows}, "
                     f"group_size={group_size}, expand={expand}")
  shape = (num_problems, num_rows // group_size, group_size)
  value = value_QxN.reshape(shape)
  alive = alive_QxN.reshape(shape)
  # Unfinished rows first, best first; stable, so ties keep row order.
  ranked = jnp.argsort(jnp.where(alive, -value, jnp.inf), axis=-1, stable=True)
  slot_rank = jnp.maximum(jnp.cumsum(alive, axis=-1) - 1, 0)  # j for the j-th unfinished slot
  source = jnp.take_along_axis(ranked, slot_rank // expand, axis=-1)
  within = jnp.where(alive, source, jnp.arange(group_size))
  group_start = (jnp.arange(shape[1]) * group_size)[None, :, None]
  return (within + group_start).reshape(num_problems, num_rows).astype(jnp.int32)
