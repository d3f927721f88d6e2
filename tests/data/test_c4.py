"""C4 splitting: determinism, whole-document coverage, lengths; local sources."""
import gzip
import json

import numpy as np
import pytest
import tensorflow as tf

from hyper_tasks.data import c4
from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline

EOS = 1
LENGTHS = {F.HYPER_INPUTS: 9, F.INPUTS: 7, F.TARGETS: 5}


def _split(n, seed=(11, 0), lengths=None, num_parts=3):
  tokens = tf.range(3, n + 3, dtype=tf.int32)
  parts = c4.split_document(tokens, tf.constant(seed, tf.int64),
                            lengths or LENGTHS, num_parts, EOS)
  return {k: (v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy().tolist())
          for k, v in parts.items()}


def _reassemble(parts, num_parts):
  """The document tokens of all chunks, in order, from the cut parts."""
  out = []
  for hyper, inputs, targets in zip(parts[F.HYPER_INPUTS], parts[F.INPUTS],
                                    parts[F.TARGETS]):
    assert hyper[-1] == inputs[-1] == targets[-1] == EOS
    if num_parts == 3:
      out += hyper[:-1] + inputs[:-1] + targets[:-1]
    else:
      a, d = hyper[:-1][:hyper.index(EOS)], hyper[:-1][hyper.index(EOS) + 1:]
      assert a and d, "4-part hyper_inputs holds two non-empty pieces"
      out += a + inputs[:-1] + targets[:-1] + d
  return out


@pytest.mark.parametrize("num_parts", [3, 4])
@pytest.mark.parametrize("n", [4, 5, 8, 17, 18, 19, 50, 123])
def test_parts_cover_document_and_fit(n, num_parts):
  parts = _split(n, num_parts=num_parts)
  assert _reassemble(parts, num_parts) == list(range(3, n + 3))
  k = len(parts["chunk"])
  capacity = sum(LENGTHS.values()) - 3 - (num_parts == 4)
  assert k == -(-n // capacity)
  for key in F.TOKEN_FEATURES:
    for row in parts[key]:
      assert len(row) <= LENGTHS[key]
      assert len(row) >= 2 + (key == F.HYPER_INPUTS and num_parts == 4) * 2


def test_cuts_are_deterministic_for_a_seed():
  first, again = _split(200, seed=(5, 0)), _split(200, seed=(5, 0))
  assert first == again
  assert _split(200, seed=(5, 1)) != first  # The user seed changes cuts.
  assert _split(200, seed=(6, 0)) != first  # So does the document hash.


def test_cut_points_vary():
  lengths = {F.HYPER_INPUTS: 40, F.INPUTS: 30, F.TARGETS: 20}
  sizes = {tuple(len(r) for r in _split(60, (d, 0), lengths)[F.INPUTS])
           for d in range(20)}
  assert len(sizes) > 5


def test_lengths_too_short_raise():
  with pytest.raises(ValueError, match="too short"):
    c4._capacities({F.HYPER_INPUTS: 2, F.INPUTS: 2, F.TARGETS: 2}, 3)
  with pytest.raises(ValueError, match="too short"):
    c4._capacities({F.HYPER_INPUTS: 2, F.INPUTS: 5, F.TARGETS: 5}, 4)


# ---------------------------------------------------------- registered task

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A short one.",
    "ab",  # Fewer bytes than parts: dropped.
    "Lists of numbers: 1 2 3 4 5 6 7 8 9 10. And letters: a b c d e f g.",
    "Second to last document, with some more words in it than others have.",
    "Last.",
]
SEQ = {F.HYPER_INPUTS: 32, F.INPUTS: 24, F.TARGETS: 16}


def _validation_docs(docs):
  buckets = tf.strings.to_hash_bucket_fast(docs, c4._VALIDATION_BUCKETS)
  return {d for d, b in zip(docs, buckets.numpy()) if b == 0}


@pytest.fixture
def c4_file(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": d, "url": "u"}) + "\n"
                          for d in DOCS) + "\n")
  return str(path)


def _documents_from_examples(examples):
  by_doc = {}
  for ex in examples:
    doc, chunk = ex[F.EXAMPLE_ID].split("-")
    by_doc.setdefault(doc, []).append((int(chunk), ex))
  docs = []
  for chunks in by_doc.values():
    docs.append("".join(ex[F.HYPER_INPUTS] + ex[F.INPUTS] + ex[F.TARGETS]
                        for _, ex in sorted(chunks, key=lambda c: c[0])))
  return docs


def test_registered_task_reassembles_documents(c4_file, clean_registry):
  names = c4.register_c4(c4_file, "byte", seed=3)
  assert names == ["c4_hyper_pretrain", "c4_hyper_pretrain_4part"]
  examples = pipeline.load_examples("c4_hyper_pretrain", "train",
                                    sequence_lengths=SEQ)
  expected = [d for d in DOCS if len(d) >= 3
              and d not in _validation_docs(DOCS)]
  assert sorted(_documents_from_examples(examples)) == sorted(expected)
  for ex in examples:
    assert ex[F.TASK_NAMES] == "c4_hyper_pretrain"
    assert json.loads(ex[F.REFERENCES]) == [ex[F.TARGETS]]
    assert len(ex[F.HYPER_INPUTS].encode()) <= SEQ[F.HYPER_INPUTS] - 1
    assert len(ex[F.INPUTS].encode()) <= SEQ[F.INPUTS] - 1
    assert len(ex[F.TARGETS].encode()) <= SEQ[F.TARGETS] - 1
  assert examples == pipeline.load_examples("c4_hyper_pretrain", "train",
                                            sequence_lengths=SEQ)


def test_shuffled_batches_hold_the_same_cuts(c4_file, clean_registry):
  c4.register_c4(c4_file, "byte", seed=3)
  rows = []
  for shuffle, seed in ((False, 0), (True, 1)):
    ds, _ = pipeline.get_tf_dataset(
        "c4_hyper_pretrain", "train", SEQ, batch_size=4, shuffle=shuffle,
        seed=seed, num_epochs=1, drop_remainder=False)
    batch_rows = set()
    for batch in ds.as_numpy_iterator():
      for i in range(len(batch[F.ENCODER_INPUT_TOKENS])):
        batch_rows.add(tuple(np.concatenate(
            [batch[F.HYPER_ENCODER_INPUT_TOKENS][i],
             batch[F.ENCODER_INPUT_TOKENS][i],
             batch[F.DECODER_TARGET_TOKENS][i]]).tolist()))
    rows.append(batch_rows)
  assert rows[0] == rows[1]
  assert len(rows[0]) > 5


def test_text_and_gzip_sources(tmp_path, clean_registry):
  (tmp_path / "a.txt").write_text("first document here\n\nsecond document\n")
  with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
    f.write(json.dumps({"text": "third document"}) + "\n")
  (tmp_path / "ignored.csv").write_text("x")
  files = c4.resolve_files(str(tmp_path))
  assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.jsonl.gz"]
  assert list(c4.iter_documents(files)) == [
      "first document here", "second document", "third document"]
  assert list(c4.iter_documents(files, 1, 2)) == ["second document"]
  with pytest.raises(FileNotFoundError, match="No .jsonl"):
    c4.resolve_files(str(tmp_path / "*.csv"))


def test_embedded_pretrain_corpus_4part(clean_registry):
  ds, _ = pipeline.get_tf_dataset("embedded_pretrain_4part", "train", SEQ,
                                  batch_size=8, seed=0)
  batch = next(ds.as_numpy_iterator())
  hyper = batch[F.HYPER_ENCODER_INPUT_TOKENS]
  # a + EOS + d + EOS: the two pieces around the middle, each non-empty.
  assert ((hyper == EOS).sum(axis=1) == 2).all()
  first_eos = (hyper == EOS).argmax(axis=1)
  assert (first_eos >= 1).all()
  assert (hyper[np.arange(8), first_eos + 1] > 2).all()


# ------------------------------------------------------ real data (optional)


def test_real_c4_with_t5_vocabulary(shared_data, clean_registry):
  vocab = str(shared_data / "t5_vocab" / "spiece.model")
  path = str(shared_data / "c4" / "c4-en.sample-1000docs.jsonl")
  c4.register_c4(path, vocab, seed=0, shuffle_buffer_size=64)
  lengths = {F.HYPER_INPUTS: 64, F.INPUTS: 48, F.TARGETS: 32}
  batches = pipeline.get_dataset("c4_hyper_pretrain", "train", lengths,
                                 batch_size=16, seed=0)
  for _ in range(2):
    batch = next(batches)
    # Every row is a non-empty part ending in EOS, within its length.
    for key in (F.HYPER_ENCODER_INPUT_TOKENS, F.ENCODER_INPUT_TOKENS,
                F.DECODER_TARGET_TOKENS):
      tokens = batch[key]
      lengths_found = (tokens != 0).sum(axis=1)
      assert (lengths_found >= 2).all()
      assert (tokens[np.arange(16), lengths_found - 1] == EOS).all()
  # Cutting fits every part, so the converter never truncates.
  assert batches.truncation_stats()[F.INPUTS] == 0
  assert batches.truncation_stats()[F.HYPER_INPUTS] == 0
