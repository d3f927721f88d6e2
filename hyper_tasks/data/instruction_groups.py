"""Instruction groups: batches whose consecutive examples share an instruction.

With ``instruction_group_size=g`` (``pipeline.get_dataset``), ``group_instructions``
reorders the example stream so every ``g`` consecutive examples share one
instruction, and ``dedupe_instructions`` then sends each group's instruction once
(``hyper_encoder_input_tokens`` ``[B / g, Lh]``).
"""
from __future__ import annotations

import tensorflow as tf

from hyper_tasks.data import features as F


def check_group_size(group: int, batch_size: int, pack: bool) -> int:
  group = int(group)
  if group < 1 or batch_size % group:
    raise ValueError(f"instruction_group_size={group} must be >= 1 and divide "
                     f"batch_size={batch_size}.")
  if group > 1 and pack:
    raise ValueError("instruction_group_size > 1 cannot be combined with packing "
                     "(packed rows mix instructions).")
  return group


def grouping_key(hyper_tokens: tf.Tensor) -> tf.Tensor:
  """The data-side grouping key of an instruction: an int64 hash of its tokens.

  Used only inside tf.data to gather the examples of one instruction into a
  window; it is not the adaptation cache's instruction identity (models/), which
  the data package does not import.
  """
  text = tf.strings.reduce_join(tf.strings.as_string(hyper_tokens),
                                separator=" ")
  return tf.strings.to_hash_bucket_fast(text, 2 ** 62)


def group_instructions(ds: tf.data.Dataset, group_size: int,
                       hyper_length: int) -> tf.data.Dataset:
  """Reorders a stream so every ``group_size`` consecutive examples share an
  instruction (their ``hyper_inputs`` truncated to ``hyper_length`` tokens).

  Examples wait in a per-instruction window until ``group_size`` of them have
  arrived, so the order stays shuffled across instructions and deterministic.
  A finite stream ends with the partial windows flushed (smaller groups); batches
  that straddle them fail :func:`dedupe_instructions`' check.
  """
  return ds.group_by_window(
      key_func=lambda ex: grouping_key(ex[F.HYPER_INPUTS][:hyper_length]),
      reduce_func=lambda _, window: window, window_size=group_size)


def dedupe_instructions(batch: dict, group_size: int) -> dict:
  """``hyper_encoder_input_tokens`` ``[B, Lh]`` -> ``[B / g, Lh]``, one row per
  group of ``g`` consecutive examples (the layout ``Transformer`` expands with
  ``Adaptation.repeat``). Fails if a group holds different instructions."""
  tokens = batch[F.HYPER_ENCODER_INPUT_TOKENS]
  groups = tf.reshape(tokens, [-1, group_size, tf.shape(tokens)[-1]])
  tf.debugging.assert_equal(
      groups, tf.broadcast_to(groups[:, :1], tf.shape(groups)),
      message=f"instruction_group_size={group_size}: a group of consecutive "
              "examples holds different instructions (a partial group at the end "
              "of a finite dataset?)")
  return {**batch, F.HYPER_ENCODER_INPUT_TOKENS: groups[:, 0]}
