"""Feature names and the one record schema every source in the package emits.

Every task, whatever its source (SNI file, promptsource template, C4 document, toy
generator), yields records with the same keys, so mixtures need no per-source glue
and the evaluator reads the same metadata everywhere:

  text, tokenized by the task's vocabulary (EOS appended to each):
    ``hyper_inputs``  what the hypernetwork reads (instruction, shots, C4 prefix)
    ``inputs``        what the backbone encoder reads (the instance)
    ``targets``       what the decoder predicts
  string metadata, passed through untokenized:
    ``task_names``    the source task (SNI task, P3 dataset, toy operation...)
    ``references``    all reference outputs, a JSON-encoded list of strings
    ``category``      SNI task category ("" elsewhere)
    ``template``      promptsource template name ("" elsewhere)
    ``example_id``    unique per example (shared by the choices of one example)
  integer metadata (rank classification; 0/1/1 for generation examples):
    ``choice_index``, ``is_correct``, ``num_choices``

The model-side names (feature-converter outputs) live here too.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

HYPER_INPUTS = "hyper_inputs"
INPUTS = "inputs"
TARGETS = "targets"
TASK_NAMES = "task_names"
REFERENCES = "references"
CATEGORY = "category"
TEMPLATE = "template"
EXAMPLE_ID = "example_id"
CHOICE_INDEX = "choice_index"
IS_CORRECT = "is_correct"
NUM_CHOICES = "num_choices"

TOKEN_FEATURES = (HYPER_INPUTS, INPUTS, TARGETS)
STRING_METADATA = (TASK_NAMES, REFERENCES, CATEGORY, TEMPLATE, EXAMPLE_ID)
INT_METADATA = (CHOICE_INDEX, IS_CORRECT, NUM_CHOICES)
METADATA = STRING_METADATA + INT_METADATA
RECORD_KEYS = TOKEN_FEATURES + METADATA

# Feature-converter outputs (see converters.py).
HYPER_ENCODER_INPUT_TOKENS = "hyper_encoder_input_tokens"
ENCODER_INPUT_TOKENS = "encoder_input_tokens"
DECODER_INPUT_TOKENS = "decoder_input_tokens"
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"
MODEL_FEATURES = (HYPER_ENCODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS,
                  DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS,
                  DECODER_LOSS_WEIGHTS)
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions",
                    "decoder_segment_ids", "decoder_positions")

# tf.data signature of one text-level record.
RECORD_SIGNATURE = {
    **{k: tf.TensorSpec([], tf.string) for k in TOKEN_FEATURES + STRING_METADATA},
    **{k: tf.TensorSpec([], tf.int32) for k in INT_METADATA},
}


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """The seqio output features: three token features, EOS on each.

  ``hyper_inputs`` gets EOS even when empty (baselines): an all-padding row would
  leave a hypernetwork's attention with nothing to attend to.
  """
  return {
      k: seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32)
      for k in TOKEN_FEATURES
  }


def make_example(
    hyper_inputs: str,
    inputs: str,
    targets: str,
    task_name: str,
    *,
    references: Optional[Sequence[str]] = None,
    category: str = "",
    template: str = "",
    example_id: str = "",
    choice_index: int = 0,
    is_correct: int = 1,
    num_choices: int = 1,
) -> dict[str, Any]:
  """One text-level record with every key of the schema filled in.

  ``references`` defaults to ``[targets]``.
  """
  if references is None:
    references = [targets]
  return {
      HYPER_INPUTS: hyper_inputs,
      INPUTS: inputs,
      TARGETS: targets,
      TASK_NAMES: task_name,
      REFERENCES: json.dumps(list(references), ensure_ascii=False),
      CATEGORY: category,
      TEMPLATE: template,
      EXAMPLE_ID: example_id,
      CHOICE_INDEX: int(choice_index),
      IS_CORRECT: int(is_correct),
      NUM_CHOICES: int(num_choices),
  }


def records_to_dataset(
    records: Sequence[Mapping[str, Any]],
    *,
    shuffle: bool = False,
    seed: Optional[int] = None,
    shard_index: int = 0,
    num_shards: int = 1,
) -> tf.data.Dataset:
  """An in-memory list of records as a dataset, sharded and shuffled by index.

  Shuffling permutes indices over the whole shard (not a window) and reshuffles at
  each repetition, deterministically for a seed. Strings are gathered from columns
  in blocks of indices, so the shuffle moves integers, not text.
  """
  columns = {}
  for key in RECORD_KEYS:
    values = [r[key] for r in records]
    if key in INT_METADATA:
      columns[key] = np.asarray(values, dtype=np.int32)
    else:
      columns[key] = np.asarray(
          [v.encode("utf-8") if isinstance(v, str) else v for v in values],
          dtype=object)
  if not records:
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.zeros([0], s.dtype) for k, s in RECORD_SIGNATURE.items()})
  tensors = {k: tf.constant(v) for k, v in columns.items()}
  indices = tf.data.Dataset.range(len(records))
  if num_shards > 1:
    indices = indices.shard(num_shards, shard_index)
  if shuffle:
    size = -(-len(records) // num_shards)
    indices = indices.shuffle(size, seed=seed, reshuffle_each_iteration=True)
  # Gathering 256 rows per op call and unbatching costs half as much per
  # example as one gather per example; the order is the same.
  return indices.batch(256).map(
      lambda i: {k: tf.gather(v, i) for k, v in tensors.items()},
      num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
  """A numpy example from tf.data as plain Python (bytes -> str, arrays -> lists)."""
  out = {}
  for key, value in example.items():
    if isinstance(value, bytes):
      out[key] = value.decode("utf-8", errors="replace")
    elif isinstance(value, np.ndarray):
      if value.dtype == object:
        out[key] = [v.decode("utf-8", errors="replace") for v in value.tolist()]
      else:
        out[key] = value.tolist()
    elif isinstance(value, np.generic):
      out[key] = value.item()
    else:
      out[key] = value
  return out
