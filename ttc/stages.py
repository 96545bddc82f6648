"""`run`: the top-level configurable that calls each configured stage on one work dir."""

import time

import gin
from etils import epath

from ttc.errors import UserError


@gin.configurable
def run(workdir: str = gin.REQUIRED, stages=gin.REQUIRED, distributed: bool = False):
  """Calls each stage (a gin configurable such as `@train` or `@evaluate`) in order.

  distributed: call `jax.distributed.initialize()` first (one process per host on a
  TPU pod or multi-node GPU job; the cluster is detected from the environment, or
  given by `initialize_distributed`'s bindings). Process 0 then writes the shared
  files, and every process finishes a stage before any starts the next
  (`ttc.multihost`).
  """
  from ttc import multihost
  if distributed:
    multihost.initialize()
  if not workdir or not isinstance(workdir, str):
    raise UserError(f"run.workdir={workdir!r} is not a path; set --gin.WORKDIR=\"'path'\"")
  if callable(stages) or not isinstance(stages, (list, tuple)):
    raise UserError(f"run.stages={stages!r} is not a list; write e.g. "
                    "--gin.run.stages=[@train,@evaluate]")
  for stage in stages:
    if not callable(stage):
      raise UserError(f"run.stages entry {stage!r} is not a configurable; write @train, "
                      "@evaluate, ...")
  # Checked before any stage runs: an unwritable work dir would fail one after its work.
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if multihost.is_writer():
      epath.Path(workdir, "config.gin").write_text(gin.config_str())
  except OSError as e:
    raise UserError(f"run.workdir {workdir!r} cannot be created or written "
                    f"({e.strerror or e}); set --gin.WORKDIR=\"'a/writable/dir'\"") from e
  for stage in stages:
    started = time.perf_counter()
    stage(workdir=workdir)
    name = getattr(stage, "__name__", getattr(getattr(stage, "func", None), "__name__", stage))
    multihost.barrier(f"stage {name}")  # the next stage reads what this one wrote
    seconds = time.perf_counter() - started
    print(f"stage {name} done in {seconds:.0f} s", flush=True)
  if multihost.is_writer():
    epath.Path(workdir, "operative_config.gin").write_text(gin.operative_config_str())
