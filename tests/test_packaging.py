"""A built wheel carries the gin configs and the embedded data, and resolves them."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  # No build isolation: the test venv already has setuptools/wheel and CI is offline-safe.
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(out), ROOT],
                 check=True, capture_output=True, text=True, cwd=str(out))
  (path,) = [p for p in out.iterdir() if p.suffix == ".whl"]
  return path


def test_wheel_contains_every_gin_file_and_embedded_data(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  gin_files = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "gin")):
    gin_files += [os.path.relpath(os.path.join(dirpath, f), ROOT)
                  for f in files if f.endswith(".gin")]
  assert len(gin_files) > 30
  missing = [f for f in gin_files if f"hyper_tasks/{f}" not in names]
  assert not missing, missing
  assert "hyper_tasks/data/embedded/pretrain/corpus.txt" in names
  assert any(n.startswith("hyper_tasks/data/embedded/sni/tasks/") for n in names)
  assert not any("__pycache__" in n for n in names)


def test_unpacked_wheel_resolves_and_parses_gin_outside_the_repo(wheel, tmp_path):
  site = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(site)
  script = (
      "import os, gin\n"
      "from hyper_tasks import gin_utils\n"
      "d = gin_utils.repo_gin_dir()\n"
      "assert d == os.path.join(%r, 'hyper_tasks', 'gin'), d\n"
      "gin_utils.parse(['experiments/hint_finetune_sni.gin', 'tiny.gin'],"
      " [\"MODEL_DIR = '/tmp/unused'\"])\n"
      "print('TRAIN_STEPS', gin.query_parameter('TRAIN_STEPS/macro.value'))\n") % str(site)
  env = dict(os.environ, PYTHONPATH=str(site))
  env.pop("HYPER_TASKS_GIN_DIR", None)
  # cwd outside the repository, so neither the source tree nor ./gin can be found.
  proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TRAIN_STEPS 2" in proc.stdout
