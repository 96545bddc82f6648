"""The driver: bad input ends in one `error:` line and exit code 2, no traceback."""

import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--gin_file=configs/arith/quickstart.gin"


def _run(*flags, workdir, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "ttc.main", *flags,
                         f"--gin.WORKDIR='{workdir}'"],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _assert_one_error_line(result, *fragments):
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_unknown_gin_binding(tmp_path):
  result = _run(QUICK, "--gin.train.no_such_arg=3", workdir=tmp_path)
  _assert_one_error_line(result, "bad gin config", "no_such_arg")


def test_missing_gin_file(tmp_path):
  result = _run("--gin_file=configs/arith/nope.gin", workdir=tmp_path)
  _assert_one_error_line(result, "not found", "nope.gin")


def test_repo_configs_resolve_from_another_working_directory(tmp_path):
  """With the repository on PYTHONPATH (a colab, a launcher) and the working directory
  elsewhere, repo-relative gin files and their `include`s still resolve."""
  ran = _run(QUICK, "--gin.run.stages=[]", workdir=tmp_path / "run", cwd=tmp_path)
  assert ran.returncode == 0, ran.stderr[-2000:]
  assert (tmp_path / "run" / "config.gin").exists()


def test_unknown_flag(tmp_path):
  result = _run(QUICK, "--steps=3", workdir=tmp_path)
  _assert_one_error_line(result, "unknown flag")


def test_corrupt_checkpoint_directory(tmp_path):
  step_dir = tmp_path / "checkpoints" / "40"
  step_dir.mkdir(parents=True)
  (step_dir / "_CHECKPOINT_METADATA").write_text("{not json")
  (step_dir / "state").mkdir()
  (step_dir / "state" / "garbage").write_bytes(b"\x00\x01garbage")
  result = _run(QUICK, "--gin.run.stages=[@train]", workdir=tmp_path)
  _assert_one_error_line(result, "checkpoint", "unreadable")
  assert step_dir.exists()  # nothing the user had is deleted


def test_evaluate_without_checkpoint(tmp_path):
  (tmp_path / "model_config.json").write_text("{}")
  result = _run(QUICK, "--gin.run.stages=[@evaluate]", workdir=tmp_path)
  _assert_one_error_line(result, "no checkpoint")


@pytest.mark.parametrize("stage, knob", [("train", "num_train_per_level"),
                                         ("evaluate", "num_eval_per_level")])
def test_split_with_no_examples(tmp_path, stage, knob):
  result = _run(QUICK, f"--gin.run.stages=[@{stage}]", f"--gin.register_arith_task.{knob}=0",
                workdir=tmp_path)
  _assert_one_error_line(result, "no examples", knob)


@pytest.mark.parametrize("flags, workdir, fragments", [
    ([], "a_file/run", ["run.workdir", "cannot be created"]),
    (["--gin.run.stages=[@train]", "--gin.train.batch_size=0"], "run",
     ["train.batch_size=0", "positive integer"]),
    (["--gin.run.stages=[@train]", "--gin.make_mesh.tensor=3"], "run",
     ["make_mesh", "tensor=3", "multiple of 3 devices"]),
    (["--gin.train.num_steps=-5"], "run", ["train.num_steps=-5", "positive integer"]),
], ids=["workdir_not_creatable", "batch_size_0", "mesh_not_dividing_devices", "num_steps_negative"])
def test_bad_value_fails_where_it_enters_before_any_work(tmp_path, flags, workdir, fragments):
  (tmp_path / "a_file").write_text("a file where the work dir's parent should be")
  result = _run(QUICK, *flags, workdir=tmp_path / workdir)
  _assert_one_error_line(result, *fragments)
  assert "done in" not in result.stdout  # no stage finished (num_steps=-5 used to "train")
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / "model_config.json").exists()


def test_quickstart_pipeline_end_to_end_in_miniature(tmp_path):
  """The README's main job with a few steps: trains, checkpoints, evaluates, writes configs."""
  result = _run(QUICK, "--gin.train.num_steps=6", "--gin.train.checkpoint_every=3",
                "--gin.evaluate.max_problems_per_level=1", "--gin.evaluate.batch_size=16",
                "--gin.evaluate.max_new_tokens=8", workdir=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pass@16" in result.stdout and "level_5" in result.stdout
  results = __import__("json").loads((tmp_path / "eval_test.json").read_text())
  assert results["policy_step"] == 6 and results["results"]["overall"]["problems"] == 5
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == ["3", "6"]
  operative = (tmp_path / "operative_config.gin").read_text()
  assert "train.num_steps = 6" in operative


CONFIGS = sorted(os.path.relpath(os.path.join(d, f), REPO)
                 for d, _, files in os.walk(os.path.join(REPO, "configs"))
                 for f in files if f.endswith(".gin"))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses_with_the_driver(config):
  """Each gin file names only configurables and parameters that exist (a typo in a
  rarely run config, e.g. a paper-size one, would otherwise surface hours into a run)."""
  import gin

  from ttc import main
  main._import_configurables()
  gin.clear_config()
  try:
    main.parse_config([config], [], [])
  finally:
    gin.clear_config()


_CRASH = """
import ctypes, sys, gin
@gin.configurable
def crash_on_purpose(workdir):
  ctypes.string_at(0)  # reads address 0: SIGSEGV
from ttc import main
sys.exit(main.main(sys.argv[1:]))
"""


def test_a_native_crash_prints_the_python_stack(tmp_path):
  """A segfault mid-stage (as one in XLA or a CPU kernel) leaves the stage's Python
  stack on stderr, so a killed sweep says where it was."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  crashed = subprocess.run([sys.executable, "-c", _CRASH, QUICK,
                            "--gin.run.stages=[@crash_on_purpose]",
                            f"--gin.WORKDIR='{tmp_path}'"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  assert crashed.returncode == -signal.SIGSEGV, crashed.stderr[-2000:]
  assert "Fatal Python error: Segmentation fault" in crashed.stderr
  assert "in crash_on_purpose" in crashed.stderr and "in run" in crashed.stderr
