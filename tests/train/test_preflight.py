"""``--check``: every experiment at its real size, on the real shared data, checked
without training; wrong configurations fail in seconds with the key named.

Real-size checkpoints are made without real-size cost: a sparse HF T5.1.1-base
directory (``tests/checkpoint_fakes.py``) stands for T5-LM-adapt, and a zero
HINT-base state saved by orbax stands for a stage-1 ``MODEL_DIR``.
"""
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from hyper_tasks import eval as eval_lib
from hyper_tasks.data import vocab
from hyper_tasks.models import config as config_lib
from hyper_tasks.train import __main__ as train_main
from hyper_tasks.train import checkpoints
from tests import checkpoint_fakes
from tests.conftest import REPO

EXPERIMENTS = sorted(f"experiments/{f}" for f in os.listdir(REPO / "gin" / "experiments"))
FULL_RESTORE = ("hint_finetune_sni", "hint_finetune_t0", "no_instruction_finetune_sni")


pytestmark = pytest.mark.usefixtures("clean_gin", "restore_embedded_registry")


def _p3_data(root, shared):
  """Local P3 data: two T0 training datasets (a few rows in the HF schema) and the
  shared SuperGLUE validation sets (held out)."""
  rows = {"ag_news": [{"text": f"Stocks rose on day {i} as markets rallied.",
                       "label": i % 4} for i in range(8)],
          "imdb": [{"text": f"A film that was {'good' if i % 2 else 'bad'} {i}.",
                    "label": i % 2} for i in range(8)]}
  for name, data in rows.items():
    d = root / name
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
  for subset in ("copa", "wsc"):
    d = root / "super_glue" / subset
    d.mkdir(parents=True)
    src = shared / "p3" / "super_glue" / subset / "validation.hf_format.jsonl"
    os.symlink(src, d / "validation.hf_format.jsonl")
  return root


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("real")
  spiece = shared_data / "t5_vocab" / "spiece.model"
  hf_base = checkpoint_fakes.write_sparse_hf_t5(
      root / "t5-base-lm-adapt", config_lib.preset("t5_1_1", "base"), spiece)
  return {
      "root": root,
      "hf_base": hf_base,
      "data": [f"--gin.SNI_DIR='{shared_data / 'sni'}'",
               "--gin.register_all.sni_allow_missing_tasks=True",
               f"--gin.C4_PATH='{shared_data / 'c4' / 'c4-en.sample-1000docs.jsonl'}'",
               f"--gin.P3_TEMPLATES_DIR='{shared_data / 'p3' / 'promptsource_templates'}'",
               f"--gin.P3_DATA_DIR='{_p3_data(root / 'p3', shared_data)}'"],
  }


def _run(argv, capsys):
  gin.clear_config()
  code = train_main.main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _data_flags(real, experiment):
  keep = {"sni": "SNI_DIR", "t0": "P3_", "c4": "C4_PATH"}
  kind = "t0" if "t0" in experiment else "c4" if "c4" in experiment else "sni"
  return [f for f in real["data"] if keep[kind] in f or (
      kind == "sni" and "sni_allow" in f)]


# The stage-1 MODEL_DIR (HINT base, zeros), made by the first full-restore check.
_stage1_holder = {}


def _check_argv(real, experiment, model_dir, *extra, restore_from=None):
  name = os.path.basename(experiment)[:-len(".gin")]
  if restore_from is None:
    restore_from = (_stage1_holder.get("dir") if name in FULL_RESTORE
                    else real["hf_base"])
  return ([f"--gin_file={experiment}", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.INITIAL_CHECKPOINT_PATH='{restore_from}'"]
          + _data_flags(real, experiment) + ["--check"] + list(extra))


def _make_stage1(layout, path, spiece):
  """Saves a zero train state of ``layout`` as our checkpoint at step 100."""
  state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), layout.abstract)
  ckpt = checkpoints.Checkpointer(str(path), async_save=False, config_str="")
  with ckpt:
    ckpt.save(100, state, {"batches": 100}, force=True)
  vocab.save_to_model_dir(vocab.get_vocabulary(str(spiece)), str(path))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_checks_at_real_size(experiment, real, shared_data,
                                              tmp_path, capsys, monkeypatch):
  monkeypatch.delenv(vocab.VOCABULARY_ENV, raising=False)
  name = os.path.basename(experiment)[:-len(".gin")]
  if name in FULL_RESTORE and "dir" not in _stage1_holder:
    # Stage 1 of the HINT recipe, checked, then its state (zeros) saved as the
    # checkpoint stage 2 restores.
    code, out, err = _run(_check_argv(real, "experiments/hint_pretrain_c4.gin",
                                      tmp_path / "s1"), capsys)
    assert code == 0, err
    layout = train_main.LAST_CHECK.layout
    path = real["root"] / "stage1"
    _make_stage1(layout, path, shared_data / "t5_vocab" / "spiece.model")
    _stage1_holder["dir"] = str(path)
  code, out, err = _run(_check_argv(real, experiment, tmp_path / "run"), capsys)
  assert code == 0, err[-3000:]
  assert "check (train): OK" in out
  report = train_main.LAST_CHECK
  assert report.values["sequence_lengths"]["inputs"] >= 256  # not tiny.gin's 32
  total = sum(report.values["params_per_group"].values())
  assert total > 200e6, total  # base size, not tiny
  assert report.values["flops_per_step"] > 1e12
  assert not os.path.exists(tmp_path / "run")  # a check writes nothing


def test_byte_vocabulary_on_base_fails(real, tmp_path, capsys):
  code, _, err = _run(_check_argv(real, "experiments/hint_pretrain_c4.gin",
                                  tmp_path / "r", "--gin.VOCABULARY='byte'"), capsys)
  assert code == 1
  assert "byte+0 has 259 ids" in err and "32128" in err


def test_lengths_longer_than_the_model_allows_fail(real, tmp_path, capsys):
  code, _, err = _run(_check_argv(
      real, "experiments/hint_pretrain_c4.gin", tmp_path / "r",
      "--gin.models.make_model.config_overrides={'max_sequence_length': 256}"),
      capsys)
  assert code == 1
  assert "TASK_FEATURE_LENGTHS['hyper_inputs'] = 512" in err
  assert "max_sequence_length = 256" in err


def test_restore_tree_mismatch_fails_naming_keys(real, tmp_path, capsys):
  small = checkpoint_fakes.write_sparse_hf_t5(
      tmp_path / "t5-small", config_lib.preset("t5_1_1", "small"))
  code, _, err = _run(_check_argv(real, "experiments/t5_concat_finetune_sni.gin",
                                  tmp_path / "r",
                                  f"--gin.VOCABULARY='{real['hf_base']}'",
                                  restore_from=small), capsys)
  assert code == 1
  assert "RestoreError" in err
  assert "token_embedder/embedding: checkpoint (32128, 512) vs target (32128, 768)" in err


def test_eval_check_against_a_stage1_checkpoint(real, tmp_path, capsys):
  if "dir" not in _stage1_holder:
    pytest.skip("needs the stage-1 checkpoint of the experiment checks")
  gin.clear_config()
  code = eval_lib.main(["--gin_file=experiments/hint_finetune_sni.gin",
                        "--gin_file=runs/eval_sni.gin",
                        f"--gin.MODEL_DIR='{tmp_path / 'eval'}'",
                        f"--gin.CHECKPOINT_PATH='{_stage1_holder['dir']}'",
                        "--gin.EVAL_BATCH_SIZE=4"]
                       + _data_flags(real, "sni") + ["--check"])
  out = capsys.readouterr()
  assert code == 0, out.err[-3000:]
  assert "check (eval): OK" in out.out
  assert "parameters match" in out.out


def test_compile_reports_memory(tmp_path, capsys):
  code, out, err = _run(["--gin_file=experiments/hint_finetune_sni.gin",
                         "--gin_file=tiny.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                         "--check", "--compile"], capsys)
  assert code == 0, err
  assert train_main.LAST_CHECK.values["memory_analysis"]["temp_size_in_bytes"] > 0
  assert "compiled" in out


def _subprocess(args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop(vocab.VOCABULARY_ENV, None)
  return subprocess.run([sys.executable, "-m", "hyper_tasks.train"] + args, cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def test_readme_command_from_repo_root_with_runs_dir(real, tmp_path, capsys,
                                                    monkeypatch):
  """The README's train command, from the repository root with ``runs/`` present,
  as ``python -m`` runs it (the working directory first on ``sys.path``, where gin
  took ``runs/`` for a package)."""
  runs = REPO / "runs"
  made = not runs.exists()
  runs.mkdir(exist_ok=True)
  monkeypatch.chdir(REPO)
  monkeypatch.syspath_prepend(str(REPO))
  try:
    code, out, err = _run(_check_argv(real, "experiments/hint_pretrain_c4.gin",
                                      tmp_path / "r"), capsys)
  finally:
    if made:
      runs.rmdir()
  assert code == 0, err[-3000:]
  assert "check (train): OK" in out


def test_script_check_on_a_2x2_mesh(real, shared_data, tmp_path):
  """``scripts/pretrain.sh --check`` (MODEL_DIR unset) on 4 fake devices as data 2 x
  model 2: the step lowers for that mesh; the script's environment names the data."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHON=sys.executable, TMPDIR=str(tmp_path),
             C4_PATH=str(shared_data / "c4" / "c4-en.sample-1000docs.jsonl"),
             INITIAL_CHECKPOINT_PATH=real["hf_base"])
  env.pop("MODEL_DIR", None)
  env.pop(vocab.VOCABULARY_ENV, None)
  proc = subprocess.run(["bash", str(REPO / "scripts" / "pretrain.sh"), "--check",
                         "--check_devices=4", "--gin.NUM_PARTITIONS=2"], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "check (train): OK" in proc.stdout
  assert "{'data': 2, 'model': 2}" in proc.stdout
  assert not os.path.exists(tmp_path / "hyper_tasks_check_model_dir")


def test_batch_not_divisible_by_the_mesh_fails(real, tmp_path):
  proc = _subprocess(_check_argv(real, "experiments/hint_pretrain_c4.gin",
                                 tmp_path / "r", "--check_devices=4",
                                 "--gin.BATCH_SIZE=6"))
  assert proc.returncode == 1
  assert "batch_size=6 must be divisible by the data-parallel size 4" in proc.stderr
