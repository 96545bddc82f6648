"""The device check's roofline arithmetic on a toy config worked by hand, its peak table,
its sampling and search pieces on a tiny bfloat16 model, and its CPU quick path end to
end (`launch/device_check.sh --quick`, slow)."""

import os
import subprocess
import sys

import jax
import pytest

from ttc import partitioning, workdir
from ttc.bench import device
from ttc.data import arith_task
from ttc.errors import UserError
from ttc.models import smollm2
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# D = 8, 2 layers, 2 heads of 4 (1 KV head), MLP 16, V = 32, untied, bfloat16.
TOY = ModelConfig(vocab_size=32, embed_dim=8, num_layers=2, num_heads=2, num_kv_heads=1,
                  head_dim=4, mlp_dim=16, dtype="bfloat16", param_dtype="bfloat16")


def test_toy_byte_and_flop_counts_by_hand():
  # Per layer: q 8x8 + k, v 2 x 8x4 + o 8x8 = 192, MLP 3 x 8x16 = 384; 2 x 576 + lm_head 8x32.
  assert TOY.num_matmul_params() == 1408
  assert device.weight_bytes(TOY) == 2816  # 2 bytes each
  assert device.kv_bytes_per_token(TOY) == 32  # K and V x 2 layers x 1 head x 4 x 2 bytes


def test_roofline_of_a_toy_decode_step_by_hand():
  # N = 4 rows, P = 8, G = 7: a row's own keys average (7 + 1) / 2 = 4 over the steps.
  # bytes = 2816 + 32 x (8 + 4 x 4) = 3584; FLOPs per token = 2 x 1408 + 4 x 2 layers
  # x 2 heads x 4 x (8 + 4) context = 3584, so 14336 per step of 4 rows.
  roof = device.roofline(TOY, 4, 8, 7, device.Peak(hbm_bytes_per_s=3584e3, flops=1433.6e3))
  assert roof.bytes_per_step == 3584 and roof.flops_per_step == 14336
  assert roof.hbm == pytest.approx(4 * 1000)  # 1000 steps/s x 4 rows
  assert roof.compute == pytest.approx(4 * 100)
  assert roof.binding == "compute" and roof.bound == pytest.approx(400)
  row = device.format_row(measured=100.0, seconds=0.28, roof=roof).split()
  assert row[0] == "4" and row[6] == "0.025" and row[8] == "0.250"  # of HBM, of FLOP
  assert row[-2:] == ["compute", "0.250"]


def test_unknown_peak_draws_no_roofline_and_keeps_the_row():
  roof = device.roofline(TOY, 1, 8, 7, device.Peak(None, 1e9))
  assert roof.hbm is None and roof.bound is None and roof.binding == "-"
  row = device.format_row(measured=5.0, seconds=1.4, roof=roof).split()
  assert row[1] == "5.0" and row[5:7] == ["-", "-"] and row[-2:] == ["-", "-"]


def test_peaks_come_from_the_table_or_the_flags():
  peak, line = device.device_peak("NVIDIA H200")
  assert peak == device.Peak(4.8e12, 989e12) and "nominal" in line
  peak, _ = device.device_peak("NVIDIA H200", hbm_bytes_per_s=4.3e12)
  assert peak == device.Peak(4.3e12, 989e12)
  peak, line = device.device_peak("cpu")
  assert peak == device.Peak(None, None)
  assert line.startswith("unknown device kind 'cpu'")
  assert "pass --hbm_bytes_per_s and --peak_flops" in line
  peak, line = device.device_peak("cpu", 1e11, 1e12)
  assert peak == device.Peak(1e11, 1e12) and "(flags)" in line


def test_tiny_bfloat16_policy_samples_and_searches(capsys):
  # The check's two measurements on a random 2-layer model in bfloat16 with the arithmetic
  # task's character codec: the same program paths as SmolLM2's, compiled in seconds.
  config = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                       head_dim=16, mlp_dim=64, dtype="bfloat16", param_dtype="bfloat16")
  model = Transformer(config)
  with workdir.device_context(jax.devices()[:1]):
    params = jax.jit(lambda k: partitioning.init_params(model, k))(jax.random.key(0))
    assert jax.tree.leaves(params)[0].dtype == "bfloat16"
    policy = workdir.Policy(model, params, workdir.char_codec(), "tiny", "workdir")
    rows = device.check_sampling(policy, [4], new_tokens=4, repeats=1,
                                 peak=device.Peak(1e12, None))
    result = device.check_search(policy, arith_task.ArithTask(name="device_check_test"),
                                 problems=2, budget=4, max_solution_tokens=12, temperature=1.0)
  [row] = rows
  assert row["num_samples"] == 4 and row["tokens_per_s"] > 0
  assert row["roofline"].hbm == pytest.approx(4 * 1e12 / row["roofline"].bytes_per_step)
  assert result["problems"] == 2 and 0 <= result["accuracy"] <= 1 and result["tokens"] > 0
  out = capsys.readouterr().out
  assert "search: best_of_n at N = 4" in out and "2 device_check_test test problems" in out


@pytest.mark.slow  # ~3-4 min on 2 CPU cores: SmolLM2's load and three compilations
def test_quick_check_end_to_end_on_cpu():
  try:
    smollm2.gguf_path()
  except UserError as e:
    pytest.skip(str(e))
  env = dict(os.environ, PYTHON=sys.executable)
  # Only the bandwidth is given: the HBM columns fill, the compute ones stay "-".
  out = subprocess.run(["bash", "launch/device_check.sh", "--quick", "--hbm_bytes_per_s=1e12"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  lines = out.stdout.splitlines()
  assert any(l.startswith("unknown device kind 'cpu'") and "--peak_flops" in l for l in lines)
  table = lines[next(i for i, l in enumerate(lines) if l.split()[:2] == ["N", "tokens/s"]) + 1:]
  for n, line in zip((1, 4), table):
    cells = line.split()
    assert cells[0] == str(n) and float(cells[1]) > 0  # tokens/s
    assert 0 < float(cells[6]) < 1  # of the HBM roofline
    assert cells[7:9] == ["-", "-"]
  search = next(l for l in lines if l.startswith("search:"))
  assert "best_of_n at N = 4" in search and "2 math500 test problems" in search
  assert "accuracy " in search and "device check done" in lines[-1]
