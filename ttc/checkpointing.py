"""Orbax checkpoints of the train state plus the data position.

A checkpoint holds the whole `TrainState` (parameters, optimizer state, step) and a
JSON item with the number of batches the data iterator has produced, so a resumed
run sees exactly the batches an uninterrupted one would.
"""

import orbax.checkpoint as ocp
from etils import epath

from ttc import resumable
from ttc.errors import UserError


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """The trainer decides when to save; the manager keeps the newest `keep`.

  directory: a local path or a URI (gs://...), which orbax reads and writes as it is.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True,
      # Saving synchronously keeps "the last step on disk" well defined at kill -9.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(epath.Path(resumable.absolute(directory)), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, batches_consumed: int):
  mngr.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave({"batches_consumed": int(batches_consumed)})))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """Returns (state, batches_consumed) of the newest checkpoint, or None if there is none.

  abstract_state: pytree of jax.ShapeDtypeStruct with shardings; arrays are restored
  straight into those shardings.
  """
  step = mngr.latest_step()
  if step is None:
    return None
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types; all mean the same to a user.
    raise UserError(
        f"checkpoint {mngr.directory}/{step} is unreadable or does not match the model "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); delete it or point "
        "the work dir elsewhere") from e
  return restored.state, int(restored.data["batches_consumed"])


def restore_params(directory: str, abstract_params, step=None):
  """Restores only `params` of a train-state checkpoint (for evaluation/sampling)."""
  if not epath.Path(directory).is_dir():
    raise UserError(f"no checkpoint directory at {directory}; train first or fix the path")
  mngr = ocp.CheckpointManager(epath.Path(resumable.absolute(directory)))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f"no checkpoint found in {directory}; train first or fix the path")
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                {"params": abstract_params}),
            partial_restore=True)))
  except Exception as e:
    raise UserError(
        f"checkpoint {directory}/{step} is unreadable or does not match the model "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  return restored.state["params"], step
