"""Building and registering the CPU kernels."""

import ctypes

import jax
import pytest

from ttc.kernels import cpu_library
from ttc import partitioning


def test_the_kernels_build_here_and_register_every_target():
  assert cpu_library.available()  # this machine has a compiler
  library = cpu_library.build()
  assert library.exists() and library.name.startswith("ttc_cpu_kernels-")
  assert cpu_library.build() == library  # cached: same key, no rebuild
  handlers = ctypes.CDLL(str(library))
  assert all(hasattr(handlers, symbol) for symbol in cpu_library.TARGETS.values())


def test_usable_here_only_on_one_device_with_the_switch_on(monkeypatch):
  assert cpu_library.usable_here()
  with jax.set_mesh(partitioning.make_mesh(2, 2, 2)):
    assert not cpu_library.usable_here()  # a sharded program stays with XLA's ops
  with jax.set_mesh(partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])):
    assert cpu_library.usable_here()
  monkeypatch.setattr(cpu_library, "cpu_kernel_enabled", lambda: False)
  assert not cpu_library.usable_here()


def test_without_a_compiler_the_kernels_are_off_with_a_warning(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path))
  with pytest.raises(OSError):
    cpu_library.build()
  assert not cpu_library.available.__wrapped__()  # the uncached body
  assert "plain jnp runs instead" in caplog.text
  assert not list(tmp_path.glob("kernels/*"))  # nothing partial left behind
