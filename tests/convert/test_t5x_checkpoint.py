"""Tests for hyper_tasks.convert.t5x_checkpoint: the real tiny t5x file and a
directory checkpoint written here in t5x's msgpack + tensorstore layout."""
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization

from hyper_tasks.convert import t5x_checkpoint as t5x

# ---- The real t5x test checkpoint (tiny T5, 2+2 layers, d_model 8) -------------------

TINY_FILE = "t5x/test_t5_tiny.checkpoint_0"


def _expected_tiny_shapes():
  shapes = {"token_embedder/embedding": (32128, 8),
            "decoder/logits_dense/kernel": (8, 32128),
            "encoder/encoder_norm/scale": (8,),
            "decoder/decoder_norm/scale": (8,),
            "encoder/relpos_bias/rel_embedding": (4, 32),
            "decoder/relpos_bias/rel_embedding": (4, 32)}
  attn = {"query": (8, 12), "key": (8, 12), "value": (8, 12), "out": (12, 8)}
  mlp = {"wi_0": (8, 16), "wi_1": (8, 16), "wo": (16, 8)}
  for i in range(2):
    enc, dec = f"encoder/layers_{i}", f"decoder/layers_{i}"
    for sub in ("attention",):
      shapes.update({f"{enc}/{sub}/{k}/kernel": s for k, s in attn.items()})
    for sub in ("self_attention", "encoder_decoder_attention"):
      shapes.update({f"{dec}/{sub}/{k}/kernel": s for k, s in attn.items()})
    for stack in (enc, dec):
      shapes.update({f"{stack}/mlp/{k}/kernel": s for k, s in mlp.items()})
      shapes[f"{stack}/pre_mlp_layer_norm/scale"] = (8,)
    shapes[f"{enc}/pre_attention_layer_norm/scale"] = (8,)
    shapes[f"{dec}/pre_self_attention_layer_norm/scale"] = (8,)
    shapes[f"{dec}/pre_cross_attention_layer_norm/scale"] = (8,)
  return shapes


def test_real_tiny_t5x_checkpoint(shared_data):
  path = shared_data / TINY_FILE
  if not path.exists():
    pytest.skip(f"{path} is absent")
  params, opt_state, step = t5x.load_t5x_checkpoint(str(path))
  expected = _expected_tiny_shapes()
  assert {k: v.shape for k, v in params.items()} == expected
  assert all(v.dtype == np.float32 for v in params.values())
  assert all(np.isfinite(v).all() for v in params.values())
  assert all(np.isfinite(v).all() for v in opt_state.values())
  assert step == 0
  # Nothing is factored (every param has a dim < 128): full `v`, (1,) placeholders.
  assert len(opt_state) == 4 * len(expected) + 1
  for name, shape in expected.items():
    st = t5x.adafactor_state(opt_state, name)
    assert st["v"].shape == shape, name
    assert st["v_row"].shape == st["v_col"].shape == st["m"].shape == (1,)
  # Parameters are real values, not zeros (the file is an initialised model).
  assert np.std(params["token_embedder/embedding"]) > 0.1
  bf16, _, _ = t5x.load_t5x_checkpoint(str(path), restore_dtype=ml_dtypes.bfloat16)
  assert bf16["encoder/layers_0/mlp/wo/kernel"].dtype == ml_dtypes.bfloat16


# ---- A directory checkpoint in t5x's layout ------------------------------------------


def _write_zarr(ckpt_dir, name, arr, spec_style):
  """Writes ``arr`` as t5x does and returns the spec dict t5x puts in the msgpack."""
  rel = name.replace("/", ".")
  metadata = {"compressor": {"id": "gzip"}, "shape": list(arr.shape),
              "chunks": [max(1, d // 2) for d in arr.shape]}
  dtype = np.dtype(arr.dtype).name
  ts.open({"driver": "zarr", "dtype": dtype,
           "kvstore": {"driver": "file", "path": os.path.join(ckpt_dir, rel)},
           "metadata": metadata}, create=True, open=True).result().write(arr).result()
  if spec_style == "file":
    return {"driver": "zarr", "dtype": dtype, "metadata": metadata,
            "kvstore": {"driver": "file", "path": rel}}
  if spec_style == "gcs":  # Written on GCS with t5x's dummy bucket.
    return {"driver": "zarr", "dtype": dtype, "metadata": metadata, "path": rel,
            "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}}
  if spec_style == "old":  # tensorstore < 0.1.14: path at the top level.
    return {"driver": "zarr", "dtype": dtype, "metadata": metadata, "path": rel,
            "kvstore": {"driver": "file"}}
  raise ValueError(spec_style)


def _make_model_dir(root):
  rng = np.random.default_rng(0)
  wi = rng.normal(size=(8, 256)).astype(np.float32)
  emb = rng.normal(size=(64, 8)).astype(ml_dtypes.bfloat16)
  wo = rng.normal(size=(256, 8)).astype(np.float32)
  norm = rng.normal(size=(8,)).astype(np.float32)
  v = rng.uniform(size=(8, 256)).astype(np.float32)
  arrays = {"target/encoder/layers_0/mlp/wi_0/kernel": wi,
            "target/token_embedder/embedding": emb,
            "target/encoder/layers_0/mlp/wo/kernel": wo,
            "target/encoder/encoder_norm/scale": norm,
            "state/param_states/encoder/layers_0/mlp/wi_0/kernel/v": v}
  for step, styles in ((50, ("file",) * 3), (100, ("file", "gcs", "old"))):
    ckpt_dir = os.path.join(root, f"checkpoint_{step}")
    os.makedirs(ckpt_dir)
    z = lambda name, style: _write_zarr(ckpt_dir, name, arrays[name], style)  # noqa: E731
    zero = np.zeros((1,), np.float32)
    state = {
        "version": 3,
        "optimizer": {
            "target": {
                "encoder": {
                    "layers_0": {"mlp": {
                        "wi_0": {"kernel": z("target/encoder/layers_0/mlp/wi_0/kernel",
                                             styles[0])},
                        "wo": {"kernel": z("target/encoder/layers_0/mlp/wo/kernel",
                                           styles[2])}}},
                    "encoder_norm": {"scale": norm}},  # Inline in the msgpack.
                "token_embedder": {"embedding": z("target/token_embedder/embedding",
                                                  styles[1])},
            },
            "state": {
                "step": np.int32(step),
                "param_states": {"encoder": {"layers_0": {"mlp": {"wi_0": {"kernel": {
                    "v": z("state/param_states/encoder/layers_0/mlp/wi_0/kernel/v",
                           "file"),
                    "v_row": zero, "v_col": zero, "m": zero}}}}}},
            },
        },
    }
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
      f.write(serialization.msgpack_serialize(state))
  return arrays


def test_directory_checkpoint_round_trip(tmp_path):
  arrays = _make_model_dir(str(tmp_path))
  assert t5x.checkpoint_steps(str(tmp_path)) == [50, 100]
  for path, step in ((str(tmp_path), 100),
                     (str(tmp_path / "checkpoint_100"), 100),
                     (str(tmp_path / "checkpoint_100" / "checkpoint"), 100)):
    params, opt_state, got_step = t5x.load_t5x_checkpoint(path)
    assert got_step == step
    assert set(params) == {k[len("target/"):] for k in arrays if k.startswith("target/")}
    for k, v in params.items():
      expected = arrays["target/" + k]
      assert v.dtype == expected.dtype and v.shape == expected.shape, k
      np.testing.assert_array_equal(v, expected)
    np.testing.assert_array_equal(
        opt_state["state/param_states/encoder/layers_0/mlp/wi_0/kernel/v"],
        arrays["state/param_states/encoder/layers_0/mlp/wi_0/kernel/v"])
    v_row = opt_state["state/param_states/encoder/layers_0/mlp/wi_0/kernel/v_row"]
    assert v_row.shape == (1,)
  _, _, got_step = t5x.load_t5x_checkpoint(str(tmp_path), step=50)
  assert got_step == 50


def test_directory_checkpoint_errors(tmp_path):
  _make_model_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="checkpoint_7"):
    t5x.load_t5x_checkpoint(str(tmp_path), step=7)
  with pytest.raises(FileNotFoundError):
    t5x.load_t5x_checkpoint(str(tmp_path / "nowhere"))
  # A deleted array directory is reported with the parameter's name.
  shutil.rmtree(tmp_path / "checkpoint_50" / "target.token_embedder.embedding")
  with pytest.raises(FileNotFoundError, match="target/token_embedder/embedding"):
    t5x.load_t5x_checkpoint(str(tmp_path), step=50)
