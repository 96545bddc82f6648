"""The CPU kernels of `ttc.kernels`: compiled once from source, registered with XLA.

Each `*_cpu.cc` beside this file defines XLA FFI handlers (`*.h` are shared
helpers). They are compiled together into one shared library with the system C++
compiler the first time a process needs a kernel (a few seconds), and the library
is kept in a cache directory keyed by the sources, the flags, jax's version and
the CPU. Without a
compiler `available()` is False (one warning) and the model runs its plain jnp
code: the kernels only change speed.

They are single-device kernels: under a mesh of several devices, or off CPU, the
jnp code runs, which XLA partitions like the rest of the model.
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import subprocess
import tempfile

import gin
import jax

_DIRECTORY = pathlib.Path(__file__).parent
_SOURCES = tuple(sorted(_DIRECTORY.glob("*_cpu.cc")))
_HEADERS = tuple(sorted(_DIRECTORY.glob("*.h")))
DECODE_ATTENTION = "ttc_decode_attention_cpu"  # XLA custom-call targets
PACKED_MATMUL = "ttc_packed_matmul_cpu"
PACKED_MATMUL_AVX512 = "ttc_packed_matmul_avx512_cpu"
PACKED_MATMUL_BF16 = "ttc_packed_matmul_bf16_cpu"
PACK_PANELS = "ttc_pack_panels_cpu"
PACK_PANELS_BF16 = "ttc_pack_panels_bf16_cpu"
RMS_NORM = "ttc_rms_norm_cpu"
# target -> the handler symbol its source exports
TARGETS = {DECODE_ATTENTION: "TtcDecodeAttention", PACKED_MATMUL: "TtcPackedMatmul",
           PACKED_MATMUL_AVX512: "TtcPackedMatmulAvx512", PACKED_MATMUL_BF16: "TtcPackedMatmulBf16",
           PACK_PANELS: "TtcPackPanels", PACK_PANELS_BF16: "TtcPackPanelsBf16",
           RMS_NORM: "TtcRmsNorm"}
# -ffast-math lets the compiler reorder float sums (vectorised reductions);
# -fno-finite-math-only keeps the -inf that starts a softmax max. -w: the XLA FFI
# headers warn under gcc.
_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-std=c++17",
          "-shared", "-fPIC", "-w")


@gin.configurable
def cpu_kernel_enabled(enabled: bool = True) -> bool:
  """Gin switch: `--gin.cpu_kernel_enabled.enabled=False` keeps the model on plain jnp."""
  return enabled


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("TTC_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ttc")
  return pathlib.Path(root) / "kernels"


def _cpuinfo_lines() -> list[str]:
  """The first "model name" and "flags" lines of /proc/cpuinfo (none off Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      return [line for line in f if line.startswith(("model name", "flags"))][:2]
  except OSError:
    return []


def _cpu_identity() -> str:
  """What -march=native compiles for: a library built on one CPU may not run on another."""
  return platform.machine() + "".join(_cpuinfo_lines())


@functools.cache
def cpu_flags() -> frozenset[str]:
  """This CPU's instruction-set flags as /proc/cpuinfo names them (avx2, avx512_bf16...)."""
  line = next((line for line in _cpuinfo_lines() if line.startswith("flags")), "flags:")
  return frozenset(line.split(":", 1)[1].split())


def _compiler() -> str:
  return os.environ.get("CXX", "c++")


def library_key() -> str:
  """Names one build: the sources, the compiler and flags, jax's version and the CPU.
  Anything measured on the library (`ttc.kernels.matmul_choice`) is keyed by it too."""
  return hashlib.sha256(b"\0".join([
      *(source.read_bytes() for source in _SOURCES + _HEADERS),
      " ".join((_compiler(),) + _FLAGS).encode(),
      jax.__version__.encode(), _cpu_identity().encode()])).hexdigest()[:16]


def cache_dir() -> pathlib.Path:
  """The writable directory the library (and what is measured on it) is kept in."""
  directory = _cache_dir()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    directory = pathlib.Path(tempfile.gettempdir()) / "ttc-kernels"
    directory.mkdir(parents=True, exist_ok=True)
  return directory


def build() -> pathlib.Path:
  """Compiles the kernels (once per `library_key`); returns the library.

  Raises OSError or subprocess.CalledProcessError when no compiler can build it.
  """
  compiler = _compiler()
  library = cache_dir() / f"ttc_cpu_kernels-{library_key()}.so"
  if not library.exists():
    # Written aside and renamed: a process that dies mid-build, or two that build
    # at once, never leave a partial library under the final name.
    partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
    command = [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), *map(str, _SOURCES), "-o",
               str(partial)]
    try:
      subprocess.run(command, check=True, capture_output=True, timeout=600)
      os.replace(partial, library)
    finally:
      partial.unlink(missing_ok=True)
  return library


_loaded: list[ctypes.CDLL] = []  # the library `available` registered


def avx512_kernels_built() -> bool:
  """Whether this build holds the AVX-512 matmuls (x86-64 with GCC), whatever the CPU."""
  return available() and bool(_loaded[-1].TtcAvx512KernelsBuilt())


@functools.cache
def available() -> bool:
  """Builds and registers the kernels once per process; False (logged) if they cannot."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (OSError, subprocess.SubprocessError) as error:
    detail = getattr(error, "stderr", b"") or b""
    logging.warning("CPU kernels (ttc.kernels) unavailable, plain jnp runs instead: %s %s",
                    error, detail.decode(errors="replace")[-500:])
    return False
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  _loaded.append(library)
  return True


def require() -> None:
  """Registers the kernels; raises RuntimeError where they cannot be built."""
  if not available():
    raise RuntimeError("the CPU kernels (ttc.kernels) could not be built; see the warning "
                       "logged above")


def switched_on_here() -> bool:
  """The gin switch is on, CPU is the default backend and the kernels build."""
  return cpu_kernel_enabled() and jax.default_backend() == "cpu" and available()


def usable_here() -> bool:
  """`switched_on_here`, and the code being traced runs on one device (no larger mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  return (mesh.empty or mesh.size == 1) and switched_on_here()
