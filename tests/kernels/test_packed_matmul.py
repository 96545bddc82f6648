"""The packed-weight CPU matmul, and decoding with weights packed by the model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.kernels import cpu_library, matmul_choice, packed_matmul
from ttc.models import quantization
from ttc.models.config import ModelConfig
from ttc.models.transformer import PACKED, Transformer
from ttc import partitioning


def _runs_here(name):
  return pytest.mark.skipif(not packed_matmul.runs_here(name),
                            reason=f"this CPU lacks {packed_matmul.FORMATS[name].cpu_flags}")


FORMATS = [pytest.param(name, marks=_runs_here(name)) for name in packed_matmul.FORMATS]
FLOAT32_FORMATS = [pytest.param(name, marks=_runs_here(name))
                   for name in packed_matmul.FLOAT32_FORMATS]


def _reference_panels(w, fmt):
  """The documented layout, built with numpy."""
  k, n = w.shape
  c = fmt.columns
  padded = np.pad(w, ((0, k % 2 if fmt.dtype == jnp.bfloat16 else 0), (0, -n % c)))
  panels = padded.reshape(padded.shape[0], padded.shape[1] // c, c).transpose(1, 0, 2)  # [J, K, C]
  if fmt.dtype == jnp.bfloat16:  # [J, K / 2, 2, C] -> [J, K / 2, C, 2]
    panels = panels.reshape(panels.shape[0], panels.shape[1] // 2, 2, c).transpose(0, 1, 3, 2)
    return np.asarray(jnp.asarray(panels).astype(jnp.bfloat16))
  return panels


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("m,k,n", [
    (1, 64, 16),  # one row
    (7, 3, 20),  # a partial tile of rows, a padded panel and (bfloat16) an odd K
    (64, 576, 48),  # decode rows of SmolLM2's width
    (200, 33, 37),  # several blocks of rows, the last one partial
    (5, 0, 16),  # an empty sum
])
def test_matmul_of_packed_weights_is_x_at_w(name, m, k, n):
  assert cpu_library.available()  # this machine has a compiler: the kernels must build
  fmt = packed_matmul.FORMATS[name]
  rng = np.random.default_rng(m + k + n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  with packed_matmul.packing(name):
    panels = packed_matmul.pack(w)
    transposed = packed_matmul.pack(w.T.copy(), transposed=True)
  assert packed_matmul.format_of(panels) == fmt
  np.testing.assert_array_equal(panels, _reference_panels(w, fmt))
  np.testing.assert_array_equal(transposed, panels)
  got = jax.jit(packed_matmul.matmul, static_argnums=2)(x, panels, n)
  if fmt.dtype == jnp.bfloat16:  # the kernel's contract: exact products of rounded operands
    rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))
    x, w = rounded(x), rounded(w)
  # Every CPU sums in the kernel's own order (k in sequence, 8- or 16-lane vectors over n,
  # pairs of k for bfloat16; FMA on any AVX2, AVX-512 or ARM CPU): a random walk of
  # ~u*k/sqrt(6) = 1.4e-5 at k = 576, 4.9e-5 at worst over its 3,072 outputs, so 1e-4 holds
  # anywhere.
  np.testing.assert_allclose(got, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)


def test_a_format_runs_only_with_its_instructions_and_its_kernels_built(monkeypatch):
  monkeypatch.setattr(cpu_library, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
  built = cpu_library.avx512_kernels_built()  # x86-64 and GCC: True on the development machines
  assert packed_matmul.runs_here("packed")
  assert packed_matmul.runs_here("packed_avx512") == built
  assert not packed_matmul.runs_here("packed_avx512_bf16")  # no avx512_bf16 flag
  monkeypatch.setattr(cpu_library, "avx512_kernels_built", lambda: False)
  assert packed_matmul.runs_here("packed") and not packed_matmul.runs_here("packed_avx512")


def _model(**overrides):
  config = ModelConfig(**{**dict(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4,
                                 num_kv_heads=2, head_dim=8, mlp_dim=48), **overrides})
  model = Transformer(config)
  return model, partitioning.init_params(model, jax.random.key(0))


def _pack(model, params):
  return model.apply(params, method=Transformer.pack_weights, mutable=[PACKED])[1]


@pytest.mark.parametrize("overrides", [
    dict(tied_embeddings=True),  # the output projection from the embedding (SmolLM2)
    dict(qkv_bias=True),  # untied lm_head and biases (Qwen2)
    # k and v of 8 columns and gate, up of 40: parts padded to whole panels inside the fused ones
    dict(qkv_bias=True, num_kv_heads=1, mlp_dim=40),
])
@pytest.mark.parametrize("name", FLOAT32_FORMATS)
def test_forward_with_packed_weights_matches_xla_dot(overrides, name):
  model, params = _model(**overrides)
  with packed_matmul.packing(name):
    packed = _pack(model, params)
  fmt = packed_matmul.FORMATS[name]
  leaves = jax.tree_util.tree_leaves_with_path(packed)
  names = {jax.tree_util.keystr(path) for path, _ in leaves}
  # A layer packs q|k|v, o, gate|up and down: 4 panel sets, each part padded on its own.
  cfg = model.config
  panels_of = lambda n: -(-n // fmt.columns)
  fused = {"qkv_proj": panels_of(cfg.num_heads * cfg.head_dim)
                       + 2 * panels_of(cfg.num_kv_heads * cfg.head_dim),
           "gate_up_proj": 2 * panels_of(cfg.mlp_dim)}
  for name, num_panels in fused.items():
    shapes = [leaf.shape for path, leaf in leaves if name in jax.tree_util.keystr(path)]
    assert shapes == [(num_panels, cfg.embed_dim, fmt.columns)] * cfg.num_layers
  num_dense = 4 * cfg.num_layers + (0 if overrides.get("tied_embeddings") else 1)
  assert len(leaves) == num_dense + overrides.get("tied_embeddings", 0)
  assert any("attend" in name for name in names) == bool(overrides.get("tied_embeddings"))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 5)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(5), (3, 5))
  forward = jax.jit(lambda variables: model.apply(variables, tokens, positions)[0])
  assert fmt.matmul_target in forward.lower({**params, **packed}).as_text()
  packed_variables = {**params, **packed}  # packed once, e.g. before a search's loops
  assert sampling.with_packed_weights(model, packed_variables, rows=8) is packed_variables
  np.testing.assert_allclose(forward({**params, **packed}), forward(params), atol=2e-5)


@pytest.mark.parametrize("name", [
    pytest.param("packed_avx512_bf16", marks=_runs_here("packed_avx512_bf16"))])
@pytest.mark.parametrize("overrides", [dict(tied_embeddings=True),
                                       dict(qkv_bias=True, num_kv_heads=1, mlp_dim=40)])
def test_forward_with_bfloat16_panels_is_within_the_stated_tolerance(overrides, name):
  """bfloat16 panels round x and w of every matmul (relative 2^-9 each; products summed in
  float32). Stated tolerance: the logits within 3% of their spread (std) of float32's, on
  this 2-layer model (measured 0.6% and 1.1%). Deeper models compound it: SmolLM2-135M,
  4 x 32 positions, max |difference| 0.66 at a logit std of 4.7 (mean 0.065), KL 3.6e-4
  nats, the same top token at 97.7% of positions."""
  model, params = _model(**overrides)
  with packed_matmul.packing(name):
    packed = _pack(model, params)
  assert {leaf.dtype for leaf in jax.tree.leaves(packed)} == {jnp.dtype(jnp.bfloat16)}
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 5)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(5), (3, 5))
  forward = jax.jit(lambda variables: model.apply(variables, tokens, positions)[0])
  assert cpu_library.PACKED_MATMUL_BF16 in forward.lower({**params, **packed}).as_text()
  want, got = np.asarray(forward(params)), np.asarray(forward({**params, **packed}))
  difference = np.abs(got - want).max()
  assert 0 < difference <= 0.03 * want.std()


def test_nothing_is_packed_at_init_on_a_mesh_or_for_int8_weights():
  model, params = _model()
  assert PACKED not in model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32),
                                  jnp.zeros((1, 1), jnp.int32))
  with jax.set_mesh(partitioning.make_mesh(2, 2, 2)), nn.logical_axis_rules(
      partitioning.DEFAULT_RULES):
    assert not jax.tree.leaves(jax.jit(_pack, static_argnums=0)(model, params))
    assert sampling.with_packed_weights(model, params, rows=8) is params
  config, int8_params = quantization.quantize_params(model.config, params)
  assert not jax.tree.leaves(_pack(Transformer(config), int8_params))


@pytest.mark.parametrize("name", FLOAT32_FORMATS)
def test_sampling_packs_for_several_rows_and_gives_the_same_tokens(monkeypatch, name):
  """Every float32 choice of `matmul_choice` gives XLA's tokens, and logprobs within 1e-5."""
  model, params = _model(tied_embeddings=True)
  monkeypatch.setattr(matmul_choice, "decode_matmul", lambda: name)
  tokens, lengths = sampling.left_pad([[5, 6, 7, 8], [9, 10]], 4)
  target = packed_matmul.FORMATS[name].matmul_target

  def run(num_samples):
    jax.clear_caches()  # whether to pack is decided while tracing
    args = (model, params, tokens, lengths, jax.random.key(0), samplers.Greedy())
    kwargs = dict(num_samples=num_samples, max_new_tokens=10, eos_id=-1)
    program = sampling.sample_n.lower(*args, **kwargs).as_text()
    return target in program, sampling.sample_n(*args, **kwargs)

  packed, with_panels = run(3)
  monkeypatch.setattr(cpu_library, "cpu_kernel_enabled", lambda: False)
  not_packed, with_dot = run(3)
  assert packed and not not_packed
  np.testing.assert_array_equal(with_panels.tokens_BxG, with_dot.tokens_BxG)
  np.testing.assert_allclose(with_panels.logprobs_BxG, with_dot.logprobs_BxG, atol=1e-5)
  monkeypatch.undo()
  for choice in ("packed", "xla"):  # one row follows the choice like any other row count
    monkeypatch.setattr(matmul_choice, "decode_matmul", lambda choice=choice: choice)
    jax.clear_caches()
    one_row = sampling.sample_n.lower(model, params, tokens[:1], lengths[:1],
                                      jax.random.key(0), samplers.Greedy(), num_samples=1,
                                      max_new_tokens=4, eos_id=-1)
    assert (cpu_library.PACKED_MATMUL in one_row.as_text()) == (choice == "packed")
