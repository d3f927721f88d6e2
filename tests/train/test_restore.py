"""Tests for hyper_tasks.train.restore and hyper_tasks.train.tree_utils."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from hyper_tasks.train import restore
from hyper_tasks.train import tree_utils


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
  report = restore.RestoreReport()
  out = restore.apply_assignment_map(ckpt, amap, report)
  assert out == {"encoder/layers_0/attention/q": 1, "encoder/layers_1/attention/q": 2,
                 "encoder/final_norm": 3, "junk/x": 5}
  assert report.dropped == ["decoder/block_0/attn/q"]
  assert report.renamed["encoder/block_1/attn/q"] == "encoder/layers_1/attention/q"
  # One checkpoint key copied to two names.
  out = restore.apply_assignment_map({"encoder/w": 7},
                                     [(r"encoder/(.*)", ["encoder/\\1",
                                                          "hypernet/encoder/\\1"])])
  assert out == {"encoder/w": 7, "hypernet/encoder/w": 7}
  with pytest.raises(restore.RestoreError, match="'a/x' and 'b/x' -> 'c/x'"):
    restore.apply_assignment_map({"a/x": 1, "b/x": 2}, [(r"[ab]/(x)", r"c/\1")])


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
  params, report = restore.restore_params(
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
  with pytest.raises(restore.RestoreError) as e:
    restore.restore_params(_target(), ckpt, init_params=_init())
  msg = str(e.value)
  assert "2 target key(s) missing" in msg
  assert "encoder/layers_0/attention/query/kernel" in msg
  assert "hypernet/out/kernel" in msg
  params, report = restore.restore_params(_target(), ckpt, fallback_to_scratch=True,
                                          init_params=_init())
  assert report.reinitialised == ["encoder/layers_0/attention/query/kernel",
                                  "hypernet/out/kernel"]
  assert params["hypernet/out/kernel"].dtype == np.float32
  with pytest.raises(restore.RestoreError, match="absent from init_params"):
    restore.restore_params(_target(), ckpt, fallback_to_scratch=True)


def test_shape_mismatches_are_all_listed_with_both_shapes():
  ckpt = {
      "token_embedder/embedding": _arr((32, 4)),
      "encoder/layers_0/attention/query/kernel": _arr((6, 4)),
      "hypernet/out/kernel": _arr((4, 8)),
  }
  with pytest.raises(restore.RestoreError) as e:
    restore.restore_params(_target(), ckpt)
  msg = str(e.value)
  assert "2 shape mismatch" in msg
  assert "token_embedder/embedding: checkpoint (32, 4) vs target (16, 4)" in msg
  assert ("encoder/layers_0/attention/query/kernel: checkpoint (6, 4) vs target "
          "(4, 6)") in msg


def test_nested_inputs_are_accepted():
  target = tree_utils.unflatten(_target())
  ckpt = tree_utils.unflatten({k: np.zeros(v.shape, np.float32)
                               for k, v in _target().items()})
  params, report = restore.restore_params(target, ckpt)
  assert len(report.loaded) == 3 and not report.unused
  assert set(params) == set(_target())
