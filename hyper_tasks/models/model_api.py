"""The t5x-like model API around :class:`~hyper_tasks.models.transformer.Transformer`.

``EncoderDecoderModel`` owns no parameters; it turns batches (the feature converter's
keys, see docs/ARCHITECTURE.md) into calls of the flax module:

  get_initial_variables(rng, input_shapes)    -> {"params": ...} (logically boxed)
  loss_fn(params, batch, dropout_rng)         -> (loss, metrics)
  score_batch(params, batch, adaptation=None) -> [B] summed target log-likelihood
  predict_batch(params, batch, adaptation=None, method="greedy"|"beam"|"sample")
  encode_instruction(params, hyper_tokens)    -> Adaptation   (once per task)
  cache_instruction_kv(params, adaptation)    -> Adaptation with fused keys/values

Passing a precomputed ``adaptation`` skips the hypernetwork: that is the per-task
cache. ``adaptation`` may be per task (no batch axis) or per example.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyper_tasks.models import decoding
from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.losses import (cross_entropy_with_z_loss, loss_weights,
                                       token_log_likelihood)
from hyper_tasks.models.transformer import Transformer

Batch = Mapping[str, Any]
# Data-dependent loss normalisers (t5x's SpecialLossNormalizingFactor names, which
# are accepted in any case); "sum" is t5x's None: no normalisation.
LOSS_NORMALIZERS = ("num_real_target_tokens", "num_total_target_tokens", "sum")
_SEGMENT_KEYS = {"encoder_segment_ids": "encoder_segment_ids",
                 "decoder_segment_ids": "decoder_segment_ids",
                 "encoder_positions": "encoder_positions",
                 "decoder_positions": "decoder_positions"}


def check_loss_normalizing_factor(factor: Any) -> Union[str, float]:
  """The canonical form of a t5x ``loss_normalizing_factor``.

  Args:
    factor: None or ``"sum"`` (t5x's None: the summed token losses, HINT's setting),
      a positive number (t5x's constant, e.g. ``2048 * 114 = 233472`` for T5's
      pretraining batch), ``"num_real_target_tokens"`` (mean over the weighted
      target tokens) or ``"num_total_target_tokens"`` (over every target position,
      padding included); names in any case.
  Returns:
    ``"sum"``, a float, or one of the names, lower case.
  Raises:
    ValueError: anything else.
  """
  if factor is None:
    return "sum"
  if isinstance(factor, str) and factor.lower() in LOSS_NORMALIZERS:
    return factor.lower()
  if (isinstance(factor, (int, float)) and not isinstance(factor, bool)
      and factor > 0):
    return float(factor)
  raise ValueError(f"loss_normalizing_factor={factor!r}: use None ('sum'), a "
                   f"positive constant, or one of {LOSS_NORMALIZERS[:2]}.")


class EncoderDecoderModel:
  """Loss, scoring and decoding for a (hyper-)T5.

  Args:
    module: the flax network.
    z_loss: t5x's auxiliary ``log(Z)^2`` coefficient.
    label_smoothing: target smoothing.
    loss_normalizing_factor: what the summed weighted token loss is divided by, as
      in t5x (:func:`check_loss_normalizing_factor`): "num_real_target_tokens"
      (mean over weighted tokens, the default), "num_total_target_tokens", None or
      "sum" (no division, t5x's None and HINT's setting), or a constant.
    vocabulary: optional seqio vocabulary, for ``predict_text`` helpers elsewhere.
  """

  def __init__(self, module: Transformer, z_loss: float = 1e-4,
               label_smoothing: float = 0.0,
               loss_normalizing_factor: Any = "num_real_target_tokens",
               vocabulary=None):
    self.module = module
    self.config = module.config
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = check_loss_normalizing_factor(
        loss_normalizing_factor)
    self.vocabulary = vocabulary

  @property
  def uses_instruction(self) -> bool:
    return self.module.hypernet is not None

  # -- variables -------------------------------------------------------------------
  def get_initial_variables(self, rng, input_shapes: Mapping[str, tuple],
                            boxed: bool = True) -> dict:
    """Initial ``{"params": ...}`` from batch shapes (e.g. ``{"encoder_input_tokens":
    (2, 16), ...}``); boxed with logical axis names unless ``boxed=False``."""
    enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    hyper = None
    if self.uses_instruction:
      shape = input_shapes.get("hyper_encoder_input_tokens", (enc.shape[0], 8))
      hyper = jnp.ones(shape, jnp.int32)
    variables = self.module.init({"params": rng, "dropout": rng}, enc, dec, hyper)
    variables = {"params": variables["params"]}
    return variables if boxed else nn.unbox(variables)

  def logical_axes(self, input_shapes) -> Any:
    """Logical ``PartitionSpec`` tree of the parameters (no compute, eval_shape)."""
    boxed = jax.eval_shape(lambda: self.get_initial_variables(
        jax.random.PRNGKey(0), input_shapes))
    return nn.get_partition_spec(boxed)["params"]

  # -- forward ---------------------------------------------------------------------
  def _logits(self, params, batch: Batch, adaptation=None, dropout_rng=None):
    kwargs = {k: batch[k] for k in _SEGMENT_KEYS if k in batch}
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], batch.get("hyper_encoder_input_tokens"),
        adaptation, enable_dropout=dropout_rng is not None, rngs=rngs, **kwargs)

  def loss_fn(self, params, batch: Batch, dropout_rng=None):
    """Weighted token cross-entropy (+ z-loss).

    Returns:
      (loss scalar, metrics dict: loss, z_loss, accuracy, loss_per_token (the loss
      per weighted target token whatever the normaliser, so runs with different
      normalisers compare), num_tokens, num_examples) — sums where the trainer
      should sum across microbatches.
    """
    logits = self._logits(params, batch, dropout_rng=dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = loss_weights(batch)
    tok_loss, tok_z = cross_entropy_with_z_loss(
        logits, targets, weights, self.label_smoothing, self.z_loss)
    weight_sum = jnp.sum(weights)
    norm = self.loss_normalizer(weights)
    loss = jnp.sum(tok_loss) / norm
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    metrics = {
        "loss": loss, "z_loss": jnp.sum(tok_z) / norm,
        "accuracy": jnp.sum(correct) / jnp.maximum(weight_sum, 1.0),
        "loss_per_token": jnp.sum(tok_loss) / jnp.maximum(weight_sum, 1.0),
        "num_tokens": weight_sum,
        "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
    }
    return loss, metrics

  def loss_normalizer(self, weights):
    """What the summed token loss of a batch with loss ``weights [B, Lt]`` is
    divided by (a float32 scalar; see ``loss_normalizing_factor``)."""
    f = self.loss_normalizing_factor
    if f == "num_real_target_tokens":
      return jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
    if f == "num_total_target_tokens":
      return jnp.asarray(weights.size, jnp.float32)
    return jnp.asarray(1.0 if f == "sum" else f, jnp.float32)

  def score_batch(self, params, batch: Batch, adaptation: Optional[Adaptation] = None,
                  return_intermediates: bool = False):
    """Summed log-likelihood of ``decoder_target_tokens`` per example, ``[B]``.

    Positions with zero ``decoder_loss_weights`` (padding) do not count.
    """
    logits = self._logits(params, batch, adaptation)
    targets = batch["decoder_target_tokens"]
    weights = loss_weights(batch)
    ll = token_log_likelihood(logits, targets) * weights
    scores = jnp.sum(ll, axis=-1)
    if return_intermediates:
      return scores, {"token_log_likelihood": ll,
                      "num_target_tokens": jnp.sum(weights, axis=-1)}
    return scores

  def encode_instruction(self, params, hyper_encoder_input_tokens) -> Adaptation:
    """Run the hypernetwork once: ``[B, Lh]`` tokens -> batched ``Adaptation``."""
    return self.module.apply({"params": params}, hyper_encoder_input_tokens,
                             method=Transformer.encode_instruction)

  def cache_instruction_kv(self, params, adaptation: Adaptation) -> Adaptation:
    """Add the fused instruction's per-layer cross-attention keys/values to an
    adaptation that carries only the instruction (e.g. from ``load_adaptation``), so
    that instances do not re-project it; see ``Transformer.cache_instruction_kv``."""
    return self.module.apply({"params": params}, adaptation,
                             method=Transformer.cache_instruction_kv)

  # -- decoding --------------------------------------------------------------------
  def predict_batch(self, params, batch: Batch,
                    adaptation: Optional[Adaptation] = None, method: str = "greedy",
                    max_decode_length: Optional[int] = None, num_beams: int = 4,
                    alpha: float = 0.6, temperature: float = 1.0, rng=None,
                    return_all_beams: bool = False):
    """Decode with a key/value cache.

    Args:
      batch: needs ``encoder_input_tokens`` (and ``hyper_encoder_input_tokens`` when
        the model has a hypernetwork and no ``adaptation`` is given);
        ``decoder_target_tokens`` or ``max_decode_length`` sets the length.
      method: "greedy", "beam" or "sample" (temperature, ``rng`` required).
    Returns:
      ``[B, max_decode_length]`` tokens (``[B, beams, L]`` with return_all_beams).
    """
    enc_tokens = batch["encoder_input_tokens"]
    b = enc_tokens.shape[0]
    if max_decode_length is None:
      if "decoder_target_tokens" not in batch:
        raise ValueError("predict_batch needs max_decode_length or "
                         "decoder_target_tokens in the batch.")
      max_decode_length = batch["decoder_target_tokens"].shape[1]
    variables = {"params": params}
    adaptation = self.module.apply(
        variables, batch.get("hyper_encoder_input_tokens"), adaptation,
        method=Transformer.resolve_adaptation)
    encoded, enc_mask = self.module.apply(variables, enc_tokens, adaptation,
                                          method=Transformer.encode)
    beams = num_beams if method == "beam" else 1
    if beams > 1:
      encoded = jnp.repeat(encoded, beams, axis=0)
      enc_mask = jnp.repeat(enc_mask, beams, axis=0)
      if adaptation is not None:
        adaptation = adaptation.repeat(beams)
    n = b * beams
    cache = self._init_cache(variables, encoded, enc_mask, adaptation, n,
                             max_decode_length)

    def step_fn(tokens, cache, step):
      positions = jnp.full((n, 1), step, jnp.int32)
      logits, mutated = self.module.apply(
          {**variables, "cache": cache}, encoded, enc_mask, tokens, adaptation,
          decoder_positions=positions, decode=True,
          max_decode_length=max_decode_length, method=Transformer.decode,
          mutable=["cache"])
      return logits[:, -1], mutated["cache"]

    cfg = self.config
    if method in ("greedy", "sample"):
      temp = 0.0 if method == "greedy" else temperature
      return decoding.sample_decode(step_fn, cache, n, max_decode_length, cfg.eos_id,
                                    cfg.decoder_start_id, temp, rng)
    if method == "beam":
      seqs, _ = decoding.beam_search(step_fn, cache, b, beams, max_decode_length,
                                     cfg.eos_id, cfg.decoder_start_id, alpha)
      return seqs if return_all_beams else seqs[:, 0]
    raise ValueError(f"Unknown decoding method {method!r}; use greedy|beam|sample.")

  def _init_cache(self, variables, encoded, enc_mask, adaptation, n, max_len):
    def init():
      _, mutated = self.module.apply(
          variables, encoded, enc_mask, jnp.zeros((n, max_len), jnp.int32),
          adaptation, decoder_positions=jnp.zeros((n, 1), jnp.int32), decode=True,
          max_decode_length=max_len, method=Transformer.decode, mutable=["cache"])
      return mutated["cache"]
    shapes = jax.eval_shape(init)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
