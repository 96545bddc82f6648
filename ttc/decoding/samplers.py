"""Token samplers: frozen, hashable dataclasses mapping logits to one token per row.

A sampler is a pytree (`flax.struct.dataclass`): values that change from call to call
(temperature, top_p) are leaves, so a jitted sampling loop traces them and a new
value does not recompile; values that change the program (top_k, which fixes the
shape of `lax.top_k`) are static fields and part of the tree structure. Switching
sampler class (Greedy -> Temperature) recompiles, as it should.

Every sampler is called as `sampler(logits_BxV, rng) -> (tokens_B, logprobs_B)`:
tokens_B int32, logprobs_B float32 natural-log probability of each chosen token.
"""

import flax.struct
import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite, so a row with every logit masked cannot turn into NaN


def _row_values(value):
  """A scalar or [B] per-row value as a [B or 1, 1] float32 column."""
  return jnp.asarray(value, jnp.float32).reshape(-1, 1)


def _chosen_logprob(logits_BxV, tokens_B, log_normaliser_B=None, divisor_Bx1=1.0):
  """[B] log softmax(logits / divisor)[b, tokens[b]], without materialising the [B, V]
  log-softmax.

  log_normaliser_B: logsumexp(logits / divisor) per row when the caller already has it.
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  chosen_Bx1 = jnp.take_along_axis(logits_BxV, tokens_B[:, None], axis=-1) / divisor_Bx1
  if log_normaliser_B is None:
    log_normaliser_B = jax.nn.logsumexp(logits_BxV / divisor_Bx1, axis=-1)
  return chosen_Bx1[:, 0] - log_normaliser_B


_CDF_BLOCK = 256  # vocabulary entries per block of the two-level inverse CDF


def categorical(rng, logits_BxV):
  """[B] int32: one draw per row from softmax(logits_BxV), by inverting its CDF.

  Why not `jax.random.categorical`: Gumbel-max draws V random numbers per row and
  takes two logs of each; for 64 rows of SmolLM2's 49,152 logits that took ~100 ms
  of a ~390 ms decode step on this project's 2-core CPU. Inverting the CDF needs one
  uniform per row and one exp pass. The CDF is two-level (block masses, then the
  chosen block's entries) so each float32 running sum is short: it stays cheap and
  its rounding error small. Entries of zero weight (logits masked to -1e30) are
  never chosen.
  """
  return _inverse_cdf(rng, logits_BxV)[0]


def _inverse_cdf(rng, logits_BxV, divisor_Bx1=1.0, threshold_Bx1=None):
  """`categorical` of logits / divisor, and [B] float32 logsumexp(logits / divisor) from
  the same exp pass. threshold_Bx1: entries whose logits / divisor are below it get no
  weight (truncation: top-k, top-p); never above a row's largest.

  The log-normaliser gives the chosen token's logprob without another two passes
  over the vocabulary (max, then sum of exp); at 64 rows x 49,152 logits each pass
  took about 1 ms of a SmolLM2 decode step of about 250 ms on the 2-core CPU. For
  the same reason the temperature's divisor (> 0) is applied inside the exp pass,
  not as a pass of its own: the max of logits / divisor is max(logits) / divisor
  exactly (division by a positive number keeps the order, rounding included).
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  batch, vocab = logits_BxV.shape
  num_blocks = -(-vocab // _CDF_BLOCK)
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True) / divisor_Bx1
  exponents_BxV = logits_BxV / divisor_Bx1 - max_Bx1
  if threshold_Bx1 is not None:  # before the exp: XLA fuses it into the exp's pass
    exponents_BxV = jnp.where(logits_BxV / divisor_Bx1 >= threshold_Bx1, exponents_BxV, -jnp.inf)
  weights_BxV = jnp.exp(exponents_BxV)
  weights_BxNxK = jnp.pad(weights_BxV, ((0, 0), (0, num_blocks * _CDF_BLOCK - vocab))).reshape(
      batch, num_blocks, _CDF_BLOCK)
  block_mass_BxN = jnp.sum(weights_BxNxK, axis=-1)
  block_cdf_BxN = jnp.cumsum(block_mass_BxN, axis=-1)
  target_B = jax.random.uniform(rng, (batch,)) * block_cdf_BxN[:, -1]
  block_B = _first_above(block_cdf_BxN, block_mass_BxN, target_B)
  mass_before_B = jnp.where(
      block_B > 0, jnp.take_along_axis(block_cdf_BxN, jnp.maximum(block_B - 1, 0)[:, None],
                                       axis=-1)[:, 0], 0.0)
  block_weights_BxK = jnp.take_along_axis(weights_BxNxK, block_B[:, None, None], axis=1)[:, 0]
  entry_B = _first_above(jnp.cumsum(block_weights_BxK, axis=-1), block_weights_BxK,
                         target_B - mass_before_B)
  tokens_B = (block_B * _CDF_BLOCK + entry_B).astype(jnp.int32)
  return tokens_B, max_Bx1[:, 0] + jnp.log(block_cdf_BxN[:, -1])


def _first_above(cdf_BxK, weights_BxK, target_B):
  """The first index whose running sum exceeds target; rounding past the end falls
  back to the last index of non-zero weight."""
  first_B = jnp.sum(cdf_BxK <= target_B[:, None], axis=-1)
  index_K = jnp.arange(cdf_BxK.shape[-1])
  last_B = jnp.max(jnp.where(weights_BxK > 0, index_K, 0), axis=-1)
  return jnp.minimum(first_B, last_B)


@flax.struct.dataclass
class Greedy:
  """Argmax. Its logprob is the model's own log-softmax at temperature 1.

  (The greedy "distribution" is a point mass, whose log-probability, 0, says
  nothing; the model's log-probability is what scoring and search need.)
  """

  def __call__(self, logits_BxV, rng):
    del rng
    tokens_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return tokens_B, _chosen_logprob(logits_BxV, tokens_B)


@flax.struct.dataclass
class Temperature:
  """Ancestral sampling from softmax(logits / temperature), optionally truncated.

  Attributes:
    temperature: float scalar or [B] per-row array; <= 0 means greedy (argmax, logprob
      as `Greedy`), so a temperature sweep through 0 reuses one compiled program.
    top_k: static int; keep only the k largest logits (0 = keep all; ties at the k-th
      value are all kept).
    top_p: float scalar or [B]; keep the smallest set of most likely tokens whose
      probability reaches top_p (nucleus sampling; 1.0 = keep all). The vocabulary sort
      it needs runs only when some row asks for top_p < 1.
  The logprob is that of the chosen token under the distribution actually sampled
  (scaled and truncated).
  """

  temperature: jax.Array | float = 1.0
  top_k: int = flax.struct.field(pytree_node=False, default=0)
  top_p: jax.Array | float = 1.0

  def __post_init__(self):
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be a non-negative int, got {self.top_k!r}")

  def _threshold(self, logits_BxV, divisor_Bx1):
    """[B, 1] float32: the smallest tempered logit (logits / divisor) top-k and the top-p
    nucleus keep; -inf keeps all. A threshold, not masked logits: `_inverse_cdf` applies
    it in its exp pass, where masking the [B, V] logits was a pass of its own (and a
    copy of them where no row truncates)."""
    batch = logits_BxV.shape[0]
    top_p_Bx1 = _row_values(self.top_p)

    def kept(logits_BxV):
      """(tempered logits, with those below the k-th masked; the k-th, or -inf)."""
      scaled_BxV = logits_BxV / divisor_Bx1
      if not self.top_k:
        return scaled_BxV, jnp.full((batch, 1), -jnp.inf)
      kth_Bx1 = jax.lax.top_k(scaled_BxV, self.top_k)[0][:, -1:]
      return jnp.where(scaled_BxV >= kth_Bx1, scaled_BxV, _MASKED), kth_Bx1

    def nucleus(logits_BxV):
      scaled_BxV, kth_Bx1 = kept(logits_BxV)
      return jnp.maximum(kth_Bx1, _nucleus_threshold(scaled_BxV, top_p_Bx1))

    return jax.lax.cond(jnp.any(top_p_Bx1 < 1.0), nucleus, lambda x: kept(x)[1], logits_BxV)

  def __call__(self, logits_BxV, rng):
    logits_BxV = logits_BxV.astype(jnp.float32)
    temperature_Bx1 = _row_values(self.temperature)
    divisor_Bx1 = jnp.where(temperature_Bx1 > 0, temperature_Bx1, 1.0)
    sampled_B, log_normaliser_B = _inverse_cdf(rng, logits_BxV, divisor_Bx1,
                                               self._threshold(logits_BxV, divisor_Bx1))
    greedy_B = jnp.broadcast_to((temperature_Bx1 <= 0)[:, 0], sampled_B.shape)

    # A sampled token is never a masked one, so its tempered logit is logits / divisor.
    sampled_logprob = lambda tokens_B: _chosen_logprob(logits_BxV, tokens_B, log_normaliser_B,
                                                       divisor_Bx1)
    def with_greedy_rows():
      # Greedy rows report the model's own logprob, the others the sampled distribution's.
      tokens_B = jnp.where(greedy_B, jnp.argmax(logits_BxV, axis=-1), sampled_B).astype(jnp.int32)
      return tokens_B, jnp.where(greedy_B, _chosen_logprob(logits_BxV, tokens_B),
                                 sampled_logprob(tokens_B))

    # The argmax pass over the vocabulary runs only when some row is greedy.
    return jax.lax.cond(jnp.any(greedy_B), with_greedy_rows,
                        lambda: (sampled_B, sampled_logprob(sampled_B)))


def _nucleus_threshold(scaled_BxV, top_p_Bx1):
  """[B, 1] the smallest logit of the top-p nucleus: tokens at or above it are kept. The
  most likely token always is."""
  sorted_BxV = jnp.sort(scaled_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  # The smallest kept logit: the last sorted one whose preceding mass is < top_p.
  keep_BxV = (mass_before_BxV < top_p_Bx1).at[:, 0].set(True)
  return jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)


Sampler = Greedy | Temperature


def as_sampler(sampler_or_temperature) -> Sampler:
  """A sampler, or a temperature (float / scalar array; 0 = greedy) as `Temperature`."""
  if isinstance(sampler_or_temperature, (Greedy, Temperature)):
    return sampler_or_temperature
  return Temperature(temperature=sampler_or_temperature)
