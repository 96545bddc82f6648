"""The gin driver, in t5x conventions.

    python -m ttc.main --gin_file=configs/arith/quickstart.gin \
        --gin.WORKDIR="'/tmp/arith'" --gin.train.num_steps=100

`--gin_file` and `--gin.NAME=VALUE` repeat; files are read first, then bindings in
order. `--gin_search_path` adds directories for `include` and relative gin files
(the repository root is always searched). The config runs `run.stages` in order,
each a gin configurable called with the work dir; the resolved config is written to
`<workdir>/config.gin` before and `<workdir>/operative_config.gin` after.
"""

import faulthandler
import os
import sys

USAGE = ("usage: python -m ttc.main --gin_file=FILE [--gin_file=FILE ...] "
         "[--gin.NAME=VALUE ...] [--gin_search_path=DIR ...]")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_flags(argv):
  """Returns (gin files, gin bindings, search paths); raises ValueError on a bad flag."""
  files, bindings, paths = [], [], []
  for arg in argv:
    if arg in ("-h", "--help"):
      raise SystemExit(USAGE)
    name, eq, value = arg.partition("=")
    if not eq:
      raise ValueError(f"flag {arg!r} has no value; {USAGE}")
    if name == "--gin_file":
      files.append(value)
    elif name == "--gin_search_path":
      paths.append(value)
    elif name == "--gin_bindings":
      bindings.append(value)
    elif name.startswith("--gin."):
      bindings.append(f"{name[len('--gin.'):]} = {value}")
    else:
      raise ValueError(f"unknown flag {name!r}; {USAGE}")
  if not files:
    raise ValueError(f"no --gin_file given; {USAGE}")
  return files, bindings, paths


def _import_configurables():
  # Importing registers every configurable a gin file may name.
  from ttc.data import task
  task.import_builtin_tasks()
  import ttc.allocation.compute_optimal  # noqa: F401
  import ttc.allocation.difficulty  # noqa: F401
  import ttc.allocation.report  # noqa: F401
  import ttc.evaluate  # noqa: F401
  import ttc.revision.data  # noqa: F401
  import ttc.revision.model  # noqa: F401
  import ttc.revision.report  # noqa: F401
  import ttc.revision.search_revise  # noqa: F401
  import ttc.revision.sweep  # noqa: F401
  import ttc.revision.verifier  # noqa: F401
  import ttc.search.report  # noqa: F401
  import ttc.search.sweep  # noqa: F401
  import ttc.train.reward_training  # noqa: F401
  import ttc.train.trainer  # noqa: F401
  import ttc.verifiers.evaluation  # noqa: F401
  import ttc.verifiers.labeling  # noqa: F401
  import ttc.stages  # noqa: F401


def _guard_gin_package_reader():
  """Makes gin's package-resource lookup answer "absent" for namespace packages.

  gin tries each relative config path (`configs/arith/base.gin`, also in `include`
  lines) as a file under the Python package `configs.arith`. With the repository on
  sys.path and the working directory elsewhere, `configs` is a namespace package with
  no origin, and gin's check raises TypeError before it reaches our search paths.
  """
  from gin import config as gin_config

  def guarded(exists):
    def exists_or_false(path):
      try:
        return exists(path)
      except TypeError:
        return False
    exists_or_false.guarded = True
    return exists_or_false

  gin_config._FILE_READERS[:] = [
      (read, exists if getattr(exists, "guarded", False) else guarded(exists))
      for read, exists in gin_config._FILE_READERS]


def parse_config(files, bindings, paths):
  import gin

  from ttc.errors import UserError
  _guard_gin_package_reader()
  for path in [REPO_ROOT, *paths]:
    gin.add_config_file_search_path(path)
  for f in files:
    if not any(os.path.exists(os.path.join(p, f)) for p in ["", REPO_ROOT, *paths]):
      raise UserError(f"gin file {f!r} not found (searched ., {REPO_ROOT}, {paths})")
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)
  except (ValueError, SyntaxError, KeyError, IOError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"bad gin config: {first} (check --gin_file and --gin.NAME=VALUE; "
                    "strings need quotes, e.g. --gin.WORKDIR=\"'/tmp/run'\")") from e


def main(argv):
  # A crash in native code (XLA, the CPU kernels) would otherwise end a long sweep with
  # no word of where it was; this prints every thread's Python stack to stderr first.
  faulthandler.enable()
  try:
    files, bindings, paths = parse_flags(argv)
  except ValueError as e:
    from ttc.errors import report
    return report(e)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # seqio's TF: keep its logs quiet
  from absl import logging
  from ttc.errors import UserError, report
  _import_configurables()
  # Libraries log advice (seqio on caching) and errors we re-raise as one line (orbax on
  # unreadable metadata); the driver's own `error:` line is what the user should see.
  logging.set_verbosity(logging.FATAL)
  from ttc import stages
  try:
    parse_config(files, bindings, paths)
    stages.run()
  except UserError as e:
    return report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
