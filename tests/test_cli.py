"""The hyper-tasks console script: train -> eval -> infer on a tiny experiment,
checkpoint conversion round trips, the data subcommands and the cache."""
import json
import os

import gin
import jax
import numpy as np
import pytest

from tests.train import train_testlib as lib
from hyper_tasks import cli
from hyper_tasks.convert import hf
from hyper_tasks.data import registry
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.train import checkpoint_formats
from hyper_tasks import tree_utils

lib.enable_compilation_cache()


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_usage(capsys):
  assert cli.main([]) == 2
  assert cli.main(["--help"]) == 0
  assert "hyper-tasks convert" in capsys.readouterr().out
  assert cli.main(["bogus"]) == 2


def test_list_delegates_to_the_data_cli(capsys):
  assert cli.main(["list", "toy_*"]) == 0
  assert "toy_train" in capsys.readouterr().out


def test_cache_builds_then_does_nothing_and_refuses_other_lengths(tmp_path,
                                                                  capsys):
  args = ["cache", "--tasks=esni_def_(train|test)", f"--output_dir={tmp_path}",
          "--workers=0", "--lengths=48,24,8"]
  try:
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "esni_def_train: train 160, validation 51" in out
    assert f"cached 2 tasks -> {tmp_path}" in out
    assert os.path.exists(tmp_path / "esni_def_test" / "COMPLETED")
    assert cli.main(args) == 0  # Complete: nothing to do.
    assert cli.main(args[:-1] + ["--lengths=48,24,16"]) == 1
    err = capsys.readouterr().err
    assert "'sequence_lengths'" in err and str(tmp_path) in err
  finally:
    registry.unregister_all()


def test_train_eval_infer(tmp_path, capsys):
  model_dir = str(tmp_path / "run")
  experiment = ["--gin_file=experiments/t5_concat_finetune_sni.gin",
                "--gin_file=tiny.gin", f"--gin.MODEL_DIR='{model_dir}'"]
  assert cli.main(["train"] + experiment) == 0
  assert "finished step 2" in capsys.readouterr().out
  assert os.path.exists(os.path.join(model_dir, "config.gin"))

  gin.clear_config()
  eval_flags = ["--gin_file=experiments/t5_concat_finetune_sni.gin",
                "--gin_file=runs/eval_sni.gin", "--gin_file=tiny.gin",
                f"--gin.MODEL_DIR='{model_dir}'",
                "--gin.TINY_EVAL_MIXTURE_OR_TASK_NAMES=['esni_concat_def_pos_2_test']",
                "--gin.MAX_EXAMPLES=2", "--gin.EVAL_BATCH_SIZE=4"]
  assert cli.main(["eval"] + eval_flags) == 0
  reports = report_lib.read_reports(model_dir)
  assert list(reports) == [2]
  assert reports[2]["generation"]

  gin.clear_config()
  infer_flags = ["--gin_file=experiments/t5_concat_finetune_sni.gin",
                 "--gin_file=runs/infer.gin", "--gin_file=tiny.gin",
                 f"--gin.MODEL_DIR='{model_dir}'",
                 "--gin.INFER_MIXTURE_OR_TASK_NAME='esni_concat_def_pos_2_test'",
                 "--gin.MAX_EXAMPLES=2", "--gin.INFER_BATCH_SIZE=4"]
  assert cli.main(["infer"] + infer_flags) == 0
  path = os.path.join(model_dir, "inference",
                      "esni_concat_def_pos_2_test_test_step2.jsonl")
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  assert rows and all("prediction" in r for r in rows)


def _tiny_params(cfg, seed=0):
  from hyper_tasks.models.model_api import EncoderDecoderModel  # pylint: disable=g-import-not-at-top
  from hyper_tasks.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  model = EncoderDecoderModel(Transformer(cfg))
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  return jax.device_get(model.get_initial_variables(
      jax.random.PRNGKey(seed), shapes, boxed=False)["params"])


@pytest.mark.parametrize("tied", [False, True])
def test_convert_hf_ours_hf_round_trip(tmp_path, tied):
  cfg = lib.tiny_config(tie_word_embeddings=tied,
                        feed_forward_proj="relu" if tied else "gated-gelu")
  params = _tiny_params(cfg)
  hf.save_t5(params, cfg, str(tmp_path / "hf"))
  assert cli.main(["convert", "hf-to-ours", str(tmp_path / "hf"),
                   str(tmp_path / "ours")]) == 0
  ckpt = checkpoint_formats.read_checkpoint(str(tmp_path / "ours"))
  flat, step = ckpt.params, ckpt.step
  assert step == 0
  expected = tree_utils.flatten(params)
  assert sorted(flat) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=k)
  assert cli.main(["convert", "ours-to-hf", str(tmp_path / "ours"),
                   str(tmp_path / "hf2")]) == 0
  module, back = hf.load_t5(str(tmp_path / "hf2"))
  for field in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff",
                "num_encoder_layers", "num_decoder_layers", "feed_forward_proj",
                "tie_word_embeddings"):
    assert getattr(module.config, field) == getattr(cfg, field), field
  for k, v in tree_utils.flatten(back).items():
    np.testing.assert_array_equal(v, expected[k], err_msg=k)
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    cli.main(["convert", "hf-to-ours", str(tmp_path / "hf"), str(tmp_path / "ours")])


def test_convert_t5x_to_ours(shared_data, tmp_path):
  path = shared_data / "t5x" / "test_t5_tiny.checkpoint_0"
  if not path.exists():
    pytest.skip(f"{path} is absent")
  from hyper_tasks.convert import t5x_checkpoint  # pylint: disable=g-import-not-at-top
  expected, _, _ = t5x_checkpoint.load_t5x_checkpoint(str(path))
  assert cli.main(["convert", "t5x-to-ours", str(path), str(tmp_path)]) == 0
  flat = checkpoint_formats.read_checkpoint(str(tmp_path)).params
  assert sorted(flat) == sorted(expected)
  np.testing.assert_array_equal(np.asarray(flat["encoder/layers_0/mlp/wo/kernel"]),
                                expected["encoder/layers_0/mlp/wo/kernel"])
