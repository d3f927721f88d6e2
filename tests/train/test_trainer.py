"""train(): learning, TensorBoard scalars, microbatching, frozen groups, guard rails."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests.train import train_testlib as lib
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.train import checkpoints
from hyper_tasks.train import optimizers
from hyper_tasks.train import trainer
from hyper_tasks.train.train_config import Batching, Checkpointing, Summaries

lib.enable_compilation_cache()

T5 = lib.tiny_t5(dropout_rate=0.0)
OPT = optimizers.adafactor_dual(backbone_lr=1e-2)

TRAIN_SCALARS = ("loss", "z_loss", "accuracy", "learning_rate/backbone",
                 "grad_norm/backbone", "param_norm/backbone", "grad_norm",
                 "param_norm", "tokens_per_second", "examples_per_second",
                 "step_time", "flops_per_second", "mfu")


def _train(model_dir, model=T5, optimizer=OPT, num_steps=12, **kwargs):
  kwargs.setdefault("summaries", Summaries(period=1, progress=False))
  kwargs.setdefault("checkpointing", Checkpointing(period=1000))
  kwargs.setdefault("dataset_fn", lib.synthetic_batches)
  return trainer.train(
      model=model, model_dir=str(model_dir), mixture_or_task_name="synthetic",
      num_steps=num_steps, batch_size=4, sequence_lengths=lib.LENGTHS,
      optimizer=optimizer, **kwargs)


def _scalar_tags(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return set(acc.Tags()["scalars"]), acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  return model_dir, _train(model_dir)


def test_loss_falls_and_everything_is_written(trained):
  model_dir, result = trained
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 12
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
  assert int(result.state.step) == 12
  tags, acc = _scalar_tags(model_dir / "train")
  assert set(TRAIN_SCALARS) <= tags, set(TRAIN_SCALARS) - tags
  assert [e.step for e in acc.Scalars("loss")] == list(range(1, 13))
  np.testing.assert_allclose([e.value for e in acc.Scalars("loss")], losses,
                             rtol=1e-6)
  assert 0 < result.history[-1]["mfu"] and result.history[-1]["tokens_per_second"] > 0
  assert os.path.exists(model_dir / "config.gin")
  # The final step is checkpointed even off the period.
  with checkpoints.Checkpointer(str(model_dir), async_save=False) as ckpt:
    assert ckpt.all_steps() == [12]


def test_microbatching_matches_the_full_batch(tmp_path, trained):
  _, full = trained
  micro = _train(tmp_path, num_steps=3, batching=Batching(num_microbatches=2))
  np.testing.assert_allclose([h["loss"] for h in micro.history],
                             [h["loss"] for h in full.history[:3]], rtol=2e-5)


@pytest.mark.parametrize("factor", [None, 2048 * 114])
def test_microbatching_matches_the_full_batch_summed_or_constant(tmp_path, factor):
  """t5x's summed (HINT) and constant normalisers: microbatch gradients add up."""
  model = EncoderDecoderModel(T5.module, loss_normalizing_factor=factor)
  runs = [_train(tmp_path / str(m), model, num_steps=2,
                 batching=Batching(num_microbatches=m))
          for m in (1, 2)]
  np.testing.assert_allclose([h["loss"] for h in runs[1].history],
                             [h["loss"] for h in runs[0].history], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(runs[1].state.params),
                  jax.tree.leaves(runs[0].state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _instruction_groups(dedupe, group=2):
  """synthetic_batches with one instruction per ``group`` consecutive examples,
  sent ``[B, Lh]`` (repeated) or ``[B / group, Lh]`` (deduped)."""
  def dataset_fn(**kwargs):
    for batch in lib.synthetic_batches(**kwargs):
      hyper = batch["hyper_encoder_input_tokens"][::group]
      batch["hyper_encoder_input_tokens"] = (
          hyper if dedupe else np.repeat(hyper, group, axis=0))
      yield batch
  return dataset_fn


def test_grouped_instructions_match_repeated_ones(tmp_path):
  model = lib.tiny_hint(dropout_rate=0.0)
  runs = {}
  # Grouped and microbatched: whole groups must go to one microbatch.
  for name, dedupe, micro in (("full", False, 1), ("grouped_micro", True, 2)):
    result = _train(tmp_path / name, model, num_steps=3,
                    batching=Batching(num_microbatches=micro),
                    dataset_fn=_instruction_groups(dedupe))
    runs[name] = result
  losses = {k: [h["loss"] for h in r.history] for k, r in runs.items()}
  np.testing.assert_allclose(losses["grouped_micro"], losses["full"], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(runs["grouped_micro"].state.params),
                  jax.tree.leaves(runs["full"].state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The hypernetwork really runs on half the rows: fewer FLOPs for the same loss.
  params = runs["full"].state.params
  batches = {d: next(_instruction_groups(d)()) for d in (False, True)}

  def flops(batch):
    cost = jax.jit(model.loss_fn).lower(params, batch).cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  assert flops(batches[True]) < 0.9 * flops(batches[False])


def test_model_flops_count_the_hypernetwork_once_per_group():
  from hyper_tasks.models import flops as flops_lib
  from hyper_tasks.train import summaries
  model = lib.tiny_hint(dropout_rate=0.0)
  b, lh = 4, lib.LENGTHS["hyper_inputs"]
  enc, dec = lib.LENGTHS["inputs"], lib.LENGTHS["targets"]

  def step(rows):
    shapes = {"encoder_input_tokens": (b, enc), "decoder_target_tokens": (b, dec),
              "hyper_encoder_input_tokens": (rows, lh)}
    return summaries.step_flops(None, model, shapes)
  f = flops_lib.model_flops(model, enc, dec, lh)
  assert step(b) == pytest.approx(3 * b * f.uncached())
  assert step(b // 2) == pytest.approx(3 * b * (f.per_instance + f.per_task / 2))
  assert step(b // 2) < step(b)


def test_grouped_instructions_bad_sizes_are_clear_errors(tmp_path):
  model = lib.tiny_hint(dropout_rate=0.0)
  with pytest.raises(ValueError, match="instruction_group_size=3"):
    _train(tmp_path / "a", model, num_steps=1, dataset_fn=None,
           batching=Batching(instruction_group_size=3))
  with pytest.raises(ValueError, match="cannot serve 4 examples"):
    _train(tmp_path / "b", model, num_steps=1, dataset_fn=_odd_groups)


def _odd_groups(**kwargs):
  for batch in lib.synthetic_batches(**kwargs):
    batch["hyper_encoder_input_tokens"] = batch["hyper_encoder_input_tokens"][:3]
    yield batch


def test_frozen_backbone_does_not_change_and_holds_no_state(tmp_path):
  model = lib.tiny_hint(dropout_rate=0.0)
  optimizer = optimizers.frozen_backbone(hypernet_lr=1e-2)
  seen = {}

  def hook(step, state, metrics):
    del metrics
    if step == 1:
      seen["first"] = jax.device_get(state.params)

  result = _train(tmp_path, model, optimizer, num_steps=3, hooks=[hook])
  first, last = seen["first"], jax.device_get(result.state.params)
  for name in ("encoder", "decoder", "token_embedder"):
    for a, b in zip(jax.tree.leaves(first[name]), jax.tree.leaves(last[name])):
      np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(first["hypernet"]), jax.tree.leaves(last["hypernet"]))]
  assert all(changed)
  inner = result.state.opt_state.inner_states
  assert jax.tree.leaves(inner["backbone"]) == []
  assert jax.tree.leaves(inner["hypernet"])
  assert "grad_norm/backbone" not in result.history[-1]
  assert result.history[-1]["learning_rate/backbone"] == 0.0


def _nan_after(count):
  return lambda step: jnp.where(step >= count, jnp.nan, 1e-2)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  optimizer = optimizers.make_optimizer(
      [optimizers.ParamGroup("all", "", _nan_after(3))])
  with pytest.raises(FloatingPointError, match=r"at step 4\b"):
    _train(tmp_path, optimizer=optimizer, num_steps=8,
           checkpointing=Checkpointing(period=2, async_save=False))
  with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    assert ckpt.all_steps() == [2]
    state, _ = ckpt.restore()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_unwritable_model_dir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="MODEL_DIR .* is not writable"):
    trainer.check_model_dir(str(blocker / "run"))
  with pytest.raises(ValueError, match="MODEL_DIR is not set"):
    trainer.check_model_dir("")


def test_bad_batch_size_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="num_microbatches=3"):
    _train(tmp_path, num_steps=1, batching=Batching(num_microbatches=3))


def test_bfloat16_compute_keeps_float32_state(tmp_path, trained):
  _, full = trained
  result = _train(tmp_path, lib.tiny_t5(dropout_rate=0.0, dtype=jnp.bfloat16),
                  num_steps=2)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(result.state.params))
  losses = [h["loss"] for h in result.history]
  # Same data and init: close to the float32 run, but computed in bfloat16.
  np.testing.assert_allclose(losses, [h["loss"] for h in full.history[:2]], rtol=0.05)
  assert losses[0] != full.history[0]["loss"]


def test_train_compute_dtype_points_at_the_model_dtype(tmp_path):
  with pytest.raises(ValueError, match="models.make_model.dtype"):
    _train(tmp_path, num_steps=1, compute_dtype="bfloat16")
