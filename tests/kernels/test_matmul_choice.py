"""The decode matmul is chosen by measurement: the faster that runs here, cached per CPU."""

import json
import time

import gin
import pytest

from ttc.kernels import cpu_library, matmul_choice
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


@pytest.fixture
def fake_timers(monkeypatch, tmp_path):
  """Timers that cost nothing: packed faster at 64 rows, XLA faster at 1 to 8. Counts
  how often a step was measured."""
  monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  monkeypatch.setattr(matmul_choice, "_runs_here", lambda name: True)
  built = []

  def step_timer(config, rows, packed):
    built.append((rows, packed))
    fast = packed == (rows >= 64)
    return lambda: 1e-3 if fast else 2e-3
  monkeypatch.setattr(matmul_choice, "_step_timer", step_timer)
  return built


def test_the_choice_is_measured_once_per_cpu_and_kept_on_disk(fake_timers, monkeypatch, tmp_path):
  assert matmul_choice.packed_is_faster(CONFIG, 64)
  assert not matmul_choice.packed_is_faster(CONFIG, 5)  # its own bucket: 8 rows
  assert sorted(fake_timers) == [(8, False), (8, True), (64, False), (64, True)]
  assert matmul_choice.packed_is_faster(CONFIG, 40)  # 64 rows' bucket: no new measurement
  monkeypatch.setattr(matmul_choice, "_chosen", {})  # as a new process sees it
  assert matmul_choice.packed_is_faster(CONFIG, 64) and len(fake_timers) == 4
  table = json.loads((tmp_path / "kernels" / "matmul_choice.json").read_text())
  assert {entry["choice"] for entry in table.values()} == {"packed", "xla"}

  # Another CPU (a different build of the kernels) measures again.
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  monkeypatch.setattr(cpu_library, "_cpu_identity", lambda: "x86_64 another CPU")
  assert matmul_choice.packed_is_faster(CONFIG, 64) and len(fake_timers) == 6

  # A damaged file is measured again, not an error.
  (tmp_path / "kernels" / "matmul_choice.json").write_text("{cut")
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  assert matmul_choice.packed_is_faster(CONFIG, 64) and len(fake_timers) == 8


def test_gin_forces_a_choice_without_measuring(fake_timers):
  try:
    gin.bind_parameter("decode_matmul.choice", "xla")
    assert not matmul_choice.packed_is_faster(CONFIG, 64)
    gin.bind_parameter("decode_matmul.choice", "packed")
    assert matmul_choice.packed_is_faster(CONFIG, 2)
    gin.bind_parameter("decode_matmul.choice", "fastest")
    with pytest.raises(ValueError, match="decode_matmul.choice"):
      matmul_choice.packed_is_faster(CONFIG, 2)
  finally:
    gin.clear_config()
  assert not fake_timers


@pytest.mark.skipif(not cpu_library.switched_on_here(), reason="the CPU kernels do not build")
def test_both_matmuls_are_timed_here_on_the_model_shapes(monkeypatch, tmp_path):
  monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(matmul_choice, "_chosen", {})
  entry = matmul_choice.measured(CONFIG, 24)
  seconds = entry["seconds"]
  assert set(seconds) == {"packed", "xla"} and all(s > 0 for s in seconds.values())
  assert entry["choice"] == min(seconds, key=seconds.get)
