"""The decode matmul is chosen by measurement: the faster that runs here, cached per CPU."""

import json
import time

import gin
import pytest

from ttc.kernels import cpu_library, matmul_choice, packed_matmul
from ttc.models.config import ModelConfig

CONFIG = ModelConfig(vocab_size=40, embed_dim=64, num_layers=2, num_heads=2, num_kv_heads=1,
                     head_dim=32, mlp_dim=128)


def _sleeper(seconds):
  def timer():
    started = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - started
  return timer


@pytest.mark.parametrize("order", [("slow", "fast"), ("fast", "slow")])
def test_fastest_picks_the_faster_of_two_fakes(order):
  timers = {"slow": _sleeper(0.03), "fast": _sleeper(0.003)}
  chosen, seconds = matmul_choice.fastest({name: timers[name] for name in order},
                                          lambda name: True, rounds=3)
  assert chosen == "fast"
  assert seconds["fast"] < seconds["slow"]


def test_a_kernel_the_cpu_cannot_run_is_never_timed_nor_chosen():
  def cannot_run():
    raise AssertionError("timed a kernel this CPU cannot run")

  chosen, seconds = matmul_choice.fastest(
      {"wide_registers": cannot_run, "xla": _sleeper(0.003)},
      lambda name: name != "wide_registers")
  assert chosen == "xla" and set(seconds) == {"xla"}
  with pytest.raises(ValueError, match="runs here"):
    matmul_choice.fastest({"wide_registers": cannot_run}, lambda name: False)


RUNS_HERE = packed_matmul.runs_here  # before any test fakes it
# The float32 choices a measurement times, when the CPU runs them all.
MEASURED = ("xla", "packed", "packed_avx512")


@pytest.fixture
def fake_timers(monkeypatch, tmp_path):
  """Timers that cost nothing: packed_avx512 fastest at 64 rows, XLA at 1 to 8, and the
  16-column kernel in between. Records each (rows, name) measured."""
  monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  monkeypatch.setattr(matmul_choice, "_runs_here", lambda name: True)
  monkeypatch.setattr(packed_matmul, "runs_here", lambda name: True)
  built = []

  def step_timer(config, rows, name):
    built.append((rows, name))
    fastest = "packed_avx512" if rows >= 64 else "xla"
    return lambda: 1e-3 if name == fastest else 2e-3 if name == "packed" else 3e-3
  monkeypatch.setattr(matmul_choice, "_step_timer", step_timer)
  return built


def test_the_choice_is_measured_once_per_cpu_and_kept_on_disk(fake_timers, monkeypatch, tmp_path):
  assert matmul_choice.decode_format(CONFIG, 64) == "packed_avx512"
  assert matmul_choice.decode_format(CONFIG, 5) is None  # its own bucket (8 rows): XLA
  assert sorted(fake_timers) == sorted((rows, name) for rows in (8, 64) for name in MEASURED)
  assert matmul_choice.decode_format(CONFIG, 40) == "packed_avx512"  # 64 rows' bucket: no new
  monkeypatch.setattr(matmul_choice, "_chosen", {})  # as a new process sees it
  assert matmul_choice.decode_format(CONFIG, 64) == "packed_avx512" and len(fake_timers) == 6
  table = json.loads((tmp_path / "kernels" / "matmul_choice.json").read_text())
  assert {entry["choice"] for entry in table.values()} == {"packed_avx512", "xla"}

  # Another CPU (a different build of the kernels) measures again.
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  monkeypatch.setattr(cpu_library, "_cpu_identity", lambda: "x86_64 another CPU")
  assert matmul_choice.decode_format(CONFIG, 64) == "packed_avx512" and len(fake_timers) == 9

  # A damaged file is measured again, not an error.
  (tmp_path / "kernels" / "matmul_choice.json").write_text("{cut")
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  assert matmul_choice.decode_format(CONFIG, 64) == "packed_avx512" and len(fake_timers) == 12


def test_a_cpu_without_avx512_never_times_nor_chooses_the_avx512_kernel(fake_timers, monkeypatch):
  """The real `runs_here` checks, on an AVX2 CPU's flags."""
  monkeypatch.setattr(cpu_library, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
  monkeypatch.setattr(packed_matmul, "runs_here", RUNS_HERE)
  monkeypatch.setattr(matmul_choice, "_runs_here", lambda name: name == "xla" or RUNS_HERE(name))
  assert matmul_choice.decode_format(CONFIG, 64) == "packed"  # the fastest it may run
  assert {name for _, name in fake_timers} == {"xla", "packed"}
  try:
    gin.bind_parameter("decode_matmul.choice", "packed_avx512")
    with pytest.raises(ValueError, match="cannot run here"):
      matmul_choice.decode_format(CONFIG, 64)
  finally:
    gin.clear_config()


def test_gin_forces_a_choice_without_measuring(fake_timers):
  try:
    gin.bind_parameter("decode_matmul.choice", "xla")
    assert matmul_choice.decode_format(CONFIG, 64) is None
    for name in packed_matmul.FORMATS:
      gin.bind_parameter("decode_matmul.choice", name)
      assert matmul_choice.decode_format(CONFIG, 2) == name
    gin.bind_parameter("decode_matmul.choice", "fastest")
    with pytest.raises(ValueError, match="decode_matmul.choice"):
      matmul_choice.decode_format(CONFIG, 2)
  finally:
    gin.clear_config()
  assert not fake_timers


@pytest.mark.skipif(not cpu_library.switched_on_here(), reason="the CPU kernels do not build")
def test_every_matmul_this_cpu_runs_is_timed_here_on_the_model_shapes(monkeypatch, tmp_path):
  monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  entry = matmul_choice.measured(CONFIG, 24)
  seconds = entry["seconds"]
  runnable = {name for name in MEASURED if name == "xla" or packed_matmul.runs_here(name)}
  assert set(seconds) == runnable and all(s > 0 for s in seconds.values())
  assert entry["choice"] == min(seconds, key=seconds.get)
