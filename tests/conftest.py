"""Test setup: a fake 8-device CPU mesh, set before jax is imported anywhere, and one
persistent compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same tiny programs (the same model, shapes and mesh), in this
# process and in the CLI runs they start (a kill -9 test compiles one sweep three
# times). jax's persistent cache, shared through the environment, compiles each once
# per session; the directory is new each session, so a run never reads another's.
_CACHE = tempfile.mkdtemp(prefix="ttc_test_jax_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
