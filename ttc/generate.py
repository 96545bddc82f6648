"""Print continuations of prompts from any supported checkpoint, greedy or sampled.

    python -m ttc.generate --checkpoint "$(python -c 'from ttc.models import smollm2; \
        print(smollm2.gguf_path())')" --prompt "The capital of France is" --max_new_tokens 16

`--checkpoint` is a llama `.gguf` file, a Hugging Face directory (config.json, tokenizer.json,
*.safetensors), or a ttc work dir (model_config.json + checkpoints/, char vocabulary). All
prompts share one batch, left-padded to a bucketed length; `--num_samples` continuations of
each prompt share its prefilled cache (`sampling.sample_n`).

`--json` prints one line per prompt:
    {"prompt": str, "prompt_ids": [int], "generated_ids": [[int], ...], "texts": [str, ...]}
one generated_ids list and one text per sample, without padding and without the stop token
(EOS, or `<|im_end|>` under --chat). Bad input prints one `error:` line and exits 2.
"""

import argparse
import json
import os
import sys
from typing import Sequence

USAGE_EXAMPLE = 'python -m ttc.generate --checkpoint PATH --prompt "TEXT" [--prompt ...]'
EVAL_PROMPT_LENGTH = 32  # ttc work dirs: the prompt bucket their policies were trained with
MIN_BUCKET = 16  # smallest padded prompt length


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one `error:` line and exit 2, like the rest of ttc."""

  def error(self, message):
    print(f"error: {message} (usage: {USAGE_EXAMPLE}; see --help)", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = _Parser(prog="python -m ttc.generate", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="a .gguf file, an HF checkpoint directory, a ttc work dir, or 'smollm2'")
  p.add_argument("--prompt", action="append", required=True,
                 help="prompt text; repeat for several prompts (one batch)")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="0 = no top-k truncation")
  p.add_argument("--top_p", type=float, default=1.0, help="1 = no nucleus truncation")
  p.add_argument("--num_samples", type=int, default=1, help="continuations per prompt")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--chat", action="store_true",
                 help="wrap each prompt as one user message in the tokenizer's chat template")
  p.add_argument("--json", action="store_true", help="one JSON line per prompt")
  args = p.parse_args(argv)
  if args.max_new_tokens < 1:
    p.error(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
  if args.num_samples < 1:
    p.error(f"--num_samples must be >= 1, got {args.num_samples}")
  if args.temperature < 0:
    p.error(f"--temperature must be >= 0, got {args.temperature}")
  if args.top_k < 0:
    p.error(f"--top_k must be >= 0, got {args.top_k}")
  if not 0 < args.top_p <= 1:
    p.error(f"--top_p must be in (0, 1], got {args.top_p}")
  return args


def check_lengths(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                  checkpoint):
  """Raises a UserError if a prompt plus its generation does not fit the context of
  `checkpoint` (a `ttc.workdir.Checkpoint`)."""
  from ttc.errors import UserError
  context, source = checkpoint.context, checkpoint.context_source
  if checkpoint.kind == "workdir":  # no fixed context: the prompt bucket plus the generation
    context, source = EVAL_PROMPT_LENGTH + max_new_tokens, f"prompt bucket of {EVAL_PROMPT_LENGTH}"
  if context is None:
    return
  for i, ids in enumerate(prompt_ids):
    if len(ids) + max_new_tokens > context:
      raise UserError(
          f"prompt {i + 1} has {len(ids)} tokens; with --max_new_tokens {max_new_tokens} that "
          f"exceeds the model's context of {context} tokens ({source}); "
          "shorten the prompt or lower --max_new_tokens")


def generate(model, params, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             eos_id: int, stop_ids: tuple[int, ...] = (), temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0
             ) -> list[list[list[int]]]:
  """Continuations of Q prompts: [Q][num_samples][tokens], each without its stop token.

  The prompts are prefilled once, with their count and length padded to buckets.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from ttc.decoding import samplers, sampling

  if temperature == 0:
    sampler = samplers.Greedy()
  else:
    sampler = samplers.Temperature(temperature=jnp.float32(temperature), top_k=top_k,
                                   top_p=jnp.float32(top_p))
  out = sampling.sample_prompts(model, params, [list(p) for p in prompt_ids],
                                jax.random.key(seed), sampler, num_samples=num_samples,
                                max_new_tokens=max_new_tokens, eos_id=eos_id,
                                stop_ids=tuple(stop_ids), min_prompt_length=MIN_BUCKET)
  tokens_BxG = np.asarray(out.tokens_BxG)
  lengths_B = np.asarray(out.lengths_B)
  stopped_B = np.isin(np.asarray(out.stop_reason_B),
                      (sampling.StopReason.EOS, sampling.StopReason.STOP_TOKEN))
  rows = [tokens_BxG[b, :lengths_B[b] - int(stopped_B[b])].tolist()
          for b in range(tokens_BxG.shape[0])]
  # Rows are prompt-major: num_samples consecutive rows per prompt.
  return [rows[q * num_samples:(q + 1) * num_samples] for q in range(len(prompt_ids))]


def run(args: argparse.Namespace, out=sys.stdout):
  """Loads the checkpoint, generates, prints; raises UserError on bad input."""
  from ttc import workdir
  checkpoint = workdir.open_checkpoint(args.checkpoint)
  prompt_ids = [checkpoint.codec.encode_prompt(p, args.chat) for p in args.prompt]
  check_lengths(prompt_ids, args.max_new_tokens, checkpoint)  # Before minutes of loading.

  import jax
  with workdir.device_context(jax.devices()[:1]) as devices:
    model, params, _ = checkpoint.load_weights(devices.mesh, devices.rules)
    generated = generate(model, params, prompt_ids, max_new_tokens=args.max_new_tokens,
                         eos_id=checkpoint.codec.eos_id,
                         stop_ids=checkpoint.codec.stop_ids(args.chat),
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         num_samples=args.num_samples, seed=args.seed)

  for prompt, ids, samples in zip(args.prompt, prompt_ids, generated):
    texts = [checkpoint.codec.decode(s) for s in samples]
    if args.json:
      print(json.dumps({"prompt": prompt, "prompt_ids": ids, "generated_ids": samples,
                        "texts": texts}), file=out)
    else:
      print(f"=== prompt ({len(ids)} tokens): {prompt!r}", file=out)
      for i, text in enumerate(texts):
        if len(texts) > 1:
          print(f"--- sample {i + 1}/{len(texts)}", file=out)
        print(text, file=out)
  out.flush()


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # work dirs import seqio's TF
  from ttc.errors import UserError, report
  try:
    run(args)
  except UserError as e:
    return report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
