"""The records-to-features contract: token features -> the model's batch arrays.

The one home of the rules that turn token sequences into model features
(``model_features``): length checks (``check_sequence_lengths``), truncation
(``trim_and_pad_batch``), the decoder's shifted-right inputs (``shift_right``) and
loss weights (``loss_weights``). The tf.data pipeline uses them through
``HyperEncDecFeatureConverter``; evaluation, which tokenizes plain records in
Python, calls ``convert_token_lists`` (the same functions, run eagerly), so both
produce the same arrays by construction.

``HyperEncDecFeatureConverter`` is seqio's encoder-decoder converter with a third
stream for the hypernetwork::

  hyper_inputs [<=Lh] -> hyper_encoder_input_tokens [Lh]
  inputs       [<=Li] -> encoder_input_tokens       [Li]
  targets      [<=Lt] -> decoder_target_tokens      [Lt]
                         decoder_input_tokens       [Lt]  targets shifted right, 0 first
                         decoder_loss_weights       [Lt]  1 on real target tokens

Pad id is 0, EOS 1. Lengths come as ``{"hyper_inputs": Lh, "inputs": Li,
"targets": Lt}``.

Truncation. seqio trims inside ``Task.get_dataset`` and its converter base class
asserts that inputs already fit, so truncation would be silent. Here the Task is
read untrimmed (``trim_output_features=False``) and the converter trims itself: a
sequence longer than its length keeps its first ``L - 1`` tokens and its EOS (so
the model still sees where the text ends), and a ``TruncationCounter`` counts, per
feature, how many examples were cut. The counter is a ``tf.Variable`` updated inside
the tf.data graph, so it also works when packing merges examples; it counts
examples as the pipeline produces them (a few batches ahead of the consumer, exact
once a finite dataset is exhausted). The base class's length assertions are turned
off for that reason (``apply_length_check=False``); output shapes are static.

Packing (baseline only, default off): examples are packed on ``inputs`` and
``targets`` with seqio's packing ops, adding ``encoder_segment_ids``,
``encoder_positions``, ``decoder_segment_ids`` and ``decoder_positions``. Packed
rows mix examples of different tasks, which a hypernetwork cannot condition on, so
``hyper_inputs`` is dropped and ``hyper_encoder_input_tokens`` is all padding
``[Lh]`` (kept so that batches have one structure).
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data.vocab import DECODER_START_ID, EOS_ID, PAD_ID

_Spec = seqio.FeatureConverter.FeatureSpec


class TruncationCounter:
  """Counts, per token feature, the examples longer than their configured length.

  ``as_dict()`` returns ``{"examples": n, "hyper_inputs": k_h, "inputs": k_i,
  "targets": k_t}``: n examples seen, k of them truncated in that feature.
  """

  def __init__(self, feature_names: Sequence[str] = F.TOKEN_FEATURES):
    self.feature_names = tuple(feature_names)
    # Slot 0 counts examples; slot i + 1 counts truncations of feature i.
    self._counts = tf.Variable(
        tf.zeros([len(self.feature_names) + 1], tf.int64), trainable=False)

  def update(self, truncated: tf.Tensor) -> None:
    """Adds one example; ``truncated`` is a bool vector over ``feature_names``."""
    self._counts.assign_add(
        tf.concat([[1], tf.cast(truncated, tf.int64)], axis=0))

  def update_batch(self, truncated: tf.Tensor) -> None:
    """Adds a batch; ``truncated`` is bool ``[B, len(feature_names)]``."""
    counts = tf.reduce_sum(tf.cast(truncated, tf.int64), axis=0)
    self._counts.assign_add(tf.concat(
        [tf.shape(truncated, out_type=tf.int64)[:1], counts], axis=0))

  def as_dict(self) -> dict[str, int]:
    counts = [int(c) for c in self._counts.numpy()]
    return {"examples": counts[0],
            **dict(zip(self.feature_names, counts[1:]))}

  def reset(self) -> None:
    self._counts.assign(tf.zeros_like(self._counts))


def trim_and_pad_batch(tokens: tf.RaggedTensor, length: int,
                       eos_id: int = EOS_ID) -> tuple[tf.Tensor, tf.Tensor]:
  """``trim_keep_eos`` and padding of a batch of sequences.

  Args:
    tokens: ``[B, None]`` ragged int32.
    length: L.
    eos_id: EOS kept at the end of a cut sequence that had one.

  Returns:
    (``[B, L]`` int32 padded with 0, ``[B]`` bool: whether each row was cut).
  """
  row_lengths = tokens.row_lengths()
  truncated = row_lengths > length
  dense = tokens[:, :length].to_tensor(default_value=PAD_ID)
  # to_tensor pads only up to the longest row: pad the rest of the way.
  dense = tf.pad(dense, [[0, 0], [0, length - tf.shape(dense)[1]]],
                 constant_values=PAD_ID)
  # Last token of each row (a 0 appended so that empty batches can gather).
  values = tf.concat([tokens.values, tf.zeros([1], tokens.dtype)], axis=0)
  last = tf.gather(values, tf.maximum(tokens.row_limits() - 1, 0))
  ends_with_eos = tf.logical_and(row_lengths > 0, tf.equal(last, eos_id))
  keep_eos = tf.logical_and(truncated, ends_with_eos)[:, None]
  head, tail = dense[:, :length - 1], dense[:, length - 1:]
  tail = tf.where(keep_eos, tf.cast(eos_id, dense.dtype), tail)
  dense = tf.concat([head, tail], axis=1)
  batch = tf.shape(dense)[0]
  return tf.reshape(dense, [batch, length]), truncated


def trim_keep_eos(tokens: tf.Tensor, length: int,
                  eos_id: int = EOS_ID) -> tuple[tf.Tensor, tf.Tensor]:
  """``trim_and_pad_batch`` of one 1-D sequence, without the padding.

  Returns:
    (trimmed tokens ``[<= length]``, scalar bool: whether it was cut).
  """
  dense, truncated = trim_and_pad_batch(
      tf.RaggedTensor.from_tensor(tokens[None]), length, eos_id)
  return dense[0, :tf.minimum(tf.size(tokens), length)], truncated[0]


def check_sequence_lengths(sequence_lengths: Mapping[str, int]
                           ) -> dict[str, int]:
  """``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}`` as positive ints.

  Raises:
    ValueError: a token feature's length is missing or not positive.
  """
  missing = [k for k in F.TOKEN_FEATURES if k not in sequence_lengths]
  if missing:
    raise ValueError(f"sequence_lengths needs keys {list(F.TOKEN_FEATURES)}; "
                     f"missing {missing}.")
  lengths = {k: int(sequence_lengths[k]) for k in F.TOKEN_FEATURES}
  bad = {k: v for k, v in lengths.items() if v < 1}
  if bad:
    raise ValueError(f"sequence_lengths must be positive, got {bad}.")
  return lengths


def shift_right(targets: tf.Tensor,
                bos_id: int = DECODER_START_ID) -> tf.Tensor:
  """Decoder inputs of unpacked ``[B, Lt]`` targets: ``bos_id`` then targets[:-1].

  (As t5x: a final EOS moves out, the EOS of a shorter target into a padded
  position. Packed rows restart at every segment: seqio's
  ``make_autoregressive_inputs`` with ``sequence_id``.)
  """
  return tf.concat([tf.fill([tf.shape(targets)[0], 1],
                            tf.constant(bos_id, targets.dtype)),
                    targets[:, :-1]], axis=1)


def loss_weights(targets: tf.Tensor) -> tf.Tensor:
  """int32 ``1`` on real target tokens (EOS included), ``0`` on padding."""
  return tf.cast(tf.not_equal(targets, PAD_ID), tf.int32)


def model_features(tokens: Mapping[str, tf.RaggedTensor],
                   lengths: Mapping[str, int],
                   bos_id: int = DECODER_START_ID,
                   eos_id: int = EOS_ID
                   ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """The model features of a batch of unpacked examples.

  Args:
    tokens: token feature name -> ``[B, None]`` ragged int32 (EOS appended).
    lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    bos_id: the decoder's start id.
    eos_id: EOS kept at the end of a cut sequence that had one.

  Returns:
    (model feature name -> ``[B, L]`` int32, bool ``[B, 3]``: whether each
    example was cut, per token feature in ``F.TOKEN_FEATURES`` order).
  """
  out, flags = {}, []
  for key in F.TOKEN_FEATURES:
    out[key], cut = trim_and_pad_batch(tokens[key], lengths[key], eos_id)
    flags.append(cut)
  targets = out[F.TARGETS]
  return {
      F.HYPER_ENCODER_INPUT_TOKENS: out[F.HYPER_INPUTS],
      F.ENCODER_INPUT_TOKENS: out[F.INPUTS],
      F.DECODER_TARGET_TOKENS: targets,
      F.DECODER_INPUT_TOKENS: shift_right(targets, bos_id),
      F.DECODER_LOSS_WEIGHTS: loss_weights(targets),
  }, tf.stack(flags, axis=1)


def _ragged(rows: Sequence[Sequence[int]]) -> tf.RaggedTensor:
  row_lengths = np.array([len(r) for r in rows], np.int64)
  values = np.fromiter(itertools.chain.from_iterable(rows), np.int32,
                       count=int(row_lengths.sum()))
  return tf.RaggedTensor.from_row_lengths(values, row_lengths)


def convert_token_lists(tokens: Mapping[str, Sequence[Sequence[int]]],
                        sequence_lengths: Mapping[str, int],
                        bos_id: int = DECODER_START_ID,
                        eos_id: int = EOS_ID
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """``model_features`` of rows tokenized in Python, as numpy (evaluation).

  Args:
    tokens: token feature name -> N token-id lists (EOS appended).
    sequence_lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    bos_id: the decoder's start id.
    eos_id: EOS kept at the end of a cut sequence that had one.

  Returns:
    (model feature name -> int32 ``[N, L]``, token feature name -> bool ``[N]``
    whether each row was cut).
  """
  lengths = check_sequence_lengths(sequence_lengths)
  arrays, truncated = model_features(
      {k: _ragged(tokens[k]) for k in F.TOKEN_FEATURES}, lengths, bos_id,
      eos_id)
  truncated = truncated.numpy()
  return ({k: v.numpy() for k, v in arrays.items()},
          {k: truncated[:, i] for i, k in enumerate(F.TOKEN_FEATURES)})


class HyperEncDecFeatureConverter(seqio.FeatureConverter):
  """Encoder-decoder feature converter with a hypernetwork input stream.

  Attributes:
    truncation: the ``TruncationCounter`` updated by datasets this converter
      builds.
  """

  TASK_FEATURES = {k: _Spec(dtype=tf.int32) for k in F.TOKEN_FEATURES}
  MODEL_FEATURES = {k: _Spec(dtype=tf.int32) for k in F.MODEL_FEATURES}
  PACKING_FEATURE_DTYPES = {k: tf.int32 for k in F.PACKING_FEATURES}

  def __init__(self,
               pack: bool = False,
               use_custom_packing_ops: bool = False,
               bos_id: int = DECODER_START_ID,
               eos_id: int = EOS_ID,
               truncation: TruncationCounter | None = None):
    # Trimming (with counting) happens in _convert_features, so the base class
    # must not assert that inputs already fit.
    super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=False, bos_id=bos_id)
    self._eos_id = eos_id
    self.truncation = truncation or TruncationCounter()

  def _trim_and_count(self, ex: Mapping[str, tf.Tensor],
                      lengths: Mapping[str, int]) -> dict[str, tf.Tensor]:
    out, flags = {}, []
    for key in F.TOKEN_FEATURES:
      out[key], cut = trim_keep_eos(ex[key], lengths[key], self._eos_id)
      flags.append(cut)
    self.truncation.update(tf.stack(flags))
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    lengths = dict(task_feature_lengths)
    if not self.pack:
      def convert(ex):
        # One example is a batch of one.
        out, truncated = model_features(
            {k: tf.RaggedTensor.from_tensor(ex[k][None])
             for k in F.TOKEN_FEATURES}, lengths, self.bos_id, self._eos_id)
        self.truncation.update(truncated[0])
        return {k: v[0] for k, v in out.items()}
      return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    ds = ds.map(lambda ex: self._trim_and_count(ex, lengths),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda ex: {F.INPUTS: ex[F.INPUTS], F.TARGETS: ex[F.TARGETS]},
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = seqio.utils.trim_and_pack_dataset(
        ds, {F.INPUTS: lengths[F.INPUTS], F.TARGETS: lengths[F.TARGETS]},
        self._use_custom_packing_ops)
    hyper_length = lengths[F.HYPER_INPUTS]

    def convert_packed(ex):
      targets = ex[F.TARGETS]
      return {
          F.HYPER_ENCODER_INPUT_TOKENS: tf.zeros([hyper_length], tf.int32),
          F.ENCODER_INPUT_TOKENS: ex[F.INPUTS],
          F.DECODER_TARGET_TOKENS: targets,
          F.DECODER_INPUT_TOKENS: seqio.utils.make_autoregressive_inputs(
              targets, sequence_id=ex["targets_segment_ids"],
              bos_id=self.bos_id),
          F.DECODER_LOSS_WEIGHTS: loss_weights(targets),
          "encoder_segment_ids": ex["inputs_segment_ids"],
          "encoder_positions": ex["inputs_positions"],
          "decoder_segment_ids": ex["targets_segment_ids"],
          "decoder_positions": ex["targets_positions"],
      }
    return ds.map(convert_packed, num_parallel_calls=tf.data.AUTOTUNE)

  def convert_batched(self, ds: tf.data.Dataset,
                      task_feature_lengths: Mapping[str, int],
                      batch_size: int,
                      drop_remainder: bool = True) -> tf.data.Dataset:
    """Batches and converts in one step: the fast path of unpacked batches.

    Gives exactly the arrays of ``self(ds, lengths).batch(batch_size)`` (both
    run ``model_features``) but on whole batches at once: per-example
    conversion costs more than tokenization on short examples. Truncation is counted over the
    examples of the batches produced (a dropped remainder is not counted).

    Args:
      ds: task examples (token features as 1-D int32 sequences).
      task_feature_lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets":
        Lt}``.
      batch_size: examples per batch ``B``.
      drop_remainder: drop a final partial batch.

    Returns:
      Batches of the model features, ``[B, L]`` int32 each.

    Raises:
      ValueError: a packing converter (packing works on examples).
    """
    if self.pack:
      raise ValueError("convert_batched does not pack; use the converter "
                       "on examples and batch afterwards.")
    lengths = check_sequence_lengths(task_feature_lengths)
    ds = self._validate_dataset(ds, self.TASK_FEATURES, lengths,
                                strict=False, error_label="input_validation")
    ds = ds.map(lambda ex: {k: ex[k] for k in F.TOKEN_FEATURES},
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ragged_batch(batch_size, drop_remainder=drop_remainder)

    def convert(batch):
      out, truncated = model_features(batch, lengths, self.bos_id,
                                      self._eos_id)
      self.truncation.update_batch(truncated)
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> dict[str, int]:
    lh = task_feature_lengths[F.HYPER_INPUTS]
    li = task_feature_lengths[F.INPUTS]
    lt = task_feature_lengths[F.TARGETS]
    lengths = {
        F.HYPER_ENCODER_INPUT_TOKENS: lh,
        F.ENCODER_INPUT_TOKENS: li,
        F.DECODER_INPUT_TOKENS: lt,
        F.DECODER_TARGET_TOKENS: lt,
        F.DECODER_LOSS_WEIGHTS: lt,
    }
    if self.pack:
      lengths.update(encoder_segment_ids=li, encoder_positions=li,
                     decoder_segment_ids=lt, decoder_positions=lt)
    return lengths
