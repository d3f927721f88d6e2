"""Every shell entry point's --dry_run resolves its whole configuration and runs a
tiny step; the scripts bake in no path; the README's commands are the CI's."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
JOB_SCRIPTS = ("pretrain.sh", "finetune_sni.sh", "finetune_t0.sh", "eval_sni.sh",
               "eval_t0.sh")


def _env(tmp_path):
  env = dict(os.environ)
  env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             TMPDIR=str(tmp_path),
             # Dry runs of different scripts compile the same tiny programs.
             JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for name in ("MODEL_DIR", "SNI_DIR", "C4_PATH", "P3_TEMPLATES_DIR", "P3_DATA_DIR",
               "INITIAL_CHECKPOINT_PATH", "EXPERIMENT"):
    env.pop(name, None)
  return env


# An eval script's dry run evaluates the tiny checkpoint its training script's dry
# run wrote (it would train one itself in an empty MODEL_DIR).
_TRAINED_BY = {"eval_sni.sh": "finetune_sni.sh", "eval_t0.sh": "finetune_t0.sh"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  return {s: tmp_path_factory.mktemp(s.replace(".", "_")) / "model"
          for s in JOB_SCRIPTS}


@pytest.mark.parametrize("script", JOB_SCRIPTS)
def test_dry_run(script, tmp_path, model_dirs):
  model_dir = model_dirs[_TRAINED_BY.get(script, script)]
  env = _env(tmp_path)
  env["MODEL_DIR"] = str(model_dir)
  proc = subprocess.run(["bash", str(SCRIPTS / script), "--dry_run"], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  # One tiny step was trained (and, for the eval scripts, evaluated).
  assert (model_dir / "checkpoints" / "1").is_dir(), os.listdir(model_dir)
  assert (model_dir / "config.gin").is_file()
  if script.startswith("eval_"):
    assert (model_dir / "eval_results" / "step_1.json").is_file()
    assert "-m hyper_tasks.train " not in proc.stderr  # reused the trained checkpoint


def test_missing_model_dir_is_a_clear_error(tmp_path):
  proc = subprocess.run(["bash", str(SCRIPTS / "finetune_sni.sh")],
                        env=_env(tmp_path), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 2
  assert "set MODEL_DIR" in proc.stderr


def test_tpu_setup_dry_run_prints_the_install(tmp_path):
  proc = subprocess.run(["bash", str(SCRIPTS / "tpu_setup.sh"), "--dry_run"],
                        env=_env(tmp_path), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert '-e .[tpu]' in proc.stdout and "-m venv .venv" in proc.stdout
  # The tpu extra is JAX's TPU build.
  assert '"jax[tpu]' in (REPO / "setup.py").read_text()


def test_scripts_bake_in_no_path_or_bucket():
  for path in SCRIPTS.glob("*.sh"):
    text = path.read_text()
    assert not re.search(r"gs://[a-z0-9]|/home/|/work/|/root/", text), path


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
  readme = (REPO / "README.md").read_text().splitlines()
  block = readme[readme.index("```bash") + 1:]
  block = block[:block.index("```")]
  commands = [line.split("#")[0].strip() for line in block if line.strip()]
  assert commands == ["bash scripts/local.sh", "bash scripts/test.sh"]
  ci = (REPO / ".ci" / "run").read_text()
  assert "scripts/test.sh" in ci
