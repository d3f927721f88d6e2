"""Issue 18: per-layer rematerialisation and the attention-implementation switch.

Remat (each policy) and the XLA fused attention give the reference gradients on a
tiny model (with padding, causal masks and relative position bias); full remat lowers the compiled
step's temporary memory; unknown settings raise naming the setting; cuDNN on CPU
and dropout in training fall back to ours with a logged reason.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.models import attention, config
from hyper_tasks.models.builders import make_model

TINY = dict(size="tiny", dropout_rate=0.0)


def _batch(b=2, li=12, lt=6, lh=5, vocab=512, seed=0):
  r = np.random.RandomState(seed)
  enc = r.randint(2, vocab, (b, li)).astype(np.int32)
  enc[0, li // 2:] = 0  # padding
  tgt = r.randint(2, vocab, (b, lt)).astype(np.int32)
  tgt[1, lt // 2:] = 0
  dec = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)
  hyper = r.randint(2, vocab, (b, lh)).astype(np.int32)
  hyper[1, 3:] = 0
  return dict(encoder_input_tokens=enc, decoder_target_tokens=tgt,
              decoder_input_tokens=dec, hyper_encoder_input_tokens=hyper,
              decoder_loss_weights=(tgt > 0).astype(np.float32))


BATCH = _batch()
BATCH.pop("hyper_encoder_input_tokens")
SHAPES = {k: v.shape for k, v in BATCH.items()}


def _t5(**kw):
  return make_model(hypernet="none", **TINY, **kw)


@pytest.fixture(scope="module")
def reference():
  model = _t5()
  params = _init(model)
  return params, _loss_and_grads(model, params)


def _init(model):
  return jax.jit(lambda k: model.get_initial_variables(
      k, SHAPES, boxed=False)["params"])(jax.random.key(0))


def _loss_and_grads(model, params):
  fn = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, BATCH, None)[0]))
  return fn(params)


def _close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("kw", [dict(remat_policy="minimal"),
                                dict(remat_policy="full"),
                                dict(attention_impl="xla")])
def test_same_params_loss_and_grads(reference, kw):
  params, (loss, grads) = reference
  model = _t5(**kw)
  fresh = _init(model)
  # Same parameter tree (names) and initial values.
  assert jax.tree.structure(fresh) == jax.tree.structure(params)
  _close(fresh, params, 0)
  loss2, grads2 = _loss_and_grads(model, params)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  _close(grads2, grads)


def test_xla_attention_outputs_equal_ours_with_bias_and_mask():
  cfg = config.preset("t5_1_1", "tiny", dropout_rate=0.0)
  mha = attention.MultiHeadAttention(cfg)
  r = np.random.RandomState(1)
  x = jnp.asarray(r.randn(2, 7, cfg.d_model), jnp.float32)
  bias = jnp.asarray(r.randn(1, cfg.num_heads, 7, 7), jnp.float32)
  mask = (jnp.arange(7)[None, :] < jnp.array([[7], [3]]))[:, None, None, :]
  causal = jnp.tril(jnp.ones((7, 7), bool))[None, None]
  v = mha.init(jax.random.key(0), x, x, bias, mask)
  xla = attention.MultiHeadAttention(cfg.replace(attention_impl="xla"))
  def out_and_grads(module, m):
    f = lambda p: module.apply(p, x, x, bias, m)
    return jax.jit(lambda p: (f(p), jax.grad(lambda q: jnp.sum(f(q) ** 2))(p)))(v)
  for m in (mask, mask & causal):  # padding; padding and causal
    _close(out_and_grads(xla, m), out_and_grads(mha, m))


def test_full_remat_reduces_compiled_temp_memory():
  b = _batch(b=4, li=128, lt=32)
  b.pop("hyper_encoder_input_tokens")
  temp = {}
  for policy in ("none", "full"):
    model = make_model(hypernet="none", remat_policy=policy, **TINY)
    shapes = {k: v.shape for k, v in b.items()}
    params = jax.eval_shape(lambda k: model.get_initial_variables(
        k, shapes, boxed=False)["params"], jax.random.key(0))
    step = jax.jit(jax.grad(lambda p, x: model.loss_fn(p, x, None)[0]))
    temp[policy] = step.lower(params, b).compile().memory_analysis(
        ).temp_size_in_bytes
  assert temp["full"] < temp["none"], temp


@pytest.mark.parametrize("key,value", [("remat_policy", "some"),
                                       ("attention_impl", "flash")])
def test_unknown_setting_raises_naming_it(key, value):
  with pytest.raises(ValueError, match=f"Unknown {key} '{value}'"):
    make_model(hypernet="none", **TINY, **{key: value})
  with pytest.raises(ValueError, match=key):
    config.preset("t5_1_1", "tiny", **{key: value})


def test_fallbacks_are_logged_naming_the_setting(caplog):
  cfg = config.preset("t5_1_1", "tiny")  # dropout 0.1
  q = jnp.zeros((1, 4, cfg.num_heads, cfg.d_kv))
  attention._LOGGED.clear()
  with caplog.at_level(logging.WARNING):
    assert attention.choose_impl(cfg.replace(attention_impl="xla"), q, None, None,
                                 deterministic=False) == "ours"
    assert attention.choose_impl(cfg.replace(attention_impl="xla"), q, None, None,
                                 deterministic=True) == "xla"
    if jax.default_backend() == "cpu":
      assert attention.choose_impl(cfg.replace(attention_impl="cudnn"), q, None,
                                   None, deterministic=True) == "ours"
  text = caplog.text
  assert "attention_impl='xla' falls back to 'ours'" in text and "dropout" in text
  if jax.default_backend() == "cpu":
    assert "attention_impl='cudnn'" in text and "GPU" in text
