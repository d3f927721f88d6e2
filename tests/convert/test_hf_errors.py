"""Bad HF directories: every failure of ``load_t5`` names the file and the key.

Checkpoints are written by our own ``save_t5`` from a tiny random model (no torch
needed), then damaged one way per test. "Nothing half-loaded" means ``load_t5`` raises
instead of returning partially filled parameters.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hyper_tasks.convert import hf
from hyper_tasks.convert.hf import ConversionError
from hyper_tasks.models.config import preset
from hyper_tasks.models.transformer import Transformer

CFG = preset("t5_1_1", "tiny", vocab_size=64, num_encoder_layers=1,
             num_decoder_layers=1)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
  import flax.linen as nn
  variables = Transformer(CFG).init(jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32),
                                    jnp.ones((1, 2), jnp.int32))
  path = str(tmp_path_factory.mktemp("good"))
  hf.save_t5(nn.unbox(variables["params"]), CFG, path)
  return path


@pytest.fixture
def bad_dir(good_dir, tmp_path):
  """A fresh copy of the good checkpoint to damage."""
  path = str(tmp_path / "ckpt")
  shutil.copytree(good_dir, path)
  return path


def _edit_state(path, fn):
  f = os.path.join(path, "model.safetensors")
  state = dict(load_file(f))
  fn(state)
  save_file(state, f, metadata={"format": "pt"})


def _edit_config(path, fn):
  f = os.path.join(path, "config.json")
  with open(f) as fh:
    cfg = json.load(fh)
  fn(cfg)
  with open(f, "w") as fh:
    json.dump(cfg, fh)


def _raises(path, *fragments):
  with pytest.raises(ConversionError) as info:
    hf.load_t5(path)
  for frag in fragments:
    assert frag in str(info.value), (frag, str(info.value))
  return info.value


def test_good_dir_loads(good_dir):
  module, params = hf.load_t5(good_dir)
  assert module.config.d_model == CFG.d_model
  assert "token_embedder" in params


def test_missing_directory(tmp_path):
  path = str(tmp_path / "nope")
  _raises(path, path, "not a directory")


def test_missing_config(bad_dir):
  os.remove(os.path.join(bad_dir, "config.json"))
  _raises(bad_dir, os.path.join(bad_dir, "config.json"), "missing")


def test_malformed_config(bad_dir):
  with open(os.path.join(bad_dir, "config.json"), "w") as f:
    f.write('{"model_type": "t5", "d_model": ')
  _raises(bad_dir, "config.json", "malformed JSON")


def test_config_not_an_object(bad_dir):
  with open(os.path.join(bad_dir, "config.json"), "w") as f:
    f.write("[1, 2]")
  _raises(bad_dir, "config.json", "JSON object")


def test_config_missing_field(bad_dir):
  _edit_config(bad_dir, lambda c: c.pop("d_kv"))
  _raises(bad_dir, "config.json", "'d_kv'")


def test_config_bad_field_value(bad_dir):
  _edit_config(bad_dir, lambda c: c.update(num_heads="eight"))
  _raises(bad_dir, "config.json", "'num_heads'")


def test_decoder_only_architecture(bad_dir):
  # A GPT-2 style config; no weights needed to reject it (checked before loading).
  with open(os.path.join(bad_dir, "config.json"), "w") as f:
    json.dump({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
               "n_layer": 2, "n_embd": 32, "vocab_size": 64}, f)
  os.remove(os.path.join(bad_dir, "model.safetensors"))
  _raises(bad_dir, "config.json", "gpt2", "unsupported architecture")


def test_t5_config_marked_decoder_only(bad_dir):
  _edit_config(bad_dir, lambda c: c.update(is_encoder_decoder=False))
  _raises(bad_dir, "config.json", "unsupported architecture")


def test_unsupported_feed_forward(bad_dir):
  _edit_config(bad_dir, lambda c: c.update(feed_forward_proj="gated-swoosh"))
  _raises(bad_dir, "config.json", "gated-swoosh")


def test_missing_weights_file(bad_dir):
  os.remove(os.path.join(bad_dir, "model.safetensors"))
  _raises(bad_dir, bad_dir, "model.safetensors", "pytorch_model.bin")


def test_corrupt_weights_file(bad_dir):
  with open(os.path.join(bad_dir, "model.safetensors"), "wb") as f:
    f.write(b"\x00\x01 not a safetensors file")
  _raises(bad_dir, "model.safetensors", "cannot read")


def test_unmapped_extra_key(bad_dir):
  def add(state):
    state["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(32, np.float32)
  _edit_state(bad_dir, add)
  _raises(bad_dir, "model.safetensors", "unmapped",
          "encoder.block.0.layer.0.SelfAttention.q.bias")


def test_extra_layer_is_unmapped(bad_dir):
  # A block beyond num_layers must not be silently dropped.
  def add(state):
    state["encoder.block.1.layer.0.SelfAttention.q.weight"] = state[
        "encoder.block.0.layer.0.SelfAttention.q.weight"]
  _edit_state(bad_dir, add)
  _raises(bad_dir, "model.safetensors", "encoder.block.1.layer.0.SelfAttention.q.weight")


def test_missing_key(bad_dir):
  _edit_state(bad_dir, lambda s: s.pop("decoder.block.0.layer.1.EncDecAttention.v.weight"))
  _raises(bad_dir, "model.safetensors", "missing keys",
          "decoder.block.0.layer.1.EncDecAttention.v.weight")


def test_shape_mismatch(bad_dir):
  key = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
  _edit_state(bad_dir, lambda s: s.update({key: np.zeros((CFG.d_ff + 1, CFG.d_model),
                                                         np.float32)}))
  err = _raises(bad_dir, "model.safetensors", "shape mismatch", key,
                "encoder/layers_0/mlp/wi_0/kernel")
  assert str((CFG.d_model, CFG.d_ff)) in str(err)


def test_config_disagrees_with_weights(bad_dir):
  # config says more heads than the weights have: a shape error, not garbage params.
  _edit_config(bad_dir, lambda c: c.update(num_heads=c["num_heads"] * 2))
  _raises(bad_dir, "model.safetensors", "shape mismatch", "SelfAttention.q.weight")


def test_sharded_index_missing_shard(bad_dir):
  os.rename(os.path.join(bad_dir, "model.safetensors"),
            os.path.join(bad_dir, "model-00001-of-00002.safetensors"))
  keys = load_file(os.path.join(bad_dir, "model-00001-of-00002.safetensors"))
  weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
  weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
  with open(os.path.join(bad_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": weight_map}, f)
  _raises(bad_dir, "model.safetensors.index.json", "model-00002-of-00002.safetensors",
          "missing")


def test_sharded_index_malformed(bad_dir):
  os.remove(os.path.join(bad_dir, "model.safetensors"))
  with open(os.path.join(bad_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}}, f)
  _raises(bad_dir, "model.safetensors.index.json", "weight_map")


def test_corrupt_pytorch_bin(bad_dir):
  pytest.importorskip("torch")
  os.remove(os.path.join(bad_dir, "model.safetensors"))
  with open(os.path.join(bad_dir, "pytorch_model.bin"), "wb") as f:
    f.write(b"garbage")
  _raises(bad_dir, "pytorch_model.bin", "cannot read")
