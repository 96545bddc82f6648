"""AdamW with linear warmup and cosine decay (the schedule of t5x/MaxText recipes)."""

import gin
import jax
import optax


@gin.configurable
def make_optimizer(num_steps: int, learning_rate: float = 1e-3, warmup_steps: int = 100,
                   final_lr_fraction: float = 0.1, weight_decay: float = 0.1, b1: float = 0.9,
                   b2: float = 0.95, grad_clip_norm: float = 1.0):
  """Returns (optax transformation, schedule step -> learning rate)."""
  warmup_steps = min(warmup_steps, num_steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(num_steps, warmup_steps + 1), end_value=learning_rate * final_lr_fraction)
  chain = optax.chain(
      optax.clip_by_global_norm(grad_clip_norm),
      # Decay matrices only: norms' scales stay at their identity initialisation.
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                  mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)),
  )
  return chain, schedule
