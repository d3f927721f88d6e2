"""Tests for hyper_tasks.train.optimizers against a hand-written numpy Adafactor."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyper_tasks.train import opt_state_restore
from hyper_tasks.train import optimizers as opt
from hyper_tasks import tree_utils

# --------------------------------------------------------------------------------------
# Numpy reference: t5x's Adafactor for vectors and matrices, written out per case.
# --------------------------------------------------------------------------------------


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


class RefAdafactor:
  """One parameter, float64, following t5x/adafactor.py's apply_param_gradient."""

  def __init__(self, param, lr_fn, step_offset=0, beta1=None, weight_decay=0.0,
               min_dim=128):
    self.p = np.asarray(param, np.float64)
    self.lr_fn, self.offset, self.beta1, self.wd = lr_fn, step_offset, beta1, weight_decay
    self.step = 0
    shape = self.p.shape
    # Factor a matrix iff its smaller dim is >= min_dim. For a [n, k] matrix with
    # n >= k the "row" statistics are indexed by k (the smaller dim) and the "column"
    # statistics by n (the larger).
    self.factored = len(shape) == 2 and min(shape) >= min_dim
    if self.factored:
      self.big = 0 if shape[0] > shape[1] else 1  # ties: the later dim is "col".
      if shape[0] == shape[1]:
        self.big = 1
      small = 1 - self.big
      self.r = np.zeros(shape[small])  # v_row: one entry per index of the small dim
      self.c = np.zeros(shape[self.big])  # v_col: one entry per index of the big dim
    else:
      self.v = np.zeros(shape)
    self.m = np.zeros(shape)

  def apply(self, grad):
    g = np.asarray(grad, np.float64)
    s = max(0, self.step - self.offset)
    beta2 = 1.0 - (s + 1.0) ** -0.8
    g2 = g * g + 1e-30
    if self.factored:
      # Put the big dim first so the formulas read the same for both layouts.
      g2_bs = g2 if self.big == 0 else g2.T
      g_bs = g if self.big == 0 else g.T
      self.r = beta2 * self.r + (1 - beta2) * g2_bs.mean(axis=0)
      self.c = beta2 * self.c + (1 - beta2) * g2_bs.mean(axis=1)
      y_bs = g_bs / np.sqrt(self.r / self.r.mean())[None, :] / np.sqrt(self.c)[:, None]
      y = y_bs if self.big == 0 else y_bs.T
    else:
      self.v = beta2 * self.v + (1 - beta2) * g2
      y = g / np.sqrt(self.v)
    y = y / max(1.0, _rms(y) / 1.0)
    u = self.lr_fn(s) * max(_rms(self.p), 1e-3) * y
    if self.beta1 is not None:
      self.m = self.beta1 * self.m + (1 - self.beta1) * u
      u = self.m
    self.p = (1 - self.wd) * self.p - u
    self.step += 1
    return self.p


SHAPES = {
    "factored": (256, 130),     # rows 130 >= 128: factored, col dim = 0.
    "factored_t": (130, 256),   # the same, transposed: col dim = 1.
    "vector": (130,),
    "small": (8, 12),           # 2D but below min_dim_size_to_factor.
}


def _params_and_grads(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s).astype(np.float32) * 0.05 for k, s in SHAPES.items()}
  grads = [{k: (rng.normal(size=s) * rng.uniform(0.1, 3.0, size=s[-1:])).astype(
      np.float32) for k, s in SHAPES.items()} for _ in range(num_steps)]
  return params, grads


@pytest.mark.parametrize("kwargs", [
    {},
    {"beta1": 0.9, "weight_decay": 1e-2, "step_offset": 2},
])
def test_adafactor_matches_numpy_reference(kwargs):
  num_steps = 6
  schedule = opt.rsqrt_decay(base_lr=0.5, warmup_steps=3)
  params, grads = _params_and_grads(num_steps)
  tx = opt.adafactor(schedule, **kwargs)
  state = tx.init(params)
  refs = {k: RefAdafactor(p, lambda s: 0.5 / np.sqrt(max(s, 3)), **kwargs)
          for k, p in params.items()}
  update = jax.jit(tx.update)
  p = jax.tree.map(jnp.asarray, params)
  for t in range(num_steps):
    updates, state = update(grads[t], state, p)
    p = optax.apply_updates(p, updates)
    for k, ref in refs.items():
      expected = ref.apply(grads[t][k])
      np.testing.assert_allclose(np.asarray(p[k]), expected, rtol=2e-5, atol=1e-7,
                                 err_msg=f"{k} at step {t}")
  assert int(state.count) == num_steps


def test_state_layout_matches_t5x():
  params, _ = _params_and_grads(0)
  state = opt.adafactor(1e-2).init(params)
  assert state.v_row["factored"].shape == (130,)
  assert state.v_col["factored"].shape == (256,)
  assert state.v["factored"].shape == (1,)
  assert state.v_row["factored_t"].shape == (130,)
  assert state.v_col["factored_t"].shape == (256,)
  for k in ("vector", "small"):
    assert state.v[k].shape == SHAPES[k]
    assert state.v_row[k].shape == state.v_col[k].shape == (1,)
  assert all(m.shape == (1,) for m in jax.tree.leaves(state.m))  # beta1=None.
  assert opt.factored_dims((4, 256, 130)) == (2, 1)
  assert opt.factored_dims((128, 128)) == (0, 1)
  assert opt.factored_dims((127, 4096)) is None


def test_first_step_closed_form():
  # Step 0: beta2 = 0, so v = g^2 + eps and y = sign(g); rms(y) = 1 -> no clipping.
  rng = np.random.default_rng(1)
  p = rng.normal(size=(8, 12)).astype(np.float32)
  g = rng.normal(size=(8, 12)).astype(np.float32)
  tx = opt.adafactor(0.1)
  u, _ = tx.update(g, tx.init(p), p)
  expected = -0.1 * _rms(p) * np.sign(g)
  np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5)
  # A tiny parameter is scaled by epsilon2 instead.
  u, _ = tx.update(g, tx.init(p * 0), p * 0)
  np.testing.assert_allclose(np.asarray(u), -0.1 * 1e-3 * np.sign(g), rtol=1e-5)


def test_bfloat16_params_keep_float32_statistics():
  p = jnp.ones((256, 130), jnp.bfloat16)
  tx = opt.adafactor(1e-2)
  state = tx.init(p)
  u, state = tx.update(jnp.ones_like(p), state, p)
  assert u.dtype == jnp.bfloat16
  assert state.v_row.dtype == state.v_col.dtype == jnp.float32


def test_step_offset_restarts_decay_and_schedule():
  schedule = opt.linear_warmup_rsqrt_decay(1.0, warmup_steps=4)
  params, grads = _params_and_grads(1)
  shifted = opt.adafactor(schedule, step_offset=3)
  plain = opt.adafactor(schedule)
  base = plain.init(params)
  # Counter 5 with offset 3 behaves as counter 2 without offset...
  u1, _ = shifted.update(grads[0], base._replace(count=jnp.int32(5)), params)
  u2, _ = plain.update(grads[0], base._replace(count=jnp.int32(2)), params)
  jax.tree.map(np.testing.assert_array_equal, u1, u2)
  # ...and below the offset it is clamped at step 0 (not negative).
  u3, _ = shifted.update(grads[0], base._replace(count=jnp.int32(1)), params)
  u4, _ = plain.update(grads[0], base, params)
  jax.tree.map(np.testing.assert_array_equal, u3, u4)


def test_schedules():
  r = opt.rsqrt_decay(2.0, 100)
  assert float(r(0)) == pytest.approx(0.2)
  assert float(r(400)) == pytest.approx(0.1)
  w = opt.linear_warmup_rsqrt_decay(1.0, 100)
  assert float(w(0)) == 0.0
  assert float(w(50)) == pytest.approx(0.5 / 10)
  assert float(w(400)) == pytest.approx(1 / 20)
  c = opt.warmup_cosine_decay(1.0, decay_steps=110, warmup_steps=10, end_lr=0.1)
  assert float(c(5)) == pytest.approx(0.5)
  assert float(c(10)) == pytest.approx(1.0)
  assert float(c(60)) == pytest.approx(0.55)
  assert float(c(500)) == pytest.approx(0.1)
  assert float(opt.constant(3e-4)(12345)) == pytest.approx(3e-4)


# --------------------------------------------------------------------------------------
# Parameter groups.
# --------------------------------------------------------------------------------------


def _model_params():
  rng = np.random.default_rng(2)
  shapes = {
      "token_embedder/embedding": (32, 8),
      "encoder/layers_0/attention/query/kernel": (8, 12),
      "encoder/layers_0/mlp/wi_0/kernel": (8, 16),
      "decoder/logits_dense/kernel": (8, 32),
      "hypernet/encoder/layers_0/mlp/wi_0/kernel": (8, 16),
      "hypernet/out/kernel": (8, 20),
      "peft/prompt/embedding": (4, 8),
  }
  flat = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  return tree_utils.unflatten(flat)


def _grads(params, seed=3):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def test_first_matching_group_wins_and_unmatched_is_an_error():
  params = _model_params()
  groups = [opt.ParamGroup("hyper_mlp", r"^hypernet/.*/mlp/", 1e-3),
            opt.ParamGroup("hypernet", r"^hypernet/", 1e-4),
            opt.ParamGroup("backbone", r"^(encoder|decoder|token_embedder)/", 1e-3)]
  with pytest.raises(ValueError, match="peft/prompt/embedding"):
    opt.group_of(params, groups)
  with pytest.raises(ValueError, match="peft/prompt/embedding"):
    opt.make_optimizer(groups).init(params)
  mapping = opt.group_of(params, groups, default_group={"name": "rest",
                                                        "learning_rate": 1e-2})
  assert mapping == {
      "decoder/logits_dense/kernel": "backbone",
      "encoder/layers_0/attention/query/kernel": "backbone",
      "encoder/layers_0/mlp/wi_0/kernel": "backbone",
      "hypernet/encoder/layers_0/mlp/wi_0/kernel": "hyper_mlp",
      "hypernet/out/kernel": "hypernet",
      "peft/prompt/embedding": "rest",
      "token_embedder/embedding": "backbone",
  }


def test_groups_match_standalone_adafactor_per_group():
  params = _model_params()
  grads = _grads(params)
  grouped = opt.adafactor_dual(backbone_lr=1e-3, hypernet_lr=1e-1)
  state = grouped.init(params)
  updates, state = grouped.update(grads, state, params)
  for name, lr in (("hypernet", 1e-1), ("backbone", 1e-3)):
    sel = {k: v for k, v in tree_utils.flatten(params).items()
           if grouped.group_of(params)[k] == name}
    g = {k: tree_utils.flatten(grads)[k] for k in sel}
    tx = opt.adafactor(lr)
    expected, _ = tx.update(g, tx.init(sel), sel)
    got = {k: tree_utils.flatten(updates)[k] for k in sel}
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_frozen_group_holds_no_state_and_gets_zero_updates():
  params = _model_params()
  grouped = opt.frozen_backbone(hypernet_lr=1e-2)
  mapping = grouped.group_of(params)
  frozen = [k for k, g in mapping.items() if g == "backbone"]
  assert sorted(frozen) == sorted(k for k in mapping
                                  if not k.startswith(("hypernet/", "peft/")))
  assert mapping["peft/prompt/embedding"] == "peft"
  state = grouped.init(params)
  for path in tree_utils.leaf_paths(state):
    # inner_states/<group>/inner_state/<field>/<parameter path>
    param_path = "/".join(path.split("/")[4:])
    assert param_path not in frozen, f"state {path} for a frozen parameter"
  # Exactly: one counter per trainable group, and statistics for trainable params.
  trainable = {k: v for k, v in tree_utils.flatten(params).items() if k not in frozen}
  expected_size = 2 + sum(
      jax.tree.leaves(jax.tree.map(lambda x: x.size, opt.adafactor(1.0).init(
          trainable)._replace(count=jnp.zeros(0)))))
  assert sum(x.size for x in jax.tree.leaves(state)) == expected_size
  assert isinstance(state.inner_states["backbone"].inner_state, optax.EmptyState)
  updates, _ = grouped.update(_grads(params), state, params)
  flat = tree_utils.flatten(updates)
  assert all(not np.any(np.asarray(flat[k])) for k in frozen)
  assert all(np.any(np.asarray(flat[k])) for k in trainable)


def test_hypernet_only_freezes_peft_too():
  mapping = opt.hypernet_only(1e-3).group_of(_model_params())
  assert {k for k, g in mapping.items() if g == "hypernet"} == {
      "hypernet/encoder/layers_0/mlp/wi_0/kernel", "hypernet/out/kernel"}
  assert mapping["peft/prompt/embedding"] == "frozen"


def test_fresh_group_restarts_its_own_step_and_learning_rates():
  params = _model_params()
  grads = _grads(params)
  sched = opt.linear_warmup_rsqrt_decay(1.0, warmup_steps=10)
  grouped = opt.adafactor_dual(backbone_lr=1e-3, hypernet_lr=sched,
                               hypernet_step_offset=0)
  fresh = grouped.init(params)
  # A "restored" state where the backbone has trained 1000 steps.
  restored = fresh._replace(inner_states={
      **fresh.inner_states,
      "backbone": optax.MaskedState(fresh.inner_states["backbone"].inner_state._replace(
          count=jnp.int32(1000))),
      "hypernet": optax.MaskedState(fresh.inner_states["hypernet"].inner_state._replace(
          count=jnp.int32(77))),
  })
  # HINT stage 1: every group's state from the checkpoint except the hypernet's.
  state = opt_state_restore.fill_group_states(
      fresh, opt_state_restore.source_from_state(restored),
      [g for g in grouped.group_names if g != "hypernet"])
  counts = opt.group_counts(state)
  assert int(counts["backbone"]) == 1000 and int(counts["hypernet"]) == 0
  lrs = grouped.learning_rates(state)
  assert float(lrs["hypernet"]) == 0.0  # Warmup starts again at the group's step 0.
  assert float(lrs["backbone"]) == pytest.approx(1e-3)
  # The update of the fresh group equals a fresh standalone Adafactor's first step
  # (learning rate at step 0 is 0 in warmup, so use step 3 by advancing it).
  for _ in range(3):
    _, state = grouped.update(grads, state, params)
  assert int(opt.group_counts(state)["hypernet"]) == 3
  assert float(grouped.learning_rates(state)["hypernet"]) == pytest.approx(
      float(sched(3)))
  # Integer steps are used as every group's counter, minus its offset.
  shifted = opt.make_optimizer([opt.ParamGroup("h", "^hypernet/", sched, step_offset=5),
                                opt.ParamGroup("b", "", 2.0),
                                opt.ParamGroup("f", "^never", frozen=True)])
  lrs = shifted.learning_rates(8)
  assert float(lrs["h"]) == pytest.approx(float(sched(3)))
  assert float(lrs["b"]) == 2.0 and float(lrs["f"]) == 0.0
  assert float(shifted.learning_rates(2)["h"]) == 0.0


def test_merge_and_full_restore_of_group_states():
  params = _model_params()
  grads = _grads(params)
  grouped = opt.adafactor_dual()
  fresh = grouped.init(params)
  trained = fresh
  for _ in range(2):
    _, trained = grouped.update(grads, trained, params)
  restored = opt_state_restore.source_from_state(trained)
  full = opt_state_restore.fill_group_states(fresh, restored)
  jax.tree.map(np.testing.assert_array_equal, full, trained)
  partial = opt_state_restore.fill_group_states(fresh, restored, ["backbone"])
  jax.tree.map(np.testing.assert_array_equal, partial.inner_states["backbone"],
               trained.inner_states["backbone"])
  jax.tree.map(np.testing.assert_array_equal, partial.inner_states["hypernet"],
               fresh.inner_states["hypernet"])
  with pytest.raises(ValueError, match="Unknown optimizer groups.*'nope'"):
    opt_state_restore.fill_group_states(fresh, restored, ["nope"])
  # A checkpoint whose backbone state has another shape is named, leaf by leaf.
  other = opt.adafactor_dual().init(jax.tree.map(
      lambda x: jnp.zeros(x.shape[:-1] + (x.shape[-1] + 1,)), params))
  with pytest.raises(ValueError) as e:
    opt_state_restore.fill_group_states(
        fresh, opt_state_restore.source_from_state(other))
  msg = str(e.value)
  assert "group 'backbone' has mismatched shapes" in msg
  assert ("inner_state/v/encoder/layers_0/attention/query/kernel: fresh (8, 12) vs "
          "restored (8, 13)") in msg
  assert "group 'hypernet' has mismatched shapes" in msg


def test_builders_are_gin_configurable():
  gin.clear_config()
  try:
    gin.parse_config("""
      train.adafactor_dual.hypernet_lr = \
          @train.rsqrt_decay()
      train.rsqrt_decay.base_lr = 0.5
      train.rsqrt_decay.warmup_steps = 100
      train.adafactor_dual.backbone_lr = 0.25
    """)
    grouped = opt.adafactor_dual()
    lrs = grouped.learning_rates(400)
    assert float(lrs["hypernet"]) == pytest.approx(0.5 / 20)
    assert float(lrs["backbone"]) == pytest.approx(0.25)
  finally:
    gin.clear_config()


def test_param_group_validation():
  with pytest.raises(ValueError, match="no learning_rate"):
    opt.ParamGroup("x", "^x/")
  with pytest.raises(Exception):
    opt.ParamGroup("x", "([unclosed", 1.0)
  with pytest.raises(ValueError, match="Duplicate"):
    opt.make_optimizer([opt.ParamGroup("x", "a", 1.0), opt.ParamGroup("x", "b", 1.0)])
  with pytest.raises(ValueError, match="per ParamGroup"):
    opt.make_optimizer([opt.ParamGroup("x", "", 1.0)], learning_rate=2.0)


def test_state_partition_specs_follow_parameters():
  P = jax.sharding.PartitionSpec
  params = tree_utils.unflatten({
      "token_embedder/embedding": jnp.zeros((512, 256)),   # factored: row 1, col 0.
      "encoder/layers_0/mlp/wi_0/kernel": jnp.zeros((8, 16)),
      "hypernet/out/kernel": jnp.zeros((8, 4)),
      "encoder/encoder_norm/scale": jnp.zeros((8,)),
  })
  specs = tree_utils.unflatten({
      "token_embedder/embedding": P("vocab", "embed"),
      "encoder/layers_0/mlp/wi_0/kernel": P("embed", "mlp"),
      "hypernet/out/kernel": P("hyper_embed", None),
      "encoder/encoder_norm/scale": P("embed"),
  })
  grouped = opt.make_optimizer([opt.ParamGroup("hypernet", "^hypernet/", 1.0),
                                opt.ParamGroup("backbone", "", 1.0)],
                               beta1=0.9)
  state = jax.eval_shape(grouped.init, params)
  out = opt.state_partition_specs(state, params, specs)
  assert jax.tree.structure(out, is_leaf=lambda x: isinstance(x, P)) == (
      jax.tree.structure(state))
  backbone = out.inner_states["backbone"].inner_state
  flat = lambda t: tree_utils.flatten(t)  # noqa: E731
  assert flat(backbone.v_row)["token_embedder/embedding"] == P("embed")
  assert flat(backbone.v_col)["token_embedder/embedding"] == P("vocab")
  assert flat(backbone.v)["token_embedder/embedding"] == P()
  assert flat(backbone.m)["token_embedder/embedding"] == P("vocab", "embed")
  assert flat(backbone.v)["encoder/layers_0/mlp/wi_0/kernel"] == P("embed", "mlp")
  assert flat(backbone.v_row)["encoder/layers_0/mlp/wi_0/kernel"] == P()
  assert flat(backbone.v)["encoder/encoder_norm/scale"] == P("embed")
  assert backbone.count == P()
  hyper = out.inner_states["hypernet"].inner_state
  assert flat(hyper.v)["hypernet/out/kernel"] == P("hyper_embed", None)
