"""Fixtures shared by the model tests."""

import pytest

from ttc.errors import UserError
from ttc.models import gguf_loader, smollm2


@pytest.fixture(scope="session")
def smol():
  """(path, config, params, tokenizer) of SmolLM2-135M-Instruct's GGUF, loaded once."""
  try:
    path = smollm2.gguf_path()
  except UserError as e:
    pytest.skip(str(e))
  config, params, tokenizer = gguf_loader.load_gguf(path)
  return path, config, params, tokenizer
