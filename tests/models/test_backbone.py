"""Backbone invariants: compute dtype, dropout switch, logical axes, presets, loss /
score / sampling against hand-written numpy references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.models import config as config_lib
from hyper_tasks.models.config import preset
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft_spec import (AdapterSpec, IA3Spec, LoraSpec, PeftSpec,
                                          PrefixSpec, PromptSpec)
from hyper_tasks.models.transformer import Transformer

CFG = preset("t5_1_1", "tiny", vocab_size=128)
SHAPES = {"encoder_input_tokens": (3, 10), "decoder_input_tokens": (3, 6)}
# Published parameter counts of the public checkpoints (t5-small, t5-base,
# google/t5-v1_1-small, google/t5-v1_1-base).
PUBLISHED_PARAMS = {("t5", "small"): 60_506_624, ("t5", "base"): 222_903_552,
                    ("t5_1_1", "small"): 76_961_152, ("t5_1_1", "base"): 247_577_856}


def _batch(seed=0, vocab=128):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=SHAPES["encoder_input_tokens"]).astype(np.int32)
  enc[1, 6:] = 0
  tgt = rng.randint(2, vocab, size=SHAPES["decoder_input_tokens"]).astype(np.int32)
  tgt[2, 4:] = 0
  dec = np.concatenate([np.zeros((3, 1), np.int32), tgt[:, :-1]], axis=1)
  weights = (tgt > 0).astype(np.float32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt, "decoder_loss_weights": weights}


def _key(i):
  # "rbg" keys compile several times faster on CPU than threefry (which XLA unrolls
  # at every dropout site); the statistics do not matter for these tests.
  return jax.random.key(i, impl="rbg")


def _jit_apply(module):
  return jax.jit(module.apply, static_argnames=("enable_dropout",))


@pytest.fixture(scope="module")
def model_and_params():
  model = EncoderDecoderModel(Transformer(CFG), z_loss=1e-3, label_smoothing=0.1)
  params = jax.jit(lambda rng: model.get_initial_variables(
      rng, SHAPES, boxed=False)["params"])(_key(0))
  return model, params


@pytest.fixture(scope="module")
def loss_det(model_and_params):
  model = model_and_params[0]
  return jax.jit(lambda p, b: model.loss_fn(p, b, None))


@pytest.fixture(scope="module")
def logits_fn(model_and_params):
  return _jit_apply(model_and_params[0].module)


# -- compute dtype ------------------------------------------------------------------
def test_bfloat16_compute_keeps_float32_params(model_and_params, logits_fn):
  model, params = model_and_params
  bf16 = Transformer(CFG.replace(dtype=jnp.bfloat16))
  boxed = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), jnp.ones((1, 4), int),
                                           jnp.ones((1, 3), int)))
  dtypes = {x.dtype for x in jax.tree.leaves(nn.unbox(boxed))}
  assert dtypes == {jnp.dtype(jnp.float32)}

  b = _batch()
  args = (b["encoder_input_tokens"], b["decoder_input_tokens"])
  ref = logits_fn({"params": params}, *args)
  low = _jit_apply(bf16)({"params": params}, *args)
  assert ref.dtype == jnp.float32 and low.dtype == jnp.bfloat16
  low = np.asarray(low, np.float32)
  ref = np.asarray(ref)
  # bfloat16 has ~3 significant digits; the logits stay close and mostly agree on
  # the argmax.
  scale = np.abs(ref).max()
  assert np.abs(low - ref).max() < 0.05 * scale
  assert np.mean(low.argmax(-1) == ref.argmax(-1)) > 0.8


# -- dropout ------------------------------------------------------------------------
def test_dropout_only_with_enable_dropout(model_and_params, loss_det):
  model, params = model_and_params
  b = _batch()
  args = (b["encoder_input_tokens"], b["decoder_input_tokens"])
  fn = jax.jit(lambda p, rng, enable: model.module.apply(
      {"params": p}, *args, enable_dropout=enable, rngs={"dropout": rng}),
      static_argnums=2)
  key = _key
  det = np.asarray(fn(params, key(0), False))
  # An rng alone does not switch dropout on.
  np.testing.assert_array_equal(np.asarray(fn(params, key(1), False)), det)
  on1 = np.asarray(fn(params, key(1), True))
  on1b = np.asarray(fn(params, key(1), True))
  on2 = np.asarray(fn(params, key(2), True))
  assert not np.allclose(on1, det)
  assert not np.allclose(on1, on2)
  np.testing.assert_array_equal(on1, on1b)
  # loss_fn: dropout iff a dropout rng is given.
  l_drop = jax.jit(lambda p, rng: model.loss_fn(p, b, rng)[0])(params, key(3))
  l_det = loss_det(params, b)[0]
  assert float(l_det) == float(loss_det(params, b)[0])
  assert float(l_drop) != float(l_det)


# -- logical axis names ---------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    PeftSpec(),
    PeftSpec(adapter=AdapterSpec(4, ("encoder_mlp", "decoder_mlp", "cross")),
             prefix=PrefixSpec(3), lora=LoraSpec((("q", 2), ("o", 2), ("wi", 2),
                                                  ("wo", 2))),
             prompt=PromptSpec(2), ia3=IA3Spec()),
], ids=["plain", "all_peft"])
def test_every_parameter_has_logical_axes(spec):
  model = EncoderDecoderModel(Transformer(CFG, peft_spec=spec, static_peft=True))
  axes = model.logical_axes(SHAPES)
  shapes = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), SHAPES, boxed=False))["params"]
  flat_axes = dict(jax.tree_util.tree_flatten_with_path(
      axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0])
  flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  assert set(flat_axes) == set(flat_shapes)
  if not spec.is_empty:
    assert any("peft" in jax.tree_util.keystr(p) for p in flat_shapes)
  for path, shape in flat_shapes.items():
    spec_ = flat_axes[path]
    name = jax.tree_util.keystr(path)
    assert isinstance(spec_, jax.sharding.PartitionSpec), name
    assert len(spec_) == len(shape.shape), name
    assert all(isinstance(a, str) and a for a in spec_), (name, spec_)


# -- presets --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", config_lib.VARIANTS)
def test_presets_build_for_every_size(variant):
  for size in config_lib.SIZES:
    cfg = preset(variant, size)
    assert cfg.d_model > 0 and cfg.inner_dim == cfg.num_heads * cfg.d_kv
    assert cfg.is_gated == (variant != "t5")
    assert cfg.tie_word_embeddings == (variant == "t5")
    if size != "tiny":
      assert cfg.vocab_size == (250112 if variant == "mt5" else 32128)
  with pytest.raises(ValueError, match="size"):
    preset(variant, "huge")
  with pytest.raises(ValueError, match="variant"):
    preset("t6", "base")


@pytest.mark.parametrize("variant,size", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts_match_published(variant, size):
  cfg = preset(variant, size)
  shapes = jax.eval_shape(lambda: nn.unbox(Transformer(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
      jnp.ones((1, 2), jnp.int32))["params"]))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == PUBLISHED_PARAMS[(variant, size)]


# -- loss, score, sampling --------------------------------------------------------------
def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  lse = m + np.log(np.exp(x - m).sum(-1, keepdims=True))
  return x - lse, lse[..., 0]


def test_loss_fn_matches_numpy_reference(model_and_params, logits_fn, loss_det):
  model, params = model_and_params
  b = _batch(1)
  logits = np.asarray(logits_fn(
      {"params": params}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
  logp, log_z = _np_log_softmax(logits)
  v, ls, zc = logits.shape[-1], model.label_smoothing, model.z_loss
  tgt, w = b["decoder_target_tokens"], b["decoder_loss_weights"]
  # Smoothed targets: 1 - ls on the target, ls / (V - 1) elsewhere; minus the
  # entropy of that distribution so that a perfect prediction scores 0.
  low, conf = ls / (v - 1), 1 - ls
  soft = np.full(logits.shape, low)
  np.put_along_axis(soft, tgt[..., None], conf, axis=-1)
  entropy = -(conf * np.log(conf) + (v - 1) * low * np.log(low))
  tok = -(soft * logp).sum(-1) - entropy + zc * log_z ** 2
  expected = (tok * w).sum() / w.sum()
  loss, metrics = loss_det(params, b)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["z_loss"]),
                             (zc * log_z ** 2 * w).sum() / w.sum(), rtol=1e-5)
  assert float(metrics["num_tokens"]) == w.sum()
  acc = ((logits.argmax(-1) == tgt) * w).sum() / w.sum()
  np.testing.assert_allclose(float(metrics["accuracy"]), acc, rtol=1e-6)


def test_score_batch_is_sum_of_gathered_log_softmax(model_and_params, logits_fn):
  model, params = model_and_params
  b = _batch(2)
  logits = np.asarray(logits_fn(
      {"params": params}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
  logp, _ = _np_log_softmax(logits)
  tgt, w = b["decoder_target_tokens"], b["decoder_loss_weights"]
  expected = [sum(logp[i, t, tgt[i, t]] for t in range(tgt.shape[1]) if w[i, t])
              for i in range(tgt.shape[0])]
  scores = jax.jit(lambda p: model.score_batch(p, b))(params)
  np.testing.assert_allclose(np.asarray(scores), expected,
                             rtol=1e-5)


def test_temperature_sampling_is_deterministic_per_key(model_and_params):
  model, params = model_and_params
  b = _batch(3)
  sample = jax.jit(lambda p, rng: model.predict_batch(
      p, b, method="sample", temperature=3.0, rng=rng, max_decode_length=8))
  a = np.asarray(sample(params, _key(0)))
  a2 = np.asarray(sample(params, _key(0)))
  c = np.asarray(sample(params, _key(1)))
  assert a.shape == (3, 8)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a, c)
  with pytest.raises(ValueError, match="rng"):
    model.predict_batch(params, b, method="sample", temperature=1.0,
                        max_decode_length=8)
