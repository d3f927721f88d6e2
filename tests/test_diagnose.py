"""``hyper-tasks diagnose``: a tiny HINT experiment checkpoint (random parameters)
gives a JSON report; a checkpoint without a hypernetwork and k larger than a task's
examples are refused with a message naming them."""
import json

import gin
import pytest

from hyper_tasks import cli
from hyper_tasks import diagnose
from hyper_tasks import gin_utils
from tests.evaluation import evallib


@pytest.mark.usefixtures("clean_gin")
def test_cli_diagnose(tmp_path, capsys):
  """``hyper-tasks diagnose`` on a (random-parameter) tiny HINT checkpoint, and
  on a checkpoint without a hypernetwork."""
  files = ["experiments/hint_finetune_sni.gin", "tiny.gin"]
  conf = diagnose._CONFIGURED  # pylint: disable=protected-access
  gin_utils.parse(files, ["MODEL_DIR = 'unused'", f"{conf}.model = %MODEL"],
                  finalize=False)
  model, _ = diagnose.configured()
  gin.clear_config()
  params = evallib.random_params(model)
  good, bad = tmp_path / "hint", tmp_path / "plain"
  cli._params_only_checkpoint(params, str(good))  # pylint: disable=protected-access
  cli._params_only_checkpoint(  # pylint: disable=protected-access
      {k: v for k, v in params.items() if k != "hypernet"}, str(bad))
  flags = [f"--gin_file={f}" for f in files] + [
      "--tasks=esni_def_pos_2_test", "-k", "2", "--batch_size=4"]
  assert cli.main(["diagnose", f"--model_dir={bad}"] + flags) == 2
  err = capsys.readouterr().err
  assert f"checkpoint {bad}" in err and "has no hypernetwork" in err
  gin.clear_config()
  assert cli.main(["diagnose", f"--model_dir={good}"] + flags) == 0
  assert "KL" in capsys.readouterr().out
  result = json.load(open(good / "diagnostics" / "step_0.json"))
  assert len(result["tasks"]) >= 2 and result["checkpoint"].endswith("@0")
  for r in result["tasks"].values():
    assert r["num_examples"] == 2 and r["kl"]["mean"] > 0
    assert "shuffled_instruction" in r["gap"]
  gin.clear_config()
  assert cli.main(["diagnose", f"--model_dir={good}"] + flags
                  + ["--examples_per_task=1000"]) == 2
  assert "is larger" in capsys.readouterr().err
