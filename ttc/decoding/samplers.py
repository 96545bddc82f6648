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


def _chosen(logprobs_BxV, tokens_B):
  return jnp.take_along_axis(logprobs_BxV, tokens_B[:, None], axis=-1)[:, 0]


@flax.struct.dataclass
class Greedy:
  """Argmax. Its logprob is the model's own log-softmax at temperature 1.

  (The greedy "distribution" is a point mass, whose log-probability, 0, says
  nothing; the model's log-probability is what scoring and search need.)
  """

  def __call__(self, logits_BxV, rng):
    del rng
    tokens_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return tokens_B, _chosen(jax.nn.log_softmax(logits_BxV.astype(jnp.float32), -1), tokens_B)


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

  def log_probs(self, logits_BxV):
    """[B, V] float32 log-probabilities of the truncated, tempered distribution."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    temperature_Bx1 = _row_values(self.temperature)
    scaled_BxV = logits_BxV / jnp.where(temperature_Bx1 > 0, temperature_Bx1, 1.0)
    if self.top_k:
      kth_Bx1 = jax.lax.top_k(scaled_BxV, self.top_k)[0][:, -1:]
      scaled_BxV = jnp.where(scaled_BxV >= kth_Bx1, scaled_BxV, _MASKED)
    top_p_Bx1 = _row_values(self.top_p)
    scaled_BxV = jax.lax.cond(jnp.any(top_p_Bx1 < 1.0), _nucleus, lambda x, _: x, scaled_BxV,
                              top_p_Bx1)
    return jax.nn.log_softmax(scaled_BxV, axis=-1)

  def __call__(self, logits_BxV, rng):
    logprobs_BxV = self.log_probs(logits_BxV)
    sampled_B = jax.random.categorical(rng, logprobs_BxV, axis=-1)
    greedy_B = (_row_values(self.temperature) <= 0)[:, 0]
    tokens_B = jnp.where(greedy_B, jnp.argmax(logits_BxV, axis=-1), sampled_B).astype(jnp.int32)
    model_logprobs_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    return tokens_B, jnp.where(greedy_B, _chosen(model_logprobs_BxV, tokens_B),
                               _chosen(logprobs_BxV, tokens_B))


def _nucleus(scaled_BxV, top_p_Bx1):
  """Masks tokens outside the top-p nucleus. The most likely token always stays."""
  sorted_BxV = jnp.sort(scaled_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  # The smallest kept logit: the last sorted one whose preceding mass is < top_p.
  keep_BxV = mass_before_BxV < top_p_Bx1
  threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(scaled_BxV >= threshold_Bx1, scaled_BxV, _MASKED)


Sampler = Greedy | Temperature


def as_sampler(sampler_or_temperature) -> Sampler:
  """A sampler, or a temperature (float / scalar array; 0 = greedy) as `Temperature`."""
  if isinstance(sampler_or_temperature, (Greedy, Temperature)):
    return sampler_or_temperature
  return Temperature(temperature=sampler_or_temperature)
