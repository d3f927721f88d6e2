"""Tests for hyper_tasks.train.opt_state_restore: t5x's Adafactor statistics into our
grouped optimizer state (the restore of our own states is tested in
test_optimizers.py, test_restore.py and test_two_stage.py)."""
import jax
import numpy as np
import pytest

from hyper_tasks.convert import t5x_checkpoint as t5x
from hyper_tasks.train import opt_state_restore
from hyper_tasks.train import optimizers
from hyper_tasks import tree_utils

TINY_FILE = "t5x/test_t5_tiny.checkpoint_0"


# ---- t5x Adafactor statistics into our grouped optimizer state -----------------------


def _t5x_like_state(rng):
  """Params and t5x-layout Adafactor statistics: one factored, one vector."""
  params = {"encoder/layers_0/mlp/wi_0/kernel": np.zeros((256, 130), np.float32),
            "encoder/encoder_norm/scale": np.ones((8,), np.float32),
            "hypernet/out/kernel": np.zeros((8, 4), np.float32)}
  one = np.zeros((1,), np.float32)
  t5x_state = {
      "state/step": np.int32(1000),
      # Factored [256, 130]: row = dim 1 (130), col = dim 0 (256).
      "state/param_states/encoder/layers_0/mlp/wi_0/kernel/v_row":
          rng.uniform(size=(130,)).astype(np.float32),
      "state/param_states/encoder/layers_0/mlp/wi_0/kernel/v_col":
          rng.uniform(size=(256,)).astype(np.float32),
      "state/param_states/encoder/layers_0/mlp/wi_0/kernel/v": one,
      "state/param_states/encoder/layers_0/mlp/wi_0/kernel/m": one,
      "state/param_states/encoder/encoder_norm/scale/v_row": one,
      "state/param_states/encoder/encoder_norm/scale/v_col": one,
      "state/param_states/encoder/encoder_norm/scale/v":
          rng.uniform(size=(8,)).astype(np.float32),
      "state/param_states/encoder/encoder_norm/scale/m": one,
  }
  return tree_utils.unflatten(params), t5x_state


def test_adafactor_state_from_t5x_fills_backbone_only():
  params, t5x_state = _t5x_like_state(np.random.default_rng(0))
  opt = optimizers.adafactor_dual()
  fresh = opt.init(params)
  state = opt_state_restore.fill_group_states(
      fresh, opt_state_restore.t5x_source(t5x_state), ["backbone"], require_all=True)
  counts = optimizers.group_counts(state)
  assert int(counts["backbone"]) == 1000 and int(counts["hypernet"]) == 0
  backbone = state.inner_states["backbone"].inner_state
  wi = "state/param_states/encoder/layers_0/mlp/wi_0/kernel"
  ours = "encoder/layers_0/mlp/wi_0/kernel"
  np.testing.assert_array_equal(tree_utils.flatten(backbone.v_row)[ours],
                                t5x_state[wi + "/v_row"])
  np.testing.assert_array_equal(tree_utils.flatten(backbone.v_col)[ours],
                                t5x_state[wi + "/v_col"])
  np.testing.assert_array_equal(
      backbone.v["encoder"]["encoder_norm"]["scale"],
      t5x_state["state/param_states/encoder/encoder_norm/scale/v"])
  jax.tree.map(np.testing.assert_array_equal, state.inner_states["hypernet"],
               fresh.inner_states["hypernet"])
  # The loaded state drives the optimizer (decay at step 1000, not 0).
  opt.update(jax.tree.map(np.ones_like, params), state, params)
  # Missing statistics are named unless allowed; wrong shapes always are.
  partial = {k: v for k, v in t5x_state.items() if "encoder_norm" not in k}
  with pytest.raises(ValueError, match="no t5x statistics for: .*encoder/encoder_norm"):
    opt_state_restore.fill_group_states(
        fresh, opt_state_restore.t5x_source(partial), ["backbone"], require_all=True)
  opt_state_restore.fill_group_states(
      fresh, opt_state_restore.t5x_source(partial), ["backbone"], require_all=False)
  bad = {**t5x_state, wi + "/v_row": np.zeros((256,), np.float32)}
  with pytest.raises(ValueError,
                     match=r"wi_0/kernel/v_row: t5x \(256,\) vs ours \(130,\)"):
    opt_state_restore.fill_group_states(
        fresh, opt_state_restore.t5x_source(bad), require_all=True)


def test_real_tiny_checkpoint_state_fits_our_adafactor(shared_data):
  path = shared_data / TINY_FILE
  if not path.exists():
    pytest.skip(f"{path} is absent")
  params, opt_state, _ = t5x.load_t5x_checkpoint(str(path))
  opt = optimizers.adafactor_dual()
  state = opt_state_restore.fill_group_states(
      opt.init(tree_utils.unflatten(params)), opt_state_restore.t5x_source(opt_state),
      require_all=True)
  backbone = state.inner_states["backbone"].inner_state
  assert int(backbone.count) == 0
  emb_v = backbone.v["token_embedder"]["embedding"]
  assert emb_v.shape == (32128, 8)
  key = "state/param_states/token_embedder/embedding/v"
  np.testing.assert_array_equal(emb_v, opt_state[key])
