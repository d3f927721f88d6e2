"""Every gin experiment parses and trains two steps with tiny.gin; gin errors are clear."""
import glob
import os

import gin
import numpy as np
import pytest

from tests.train import train_testlib as lib
from hyper_tasks import gin_utils
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import sni_tasks
from hyper_tasks.models import builders
from hyper_tasks.train import initial_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import trainer

lib.enable_compilation_cache()

GIN_DIR = gin_utils.repo_gin_dir()
EXPERIMENTS = sorted(os.path.relpath(p, GIN_DIR) for p in
                     glob.glob(os.path.join(GIN_DIR, "experiments", "*.gin")))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_repo_gin_dir_has_every_layer():
  assert GIN_DIR is not None
  for layer in ("models", "peft", "hypernets", "runs", "optim", "restore",
                "experiments"):
    assert os.listdir(os.path.join(GIN_DIR, layer)), layer
  for run in ("pretrain_c4", "finetune_sni", "finetune_t0", "eval_sni", "eval_t0",
              "infer"):
    with open(os.path.join(GIN_DIR, "runs", f"{run}.gin")) as f:
      head = f.read().split("\n\n")[0]
    assert head.startswith("# Run:") and "REQUIRED" in head, run
  assert len(EXPERIMENTS) >= 9


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_two_tiny_steps(experiment, tmp_path):
  gin_utils.parse([experiment, "tiny.gin"], [f"MODEL_DIR = '{tmp_path}'"])
  register.register_all()
  result = trainer.train()
  assert int(result.state.step) == 2
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 2 and np.isfinite(losses).all()
  assert os.path.exists(tmp_path / "config.gin")
  operative = (tmp_path / "config.gin").read_text()
  assert "TRAIN_STEPS = 2" in operative and "train.num_steps" in operative


HINT_EXPERIMENTS = [e for e in EXPERIMENTS
                    if os.path.basename(e).startswith("hint_")]


@pytest.mark.parametrize("experiment", HINT_EXPERIMENTS)
def test_hint_experiments_default_to_hints_values(experiment):
  """README "Differences from HINT's code": each option at HINT's value."""
  gin_utils.parse([experiment], ["MODEL_DIR = '/tmp/unused'",
                                 "INITIAL_CHECKPOINT_PATH = '/tmp/unused'"])
  model = builders.make_model()  # the module only: no parameters are made
  adapter = model.module.peft_spec.adapter
  assert adapter.bias and adapter.activation == "gelu"
  assert model.loss_normalizing_factor == "sum"  # t5x's None
  assert not model.module.hypernet.separate_encoder  # HINT shares its encoder
  lrs = {g.name: g.learning_rate for g in optimizers.adafactor_dual().groups}
  assert lrs == {"hypernet": 1e-3, "backbone": 1e-3}
  stage1 = "pretrain" in experiment
  restore = initial_restore.InitialRestore()
  assert restore.optimizer_state == ("restore_pretrained" if stage1
                                     else "full_restore")
  assert restore.hypernet_encoder_from_backbone == stage1
  if "sni" in experiment:  # Tk-Instruct's budget: the task feature lengths
    sni_tasks.register_sni(sni_tasks.EMBEDDED_SNI_DIR, prefix="probe",
                           formats=("def",))
    assert registry._KEYS["probe_def_test"][-1] == (("hyper_inputs", 1024),
                                                    ("inputs", 1024))


def test_unknown_binding_names_it():
  with pytest.raises(gin_utils.GinConfigError, match="train.num_stepz"):
    gin_utils.parse(["experiments/hint_finetune_sni.gin", "tiny.gin"],
                    ["MODEL_DIR = '/tmp/x'", "train.num_stepz = 3"])


def test_unknown_configurable_and_file_are_named(tmp_path):
  with pytest.raises(gin_utils.GinConfigError, match="no_such_fn"):
    gin_utils.parse([], ["no_such_fn.x = 1"])
  gin.clear_config()
  bad = tmp_path / "bad.gin"
  bad.write_text("train.bogus_parameter = 1\n")
  with pytest.raises(gin_utils.GinConfigError, match="bad.gin"):
    gin_utils.parse([str(bad)])
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match="not found"):
    gin_utils.parse(["experiments/nope.gin"])


def test_missing_required_macro_is_named():
  with pytest.raises(gin_utils.GinConfigError, match="MODEL_DIR"):
    gin_utils.parse(["experiments/hint_finetune_sni.gin", "tiny.gin"])


def test_flag_parsing():
  bindings, rest = gin_utils.split_gin_args(
      ["--gin_file=a.gin", "--gin.MODEL_DIR='/x'", "--gin.TRAIN_STEPS", "5"])
  assert bindings == ["MODEL_DIR = '/x'", "TRAIN_STEPS = 5"]
  assert rest == ["--gin_file=a.gin"]
