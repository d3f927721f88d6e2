"""Tests for hyper_tasks.train.param_restore and hyper_tasks.tree_utils, and HINT's
separate instruction encoder restored from the backbone encoder."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from tests.train import train_testlib as lib
from hyper_tasks.convert import hf
from hyper_tasks.convert import lazy
from hyper_tasks.models.hypernets import make_hypernet
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft_spec import AdapterSpec, PeftSpec
from hyper_tasks.models.transformer import Transformer
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import initial_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import param_restore
from hyper_tasks.train import train_state as ts_lib
from hyper_tasks import tree_utils


def _arr(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def test_flatten_unflatten_round_trip_and_errors():
  tree = {"encoder": {"layers_0": {"mlp": {"wi_0": {"kernel": _arr((2, 3))}}}},
          "token_embedder": {"embedding": _arr((4, 2))}, "step": 3}
  flat = tree_utils.flatten(tree)
  assert list(flat) == ["encoder/layers_0/mlp/wi_0/kernel",
                        "token_embedder/embedding", "step"]
  back = tree_utils.unflatten(flat)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  jax.tree.map(np.testing.assert_array_equal, back, tree)
  assert tree_utils.flatten({"a": {"b": 1}}, sep=".") == {"a.b": 1}
  with pytest.raises(ValueError, match="separator"):
    tree_utils.flatten({"a/b": 1})
  with pytest.raises(ValueError, match="both a leaf and a subtree|runs through leaf"):
    tree_utils.unflatten({"a/b": 1, "a": 2})
  with pytest.raises(ValueError, match="runs through leaf"):
    tree_utils.unflatten({"a": 2, "a/b": 1})
  # Leaf predicate keeps a dict whole (e.g. a tensorstore spec).
  spec = {"driver": "zarr", "kvstore": {"path": "x"}}
  assert tree_utils.flatten({"p": spec}, is_leaf=lambda d: "driver" in d) == {"p": spec}


def test_leaves_by_path_and_unflatten_like_any_pytree():
  tree = (optax.MaskedState({"w": _arr((2,)), "skip": None}), [_arr((1,))])
  flat = tree_utils.leaves_by_path(tree)
  assert list(flat) == ["0/inner_state/w", "1/0"]  # None leaves are left out.
  back = tree_utils.unflatten_like(tree, {k: v + 1 for k, v in flat.items()})
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  np.testing.assert_array_equal(back[1][0], tree[1][0] + 1)


def test_apply_assignment_map_first_match_backrefs_and_drop():
  ckpt = {
      "encoder/block_0/attn/q": 1, "encoder/block_1/attn/q": 2,
      "encoder/final_norm": 3, "decoder/block_0/attn/q": 4, "junk/x": 5,
  }
  amap = [
      (r"encoder/block_(\d+)/attn/(\w)", r"encoder/layers_\1/attention/\2"),
      (r"(encoder|decoder)/block_(\d+)/.*", None),   # decoder blocks: dropped.
      (r"encoder/block_(\d+)/.*", r"never/\1"),      # shadowed by the first rule.
      (r"junk", None),                               # fullmatch: no effect on junk/x.
  ]
  report = param_restore.RestoreReport()
  out = param_restore.apply_assignment_map(ckpt, amap, report)
  assert out == {"encoder/layers_0/attention/q": 1, "encoder/layers_1/attention/q": 2,
                 "encoder/final_norm": 3, "junk/x": 5}
  assert report.dropped == ["decoder/block_0/attn/q"]
  assert report.renamed["encoder/block_1/attn/q"] == "encoder/layers_1/attention/q"
  # One checkpoint key copied to two names.
  out = param_restore.apply_assignment_map({"encoder/w": 7},
                                     [(r"encoder/(.*)", ["encoder/\\1",
                                                          "hypernet/encoder/\\1"])])
  assert out == {"encoder/w": 7, "hypernet/encoder/w": 7}
  with pytest.raises(param_restore.RestoreError, match="'a/x' and 'b/x' -> 'c/x'"):
    param_restore.apply_assignment_map({"a/x": 1, "b/x": 2}, [(r"[ab]/(x)", r"c/\1")])


def _target():
  return {
      "token_embedder/embedding": jax.ShapeDtypeStruct((16, 4), jnp.float32),
      "encoder/layers_0/attention/query/kernel": jax.ShapeDtypeStruct((4, 6),
                                                                      jnp.bfloat16),
      "hypernet/out/kernel": jax.ShapeDtypeStruct((4, 8), jnp.float32),
  }


def _init():
  return {k: np.full(v.shape, 0.5, v.dtype) for k, v in _target().items()}


def test_restore_params_loads_casts_and_reports():
  ckpt = {
      "token_embedder/embedding": _arr((16, 4), 1, np.float64),
      "encoder/layers_0/SelfAttention/q": _arr((4, 6), 2),
      "decoder/unused": _arr((3,), 3),
      "hypernet/out/kernel": _arr((4, 8), 4),
  }
  params, report = param_restore.restore_params(
      _target(), ckpt,
      assignment_map=[(r"encoder/layers_(\d+)/SelfAttention/q",
                       r"encoder/layers_\1/attention/query/kernel")],
      init_params=_init(), reinit_patterns=[r"^hypernet/"])
  assert set(params) == set(_target())
  q = params["encoder/layers_0/attention/query/kernel"]
  assert q.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(q, ckpt["encoder/layers_0/SelfAttention/q"].astype(
      ml_dtypes.bfloat16))
  emb = params["token_embedder/embedding"]
  assert emb.dtype == np.float32
  np.testing.assert_array_equal(emb, ckpt["token_embedder/embedding"].astype(np.float32))
  # The hypernetwork is fresh even though the checkpoint has it.
  np.testing.assert_array_equal(params["hypernet/out/kernel"], 0.5)
  assert report.loaded == ["encoder/layers_0/attention/query/kernel",
                           "token_embedder/embedding"]
  assert report.reinitialised == ["hypernet/out/kernel"]
  assert report.unused == ["decoder/unused", "hypernet/out/kernel"]
  summary = report.summary()
  assert "loaded: 2" in summary and "reinitialised: 1 [hypernet/out/kernel]" in summary
  assert "unused checkpoint keys: 2" in summary


def test_missing_keys_are_all_listed_unless_fallback():
  ckpt = {"token_embedder/embedding": _arr((16, 4))}
  with pytest.raises(param_restore.RestoreError) as e:
    param_restore.restore_params(_target(), ckpt, init_params=_init())
  msg = str(e.value)
  assert "2 target key(s) missing" in msg
  assert "encoder/layers_0/attention/query/kernel" in msg
  assert "hypernet/out/kernel" in msg
  params, report = param_restore.restore_params(_target(), ckpt, fallback_to_scratch=True,
                                          init_params=_init())
  assert report.reinitialised == ["encoder/layers_0/attention/query/kernel",
                                  "hypernet/out/kernel"]
  assert params["hypernet/out/kernel"].dtype == np.float32
  with pytest.raises(param_restore.RestoreError, match="absent from init_params"):
    param_restore.restore_params(_target(), ckpt, fallback_to_scratch=True)


def test_shape_mismatches_are_all_listed_with_both_shapes():
  ckpt = {
      "token_embedder/embedding": _arr((32, 4)),
      "encoder/layers_0/attention/query/kernel": _arr((6, 4)),
      "hypernet/out/kernel": _arr((4, 8)),
  }
  with pytest.raises(param_restore.RestoreError) as e:
    param_restore.restore_params(_target(), ckpt)
  msg = str(e.value)
  assert "2 shape mismatch" in msg
  assert "token_embedder/embedding: checkpoint (32, 4) vs target (16, 4)" in msg
  assert ("encoder/layers_0/attention/query/kernel: checkpoint (6, 4) vs target "
          "(4, 6)") in msg


def test_nested_inputs_are_accepted():
  target = tree_utils.unflatten(_target())
  ckpt = tree_utils.unflatten({k: np.zeros(v.shape, np.float32)
                               for k, v in _target().items()})
  params, report = param_restore.restore_params(target, ckpt)
  assert len(report.loaded) == 3 and not report.unused
  assert set(params) == set(_target())


# ---- HINT's separate instruction encoder (separate_henc) -----------------------------

def test_prefix_copies_fill_the_hypernet_encoder_from_the_backbone_encoder():
  target = {"encoder/layers_0/mlp/wo/kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32),
            "hypernet/encoder/layers_0/mlp/wo/kernel":
                jax.ShapeDtypeStruct((2, 3), jnp.float32),
            "hypernet/queries": jax.ShapeDtypeStruct((4,), jnp.float32)}
  init = {k: np.full(v.shape, 0.5, v.dtype) for k, v in target.items()}
  ckpt = {"encoder/SelfAttn/wo": _arr((2, 3), 1),
          "encoder/layers_1/mlp/wo/kernel": _arr((2, 3), 2),  # no such target
          "hypernet/encoder/layers_0/mlp/wo/kernel": _arr((2, 3), 3),  # replaced
          "hypernet/queries": _arr((4,), 4)}
  amap = [(r"encoder/SelfAttn/wo", r"encoder/layers_0/mlp/wo/kernel")]
  params, report = param_restore.restore_params(
      target, ckpt, amap, fallback_to_scratch=True, init_params=init,
      reinit_patterns=["^hypernet/"],
      prefix_copies=[("encoder/", "hypernet/encoder/")])
  # Copied after the assignment map, despite the reinit pattern.
  np.testing.assert_array_equal(params["hypernet/encoder/layers_0/mlp/wo/kernel"],
                                ckpt["encoder/SelfAttn/wo"])
  np.testing.assert_array_equal(params["encoder/layers_0/mlp/wo/kernel"],
                                ckpt["encoder/SelfAttn/wo"])
  np.testing.assert_array_equal(params["hypernet/queries"], 0.5)
  assert report.copied == {"hypernet/encoder/layers_0/mlp/wo/kernel":
                           "encoder/layers_0/mlp/wo/kernel"}
  assert report.reinitialised == ["hypernet/queries"]
  assert report.unused == ["encoder/layers_1/mlp/wo/kernel", "hypernet/queries"]
  assert "copied (prefix_copies): 1" in report.summary()


@pytest.mark.parametrize("from_backbone", [True, False])
def test_separate_hypernet_encoder_restored_from_an_hf_t5(tmp_path, from_backbone):
  """InitialRestore.hypernet_encoder_from_backbone (gin/restore/restore_pretrained.gin):
  a HINT model with its own instruction encoder, restored from an HF T5, starts
  with ``hypernet/encoder/*`` equal to the checkpoint's ``encoder/*``; the rest of
  the hypernetwork and its optimizer state are fresh."""
  cfg = lib.tiny_config(dropout_rate=0.0)
  spec = PeftSpec(adapter=AdapterSpec(size=4, bias=True, activation="gelu"))
  net = make_hypernet("hint", cfg, spec, num_heads=2, dropout_rate=0.0,
                      separate_encoder=True)
  model = EncoderDecoderModel(Transformer(cfg, spec, net))
  shapes = ts_lib.init_input_shapes(lib.LENGTHS)
  backbone = jax.device_get(lib.tiny_t5(dropout_rate=0.0).get_initial_variables(
      jax.random.PRNGKey(7), shapes, boxed=False)["params"])
  hf.save_t5(backbone, cfg, str(tmp_path / "hf"))
  opt = optimizers.adafactor_dual()
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  layout = ts_lib.make_layout(model, opt, mesh, shapes)
  fresh = ts_lib.init_state(model, opt, layout, shapes, seed=1)
  cfg_restore = initial_restore.InitialRestore(
      path=str(tmp_path / "hf"), fallback_to_scratch=True,
      reinit_patterns=("^hypernet/",), optimizer_state="restore_pretrained",
      hypernet_encoder_from_backbone=from_backbone)
  state, report, notes = initial_restore.restore_initial(cfg_restore, opt, layout,
                                                        fresh)
  ckpt = tree_utils.flatten(backbone)
  new = tree_utils.flatten(jax.device_get(state.params))
  init = tree_utils.flatten(jax.device_get(fresh.params))
  henc = sorted(k for k in new if k.startswith("hypernet/encoder/"))
  assert henc and len(henc) == len([k for k in ckpt if k.startswith("encoder/")])
  for key in henc:
    want = ckpt["encoder/" + key[len("hypernet/encoder/"):]] if from_backbone else (
        init[key])
    np.testing.assert_array_equal(new[key], want, err_msg=key)
  for key in new:
    if key.startswith("hypernet/") and key not in henc:
      np.testing.assert_array_equal(new[key], init[key], err_msg=key)
    elif not key.startswith("hypernet/"):
      np.testing.assert_array_equal(new[key], ckpt[key], err_msg=key)
  assert sorted(report.copied) == (henc if from_backbone else [])
  assert any("hypernet/encoder" in n for n in notes) == from_backbone
  # The trainer's path: the HF tensors read lazily, one at a time, and only the
  # re-initialised parameters initialised (no full random init first): the
  # same state exactly.
  ckpt_contents = checkpoint_formats.read_checkpoint(str(tmp_path / "hf"))
  lazies = list(ckpt_contents.params.values())
  assert lazies and all(isinstance(v, lazy.LazyArray) for v in lazies)
  for key, value in ckpt_contents.params.items():
    np.testing.assert_array_equal(np.asarray(value), ckpt[key], err_msg=key)
  lazy_fresh = initial_restore.FreshInit(
      ts_lib.make_init_fn(model, opt, layout, shapes), jax.random.PRNGKey(1), opt,
      layout)
  lazy_state, lazy_report, lazy_notes = initial_restore.restore_initial(
      cfg_restore, opt, layout, lazy_fresh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(lazy_state),
               jax.device_get(state))
  assert lazy_report == report and lazy_notes == notes
