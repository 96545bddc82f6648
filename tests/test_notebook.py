"""notebooks/quickstart.ipynb runs top to bottom at its CI size, so it cannot rot.

It executes in a kernel of this interpreter (whatever kernelspecs are installed for the user),
in a temporary work dir, and must leave the sweep's results and the plotted curves. If it
fails, the failing cell's traceback is in the error; run the notebook at SIZE = "ci" to see
it in place.
"""

import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
# The notebook's "ci" size: one problem per level, best-of-N at two budgets.
CI_METHODS = {"best_of_n", "majority"}  # majority: best-of-N's rows by vote
CI_BUDGETS = {"2", "4"}
LEVELS = 5


@pytest.fixture
def executed(tmp_path, monkeypatch):
  """(the executed notebook, its work dir)."""
  workdir = tmp_path / "run"
  monkeypatch.setenv("TTC_NOTEBOOK_SIZE", "ci")
  monkeypatch.setenv("TTC_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as the driver runs from a shell
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # The kernel starts in tmp_path, where only PYTHONPATH makes this checkout's ttc import
  # (so the notebook's install cell is skipped); no user IPython profile runs in it.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
  # No kernel directories: "python3" is then ipykernel's own spec, which runs sys.executable.
  kernel = AsyncKernelManager(kernel_name="python3",
                              kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
  assert kernel.kernel_spec.argv[0] == sys.executable
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, km=kernel, timeout=300,
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return notebook, workdir


def test_notebook_runs_at_ci_size_and_plots_the_curves(executed):
  notebook, workdir = executed
  stored = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(cell.get("outputs") for cell in stored.cells), "store it with outputs cleared"

  evaluation = json.loads((workdir / "eval_test.json").read_text())
  assert evaluation["policy_step"] == 4
  assert evaluation["results"]["overall"]["problems"] == LEVELS

  lines = (workdir / "search_test.jsonl").read_text().splitlines()
  assert len(lines) == LEVELS * len(CI_BUDGETS)  # problems x budgets

  curves = json.loads((workdir / "curves.json").read_text())
  assert set(curves) == CI_METHODS
  for method, row in curves.items():
    assert set(row) == CI_BUDGETS, method
    for mean, low, high in row.values():
      assert 0 <= low <= mean <= high <= 1, (method, row)

  last = notebook.cells[-1]
  assert any("image/png" in out.get("data", {}) for out in last.outputs), last.outputs
  assert (workdir / "search_test.png").exists()
