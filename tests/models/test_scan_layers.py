"""T5Config.scan_layers: one nn.scan per stack equals the unrolled layers (loss,
gradients, greedy decoding with the cache, remat), its parameters are the
per-layer ones stacked, checkpoints of either form restore into the other, and
what cannot be scanned yet is a clear error."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from hyper_tasks import tree_utils
from hyper_tasks.convert import hf
from hyper_tasks.models import builders
from hyper_tasks.models import scan_params
from hyper_tasks.train import initial_restore

V, B, LI, LT = 64, 2, 6, 5
SHAPES = {"encoder_input_tokens": (B, LI), "decoder_input_tokens": (B, LT)}
fast_jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


def _model(**kwargs):
  return builders.make_model(
      hypernet="none", vocab_size=V, dropout_rate=0.0,
      config_overrides=dict(num_encoder_layers=2, num_decoder_layers=3), **kwargs)


def _batch():
  rng = np.random.RandomState(0)
  tgt = rng.randint(2, V, size=(B, LT)).astype(np.int32)
  return {"encoder_input_tokens": rng.randint(2, V, size=(B, LI)).astype(np.int32),
          "decoder_input_tokens": np.concatenate(
              [np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones((B, LT), np.int32)}


def _stacked(params):
  return tree_utils.unflatten(scan_params.stack_layers(
      tree_utils.flatten(jax.device_get(params))))


@pytest.fixture(scope="module")
def pair():
  plain, scanned = _model(), _model(scan_layers=True)
  params = fast_jit(lambda k: plain.get_initial_variables(
      k, SHAPES, boxed=False)["params"])(jax.random.PRNGKey(0))
  return plain, scanned, params, _stacked(params)


def test_scanned_parameters_are_the_per_layer_ones_stacked(pair):
  _, scanned, params, stacked = pair
  boxed = jax.eval_shape(lambda k: scanned.get_initial_variables(k, SHAPES)["params"],
                         jax.random.PRNGKey(0))
  want = {k: tuple(v.shape) for k, v in tree_utils.leaves_by_path(stacked).items()}
  got = {k: tuple(v.shape) for k, v in tree_utils.leaves_by_path(
      nn.unbox(boxed)).items()}
  assert got == want
  assert got["encoder/layers/mlp/wi_0/kernel"][0] == 2
  assert got["decoder/layers/mlp/wo/kernel"][0] == 3
  # The stacked axis carries the logical name "layers" (replicated by the rules).
  spec = nn.get_partition_spec(boxed)["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert tuple(spec)[0] == "layers"
  back = scan_params.unstack_layers(scan_params.stack_layers(
      tree_utils.flatten(jax.device_get(params))))
  flat = tree_utils.flatten(jax.device_get(params))
  assert sorted(back) == sorted(flat)
  for key in flat:
    np.testing.assert_array_equal(back[key], flat[key])


def test_loss_gradients_and_decoding_equal_the_unrolled_stack(pair):
  plain, scanned, params, stacked = pair
  batch = _batch()
  grad = lambda m: fast_jit(jax.value_and_grad(
      lambda p: m.loss_fn(p, batch)[0]))
  loss_a, grads_a = grad(plain)(params)
  loss_b, grads_b = grad(scanned)(stacked)
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
  want = scan_params.stack_layers(tree_utils.flatten(jax.device_get(grads_a)))
  got = tree_utils.flatten(jax.device_get(grads_b))
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=1e-5,
                               err_msg=key)
  decode = lambda m, p: np.asarray(fast_jit(functools.partial(
      m.predict_batch, method="greedy", max_decode_length=LT))(p, batch))
  np.testing.assert_array_equal(decode(scanned, stacked), decode(plain, params))


def test_scan_with_remat_has_the_same_gradients(pair):
  _, _, params, stacked = pair
  batch = _batch()
  full = _model(scan_layers=True, remat_policy="full")
  ref = _model(scan_layers=True)
  g = lambda m: tree_utils.flatten(jax.device_get(fast_jit(jax.grad(
      lambda p: m.loss_fn(p, batch)[0]))(stacked)))
  a, b = g(full), g(ref)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=1e-6, rtol=1e-5, err_msg=key)


def test_checkpoints_restore_across_the_two_forms(pair, tmp_path):
  plain, scanned, params, stacked = pair
  hf.save_t5(jax.device_get(params), plain.config, str(tmp_path / "hf"))
  abstract = jax.eval_shape(lambda k: scanned.get_initial_variables(
      k, SHAPES, boxed=False)["params"], jax.random.PRNGKey(0))
  loaded, _ = initial_restore.load_params(str(tmp_path / "hf"), abstract, "hf")
  want = tree_utils.flatten(stacked)
  got = tree_utils.flatten(loaded)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # A scanned tree restores into the unrolled model.
  flat_abstract = tree_utils.leaves_by_path(jax.eval_shape(
      lambda k: plain.get_initial_variables(k, SHAPES, boxed=False)["params"],
      jax.random.PRNGKey(0)))
  adapted = scan_params.adapt_to_targets(want, flat_abstract)
  for key, value in tree_utils.flatten(jax.device_get(params)).items():
    np.testing.assert_array_equal(adapted[key], value, err_msg=key)
  assert not any("/layers/" in k for k in adapted)


def test_what_cannot_be_scanned_is_a_clear_error():
  hint = builders.make_model(
      hypernet="hint", vocab_size=V, dropout_rate=0.0, scan_layers=True,
      peft_spec=builders.make_peft_spec(adapter_size=4),
      hypernet_kwargs={"num_heads": 2, "dropout_rate": 0.0},
      config_overrides=dict(num_encoder_layers=1, num_decoder_layers=1))
  shapes = dict(SHAPES, hyper_encoder_input_tokens=(B, 4))
  with pytest.raises(ValueError, match="scan_layers.*adaptation.*scan_layers=False"):
    jax.eval_shape(lambda k: hint.get_initial_variables(k, shapes)["params"],
                   jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="different shapes"):
    scan_params.stack_layers({"encoder/layers_0/w": np.zeros((2, 3)),
                              "encoder/layers_1/w": np.zeros((2, 4))})
  with pytest.raises(ValueError, match="not 0..1"):
    scan_params.stack_layers({"encoder/layers_0/w": np.zeros(2),
                              "encoder/layers_2/w": np.zeros(2)})
