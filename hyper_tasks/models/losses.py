"""Token losses as t5x defines them, and the one default for loss weights.

* :func:`loss_weights`: a batch's ``decoder_loss_weights`` (or, when the batch has
  none, its non-padding target positions) -- the single definition used by the
  model's loss and scoring and by the trainer's microbatch weighting.
* :func:`cross_entropy_with_z_loss`: cross-entropy with z-loss and label smoothing.
* :func:`token_log_likelihood`: ``log p(target)`` per position.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def loss_weights(batch) -> jax.Array:
  """``decoder_loss_weights`` (or non-padding targets) as float32 ``[B, Lt]``."""
  w = batch.get("decoder_loss_weights")
  if w is None:
    w = batch["decoder_target_tokens"] > 0
  return w.astype(jnp.float32)


def cross_entropy_with_z_loss(logits, targets, weights=None, label_smoothing=0.0,
                              z_loss=0.0):
  """Per-token losses.

  Args:
    logits: ``[B, L, V]``; targets ``[B, L]`` int; weights ``[B, L]`` or None.
    label_smoothing: mass spread uniformly over the other ``V - 1`` classes; the
      constant entropy of the smoothed target is subtracted so a perfect model scores
      zero (t5x convention).
    z_loss: coefficient of ``log(Z)^2``, which keeps the softmax normaliser near 1.
  Returns:
    (total ``[B, L]``, z_loss part ``[B, L]``), both already multiplied by ``weights``.
  """
  logits = logits.astype(jnp.float32)
  v = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  confidence = 1.0 - label_smoothing
  if label_smoothing > 0:
    low = label_smoothing / (v - 1)
    norm = -(confidence * jnp.log(confidence) + (v - 1) * low * jnp.log(low + 1e-20))
    soft = jax.nn.one_hot(targets, v) * (confidence - low) + low
    loss = -jnp.sum(soft * log_probs, axis=-1) - norm
  else:
    loss = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  zl = z_loss * jnp.square(log_z)
  loss = loss + zl
  if weights is not None:
    loss, zl = loss * weights, zl * weights
  return loss, zl


def token_log_likelihood(logits, targets):
  """``log p(target)`` per position ``[B, L]``."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
