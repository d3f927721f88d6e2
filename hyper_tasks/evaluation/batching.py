"""Fixed-shape numpy batches for evaluation and inference.

Evaluation reads plain records (text before tokenization, see
`hyper_tasks.data.features`), so it tokenizes in Python and turns the token ids
into the model's arrays with the data package's records-to-features contract
(`hyper_tasks.data.converters.convert_token_lists`, the functions the tf.data
feature converter runs): `hyper_encoder_input_tokens [B, Lh]`,
`encoder_input_tokens [B, Li]`, `decoder_input_tokens [B, Lt]`,
`decoder_target_tokens [B, Lt]`, `decoder_loss_weights [B, Lt]`.

Every batch has exactly `batch_size` rows, so jitted scoring and decoding
compile once: the last batch is padded by repeating its last real row (a real
row keeps attention masks non-empty and a batch of one instruction stays one
instruction) and the padded rows are dropped by the caller (`Batch.num_real`).

Rows are ordered so that rows sharing an instruction are adjacent
(`instruction_order`): most batches then hold one instruction and run with one
per-task adaptation; only batches at an instruction boundary mix them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from hyper_tasks.data import converters
from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import vocab as vocab_lib
from hyper_tasks.models.cache import instruction_key


@dataclasses.dataclass
class EncodedRows:
  """Token arrays of N rows, padded to the configured lengths.

  Attributes:
    arrays: model-feature name -> int32 `[N, L]` (see module docstring).
    truncated: token feature name (`hyper_inputs`, `inputs`, `targets`) ->
      number of rows cut to fit.
    num_target_tokens: `[N]` non-padding target tokens (EOS included), the
      per-token length normaliser of rank classification.
  """
  arrays: dict[str, np.ndarray]
  truncated: dict[str, int]
  num_target_tokens: np.ndarray

  def __len__(self) -> int:
    return int(self.arrays[F.ENCODER_INPUT_TOKENS].shape[0])


# Re-exported: evaluation checks its lengths with the data contract's rule.
check_sequence_lengths = converters.check_sequence_lengths


def encode_records(records: Sequence[Mapping[str, object]],
                   vocabulary: vocab_lib.VocabularyLike,
                   sequence_lengths: Mapping[str, int]) -> EncodedRows:
  """Tokenizes the text fields of `records` into fixed-length arrays.

  Args:
    records: dicts with `hyper_inputs`, `inputs` and `targets` strings.
    vocabulary: a seqio vocabulary or a name/path for `vocab.get_vocabulary`.
    sequence_lengths: `{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}`.

  Returns:
    The rows' `EncodedRows`.
  """
  lengths = check_sequence_lengths(sequence_lengths)
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  tokens = {}
  for key in F.TOKEN_FEATURES:
    texts = []
    for i, record in enumerate(records):
      if key not in record:
        raise ValueError(f"record {i} (task {record.get(F.TASK_NAMES)!r}) has "
                         f"no {key!r} field.")
      texts.append(record[key])
    tokens[key] = pipeline.tokenize(texts, vocabulary)
  arrays, truncated = converters.convert_token_lists(tokens, lengths)
  return EncodedRows(arrays, {k: int(v.sum()) for k, v in truncated.items()},
                     arrays[F.DECODER_LOSS_WEIGHTS].sum(axis=1))


def instruction_ids(hyper_tokens: np.ndarray) -> np.ndarray:
  """`[N]` id of each row's instruction (ids in order of first appearance;
  identity is `models.cache.instruction_key`, as in the adaptation cache)."""
  ids = np.empty(len(hyper_tokens), dtype=np.int64)
  seen: dict[bytes, int] = {}
  for i, row in enumerate(np.asarray(hyper_tokens)):
    ids[i] = seen.setdefault(instruction_key(row), len(seen))
  return ids


def instruction_order(hyper_tokens: np.ndarray) -> np.ndarray:
  """`[N]` permutation putting rows of one instruction together (stable)."""
  return np.argsort(instruction_ids(hyper_tokens), kind="stable")


@dataclasses.dataclass(frozen=True)
class Batch:
  """One fixed-size batch.

  Attributes:
    indices: `[batch_size]` row indices; the padded tail repeats the last real
      row.
    num_real: how many leading rows are real.
    homogeneous: whether all real rows share one instruction.
  """
  indices: np.ndarray
  num_real: int
  homogeneous: bool

  @property
  def real_indices(self) -> np.ndarray:
    return self.indices[:self.num_real]


def make_batches(order: np.ndarray, batch_size: int,
                 hyper_tokens: np.ndarray | None = None) -> list[Batch]:
  """Cuts `order` into batches of exactly `batch_size` rows.

  Args:
    order: `[N]` row indices in processing order.
    batch_size: rows per batch.
    hyper_tokens: `[N_all, Lh]`, to tell homogeneous batches (one instruction)
      from mixed ones; None marks every batch homogeneous (no hypernetwork).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  ids = None if hyper_tokens is None else instruction_ids(hyper_tokens)
  batches = []
  for start in range(0, len(order), batch_size):
    real = np.asarray(order[start:start + batch_size])
    pad = np.full(batch_size - len(real), real[-1], dtype=real.dtype)
    homogeneous = ids is None or len(set(ids[real].tolist())) == 1
    batches.append(Batch(np.concatenate([real, pad]), len(real), homogeneous))
  return batches


def gather(arrays: Mapping[str, np.ndarray], indices: np.ndarray,
           keys: Sequence[str]) -> dict[str, np.ndarray]:
  """`{key: arrays[key][indices]}` for `keys`."""
  return {k: arrays[k][indices] for k in keys}
