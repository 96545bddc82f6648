"""Shared helpers of the checkpoint parity tests: logits and greedy decoding, ttc and torch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ttc.decoding import samplers, sampling
from ttc.models.kv_cache import EMPTY_POSITION
from ttc.models.transformer import Transformer


def pad_prompts(prompts, num_new):
  """([B, L] int32 right-padded buffer, [B] lengths) with room for num_new tokens."""
  width = max(len(p) for p in prompts) + num_new
  buf = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    buf[row, :len(p)] = p
  return buf, np.array([len(p) for p in prompts], np.int32)


def ttc_logits(config, params, tokens_BxT):
  """[B, T, V] float32 logits of a full forward pass (positions 0..T-1)."""
  return np.asarray(_forward(config, params, jnp.asarray(tokens_BxT)))


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens_BxT):
  positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32),
                                   tokens_BxT.shape)
  return Transformer(config).apply(params, tokens_BxT, positions_BxT)[0]


def left_pad(prompts):
  """([B, P] tokens, [B, P] positions) with prompts left-padded; pads get position -1."""
  width = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), width), np.int32)
  positions = np.full((len(prompts), width), EMPTY_POSITION, np.int32)
  for row, p in enumerate(prompts):
    tokens[row, width - len(p):] = p
    positions[row, width - len(p):] = np.arange(len(p))
  return tokens, positions


def ttc_greedy(config, params, prompts, num_new):
  """Greedy continuations [B, num_new] of each prompt (lists of ids), by `sampling.sample`.

  One prefill of the left-padded prompts, then one token per row per step, through
  the CPU kernels where they run (several rows: packed weights too).
  """
  tokens, lengths = sampling.left_pad(prompts, max(len(p) for p in prompts))
  samples = sampling.sample(Transformer(config), params, tokens, lengths, jax.random.key(0),
                            samplers.Greedy(), max_new_tokens=num_new, eos_id=-1)
  return np.asarray(samples.tokens_BxG)


def torch_greedy(model, prompts, num_new):
  """The same greedy decoding on a transformers causal LM (attention mask for the pads)."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens, positions = (torch.from_numpy(a).long() for a in left_pad(prompts))
  mask = (positions >= 0).long()
  next_pos = positions.max(dim=1).values + 1
  new = []
  with torch.no_grad():
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions.clamp(min=0),
                use_cache=True)
    for i in range(num_new):
      new.append(out.logits[:, -1].argmax(-1))
      mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
      out = model(input_ids=new[-1][:, None], attention_mask=mask,
                  position_ids=(next_pos + i)[:, None], past_key_values=out.past_key_values,
                  use_cache=True)
  return torch.stack(new, dim=1).numpy()


def torch_logits(model, tokens_BxT):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens_BxT)).long()).logits.float().numpy()
