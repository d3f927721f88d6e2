"""HINT's two stages at tiny size, per-group optimizer restore, and t5x restore.

Stage 1 trains a tiny HINT model on the embedded C4-style corpus; stage 2 finetunes
on toy instruction tasks from that checkpoint with ``restore_pretrained`` semantics
(backbone and its Adafactor state from stage 1, hypernetwork and its state fresh,
with a step offset) and evaluates during training.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests.train import train_testlib as lib
from hyper_tasks.models.config import T5Config
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.transformer import Transformer
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import train_eval
from hyper_tasks.train import train_state as ts_lib
from hyper_tasks import tree_utils
from hyper_tasks.train import trainer
from hyper_tasks.train.train_config import Checkpointing, Summaries

lib.enable_compilation_cache()

STEPS = 8
OFFSET = 3


def schedule(step):
  """Warmup whose value tells which counter a group is at."""
  return 1e-2 * jnp.minimum(1.0, (step + 1.0) / 20.0)


MODEL = lib.tiny_hint(dropout_rate=0.0)
OPT = optimizers.adafactor_dual(backbone_lr=schedule, hypernet_lr=schedule,
                                hypernet_step_offset=OFFSET)
RESTORE_PRETRAINED = dict(fallback_to_scratch=True, reinit_patterns=("^hypernet/",),
                          optimizer_state="restore_pretrained")


def _train(model_dir, task, **kwargs):
  return trainer.train(
      model=MODEL, model_dir=str(model_dir), mixture_or_task_name=task,
      num_steps=STEPS, batch_size=4, sequence_lengths=lib.LENGTHS, optimizer=OPT,
      summaries=Summaries(period=1, progress=False),
      checkpointing=Checkpointing(period=1000), **kwargs)


def _falls(history):
  losses = [h["loss"] for h in history]
  return np.mean(losses[-3:]) < np.mean(losses[:3]), losses


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  root = tmp_path_factory.mktemp("two_stage")
  stage1 = _train(root / "stage1", "embedded_pretrain")
  seen = {}

  def hook(step, state, metrics):
    seen[step] = {k: float(v) for k, v in metrics.items()
                  if k.startswith("learning_rate/")}

  evaluation = train_eval.TrainEval("toy_test_seen", batch_size=4, max_examples=4)
  stage2 = _train(root / "stage2", "toy_train", hooks=[hook],
                  initial_restore=initial_restore.InitialRestore(
                      path=str(root / "stage1"), **RESTORE_PRETRAINED),
                  eval_period=STEPS, evaluation=evaluation)
  return root, stage1, stage2, seen


def test_loss_falls_in_both_stages(stages):
  _, stage1, stage2, _ = stages
  for result in (stage1, stage2):
    falls, losses = _falls(result.history)
    assert falls, losses


def test_stage2_reports_what_it_restored(stages):
  root, _, stage2, _ = stages
  report = stage2.restore_report
  assert report.reinitialised and all(k.startswith("hypernet/")
                                       for k in report.reinitialised)
  assert report.loaded and not any(k.startswith("hypernet/") for k in report.loaded)
  assert "token_embedder/embedding" in report.loaded
  saved = json.loads((root / "stage2" / "restore_report.json").read_text())
  assert saved["reinitialised"] == report.reinitialised
  assert any("'hypernet': fresh" in n for n in saved["notes"])


def test_hypernet_counter_is_fresh_with_offset_backbone_continues(stages):
  _, _, stage2, seen = stages
  # Stage 2, step 1: the backbone's counter continues at 8, the hypernet's is 0.
  assert seen[1]["learning_rate/backbone"] == pytest.approx(float(schedule(STEPS)))
  assert seen[1]["learning_rate/hypernet"] == pytest.approx(float(schedule(0)))
  # Its schedule stays at step 0 for OFFSET updates, then advances.
  assert seen[OFFSET + 2]["learning_rate/hypernet"] == pytest.approx(
      float(schedule(1)))
  counts = optimizers.group_counts(stage2.state.opt_state)
  assert int(counts["backbone"]) == 2 * STEPS and int(counts["hypernet"]) == STEPS


def test_events_and_eval_reports(stages):
  root, _, _, _ = stages
  for stage in ("stage1", "stage2"):
    acc = event_accumulator.EventAccumulator(str(root / stage / "train"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss", "z_loss", "accuracy", "learning_rate/hypernet",
                "learning_rate/backbone", "grad_norm/hypernet", "param_norm/backbone",
                "tokens_per_second", "examples_per_second", "step_time",
                "flops_per_second", "mfu"):
      assert tag in tags, (stage, tag)
  assert (root / "stage2" / "eval_results" / f"step_{STEPS}.json").exists()
  acc = event_accumulator.EventAccumulator(str(root / "stage2" / "eval"))
  acc.Reload()
  assert acc.Tags()["scalars"]


def test_restore_pretrained_state_surgery(stages):
  """Right after the restore: backbone params/statistics from stage 1, hypernet fresh."""
  root, stage1, _, _ = stages
  layout = ts_lib.make_layout(MODEL, OPT, _one_device_mesh(),
                              ts_lib.init_input_shapes(lib.LENGTHS))
  fresh = ts_lib.init_state(MODEL, OPT, layout,
                            ts_lib.init_input_shapes(lib.LENGTHS), seed=1)
  cfg = initial_restore.InitialRestore(path=str(root / "stage1"), **RESTORE_PRETRAINED)
  state, _, _ = initial_restore.restore_initial(cfg, OPT, layout, fresh)
  old = tree_utils.flatten(jax.device_get(stage1.state.params))
  new = tree_utils.flatten(jax.device_get(state.params))
  init = tree_utils.flatten(jax.device_get(fresh.params))
  for key, value in new.items():
    expected = init[key] if key.startswith("hypernet/") else old[key]
    np.testing.assert_array_equal(value, expected, err_msg=key)
  inner = state.opt_state.inner_states
  old_inner = stage1.state.opt_state.inner_states
  assert int(inner["hypernet"].inner_state.count) == 0
  assert int(inner["backbone"].inner_state.count) == STEPS
  assert all(not np.any(x) for x in jax.tree.leaves(inner["hypernet"].inner_state.v))
  for a, b in zip(jax.tree.leaves(inner["backbone"].inner_state.v),
                  jax.tree.leaves(old_inner["backbone"].inner_state.v)):
    np.testing.assert_array_equal(a, b)


def _one_device_mesh():
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


# ---- the real t5x test checkpoint ----------------------------------------------------

T5X_TINY = "t5x/test_t5_tiny.checkpoint_0"


def test_restore_t5x_checkpoint_and_train(shared_data, tmp_path):
  path = shared_data / T5X_TINY
  if not path.exists():
    pytest.skip(f"{path} is absent")
  from hyper_tasks.convert import t5x_checkpoint  # pylint: disable=g-import-not-at-top
  ckpt_params, ckpt_opt, _ = t5x_checkpoint.load_t5x_checkpoint(str(path))
  cfg = T5Config(vocab_size=32128, d_model=8, num_heads=4, d_kv=3, d_ff=16,
                 num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
  model = EncoderDecoderModel(Transformer(cfg))
  optimizer = optimizers.adafactor_dual(backbone_lr=1e-3)
  restore = initial_restore.InitialRestore(path=str(path),
                                           optimizer_state="full_restore")
  shapes = ts_lib.init_input_shapes(lib.LENGTHS)
  layout = ts_lib.make_layout(model, optimizer, _one_device_mesh(), shapes)
  fresh = ts_lib.init_state(model, optimizer, layout, shapes, seed=0)
  state, report, _ = initial_restore.restore_initial(restore, optimizer, layout, fresh)
  assert sorted(report.loaded) == sorted(ckpt_params) and not report.unused
  for key, value in tree_utils.flatten(jax.device_get(state.params)).items():
    np.testing.assert_array_equal(value, ckpt_params[key], err_msg=key)
  v = tree_utils.flatten(jax.device_get(
      state.opt_state.inner_states["backbone"].inner_state.v))
  key = "encoder/layers_0/mlp/wi_0/kernel"
  np.testing.assert_array_equal(v[key], ckpt_opt[f"state/param_states/{key}/v"])

  result = trainer.train(
      model=model, model_dir=str(tmp_path), mixture_or_task_name="synthetic",
      num_steps=2, batch_size=4, sequence_lengths=lib.LENGTHS, optimizer=optimizer,
      initial_restore=restore, dataset_fn=lib.synthetic_batches,
      summaries=Summaries(period=1, progress=False),
      checkpointing=Checkpointing(period=1000))
  assert int(result.state.step) == 2
  assert np.isfinite([h["loss"] for h in result.history]).all()
  with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    assert ckpt.latest_step() == 2
  assert os.path.exists(tmp_path / "restore_report.json")


def test_restore_pretrained_from_an_hf_t5(tmp_path):
  """HINT recipe step 1: an HF T5 backbone under a fresh hypernetwork."""
  from hyper_tasks.convert import hf  # pylint: disable=g-import-not-at-top
  cfg = lib.tiny_config(dropout_rate=0.0)
  t5 = lib.tiny_t5(dropout_rate=0.0)
  shapes = ts_lib.init_input_shapes(lib.LENGTHS)
  backbone = jax.device_get(t5.get_initial_variables(
      jax.random.PRNGKey(7), shapes, boxed=False)["params"])
  hf.save_t5(backbone, cfg, str(tmp_path / "hf"))
  layout = ts_lib.make_layout(MODEL, OPT, _one_device_mesh(), shapes)
  fresh = ts_lib.init_state(MODEL, OPT, layout, shapes, seed=1)
  restore = initial_restore.InitialRestore(path=str(tmp_path / "hf"),
                                           **RESTORE_PRETRAINED)
  state, report, notes = initial_restore.restore_initial(restore, OPT, layout, fresh)
  expected = tree_utils.flatten(backbone)
  assert sorted(report.loaded) == sorted(expected) and not report.unused
  new = tree_utils.flatten(jax.device_get(state.params))
  init = tree_utils.flatten(jax.device_get(fresh.params))
  for key, value in new.items():
    np.testing.assert_array_equal(
        value, init[key] if key.startswith("hypernet/") else expected[key], key)
  assert any("HF checkpoints hold no optimizer state" in n for n in notes)
