"""The loss normaliser, as t5x's ``loss_normalizing_factor``: None sums the weighted
token losses (HINT's setting), a constant divides that sum, the token mean divides by
the loss weights; every form is the same summed loss scaled, checked against a numpy
transcription of t5x's ``compute_weighted_cross_entropy``."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.models import builders
from hyper_tasks.models.model_api import check_loss_normalizing_factor

B, LI, LT, V = 3, 6, 5, 64
Z_LOSS = 1e-4
T5_CONSTANT = 2048 * 114  # t5x's factor for the MeshTF T5 checkpoints


def _key(i):
  return jax.random.key(i, impl="rbg")


def _model(factor):
  return builders.make_model(hypernet="none", vocab_size=V, dropout_rate=0.0,
                             z_loss=Z_LOSS, loss_normalizing_factor=factor)


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, V, size=(B, LI)).astype(np.int32)
  tgt = rng.randint(2, V, size=(B, LT)).astype(np.int32)
  tgt[1, 2:] = 0
  tgt[2, 4:] = 0
  dec = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


@pytest.fixture(scope="module")
def params():
  shapes = {k: v.shape for k, v in _batch().items()}
  return nn.unbox(_model(None).get_initial_variables(_key(0), shapes))["params"]


def _t5x_sum(logits, targets, weights):
  """t5x ``compute_weighted_cross_entropy`` with ``loss_normalizing_factor=None``
  (no label smoothing): ``sum(weights * (-log p(target) + z_loss * log(Z)^2))``."""
  logits = logits.astype(np.float64)
  top = logits.max(-1)
  log_z = np.log(np.exp(logits - top[..., None]).sum(-1)) + top
  log_p = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - log_z
  return np.sum(weights * (-log_p + Z_LOSS * log_z ** 2))


def test_normalisers_scale_the_summed_loss_exactly_as_t5x(params):
  batch = _batch()
  weights = batch["decoder_loss_weights"]
  losses, metrics = {}, {}
  for factor in (None, "sum", T5_CONSTANT, "NUM_REAL_TARGET_TOKENS",
                 "num_total_target_tokens"):
    model = _model(factor)
    loss, m = jax.jit(model.loss_fn)(params, batch)
    losses[factor], metrics[factor] = float(loss), jax.device_get(m)
  logits = np.asarray(_model(None).module.apply(
      {"params": params}, batch["encoder_input_tokens"],
      batch["decoder_input_tokens"]))
  total = _t5x_sum(logits, batch["decoder_target_tokens"], weights)
  np.testing.assert_allclose(losses[None], total, rtol=1e-5)
  assert losses["sum"] == losses[None]
  # t5x: total_loss /= loss_normalizing_factor.
  np.testing.assert_allclose(losses[T5_CONSTANT], losses[None] / T5_CONSTANT,
                             rtol=1e-6)
  np.testing.assert_allclose(losses["NUM_REAL_TARGET_TOKENS"],
                             losses[None] / weights.sum(), rtol=1e-6)
  np.testing.assert_allclose(losses["num_total_target_tokens"],
                             losses[None] / (B * LT), rtol=1e-6)
  # The z-loss part is scaled the same way; the per-token loss is comparable
  # whatever the normaliser.
  np.testing.assert_allclose(metrics[T5_CONSTANT]["z_loss"] * T5_CONSTANT,
                             metrics[None]["z_loss"], rtol=1e-5)
  for factor, m in metrics.items():
    np.testing.assert_allclose(m["loss_per_token"], losses[None] / weights.sum(),
                               rtol=1e-6, err_msg=str(factor))


def test_gradients_scale_with_the_constant(params):
  batch = _batch()
  grad = lambda f: jax.jit(jax.grad(lambda p: _model(f).loss_fn(p, batch)[0]))(params)
  summed, scaled = grad(None), grad(T5_CONSTANT)
  for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(np.asarray(b) * T5_CONSTANT, np.asarray(a),
                               rtol=1e-4, atol=1e-6)


def test_spellings_and_bad_values():
  assert check_loss_normalizing_factor(None) == "sum"
  assert check_loss_normalizing_factor("NUM_REAL_TARGET_TOKENS") == (
      "num_real_target_tokens")
  assert check_loss_normalizing_factor(233472) == 233472.0
  for bad in (0, -1.0, True, "AVERAGE_PER_SEQUENCE", "mean"):
    with pytest.raises(ValueError, match="loss_normalizing_factor"):
      check_loss_normalizing_factor(bad)
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    _model("tokens")
