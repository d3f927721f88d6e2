"""Both notebooks execute headless at tiny size (the results one on a real sweep)."""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name, tmp_path, **env):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


def _stdout(nb):
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_walkthrough_executes(tmp_path):
  nb = _execute("walkthrough.ipynb", tmp_path, WALKTHROUGH_STEPS="4")
  out = _stdout(nb)
  assert "hypernet runs: 2" in out
  assert "max |ours - PEFT|" in out


def test_results_notebook_executes_on_a_sweep(tmp_path, tiny_sweep_dir):
  nb = _execute("results.ipynb", tmp_path, SWEEP_DIR=str(tiny_sweep_dir))
  out = _stdout(nb)
  assert "ADAPTER_SIZE=8,NUM_PREFIX_TOKENS=2" in out and "MFLOPs" in out
