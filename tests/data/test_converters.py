"""HyperEncDecFeatureConverter: keys, shapes, padding, loss weights, truncation."""
import numpy as np
import pytest
import tensorflow as tf

from hyper_tasks.data import converters
from hyper_tasks.data import features as F

LENGTHS = {F.HYPER_INPUTS: 6, F.INPUTS: 5, F.TARGETS: 4}
EXAMPLES = [
    # hyper_inputs, inputs, targets (EOS = 1 already appended, as seqio does).
    ([5, 6, 1], [7, 8, 9, 1], [10, 1]),
    ([5, 6, 7, 8, 9, 10, 11, 1], [7, 1], [10, 11, 12, 13, 14, 1]),  # Cut h, t.
    ([1], [3, 4, 5, 6, 7, 8], [9, 9, 9, 1]),  # inputs cut, no EOS to keep.
    ([4, 1], [3, 1], [5, 6, 7, 1]),
    ([4, 4, 1], [3, 3, 3, 3, 1], [2, 1]),
]


def _dataset(examples=EXAMPLES):
  spec = tf.TensorSpec([None], tf.int32)
  return tf.data.Dataset.from_generator(
      lambda: ({F.HYPER_INPUTS: h, F.INPUTS: i, F.TARGETS: t}
               for h, i, t in examples),
      output_signature={k: spec for k in F.TOKEN_FEATURES})


def test_example_conversion_hand_checked():
  converter = converters.HyperEncDecFeatureConverter()
  out = list(converter(_dataset(), LENGTHS).as_numpy_iterator())
  assert set(out[0]) == set(F.MODEL_FEATURES)
  first = out[0]
  np.testing.assert_array_equal(first[F.HYPER_ENCODER_INPUT_TOKENS],
                                [5, 6, 1, 0, 0, 0])
  np.testing.assert_array_equal(first[F.ENCODER_INPUT_TOKENS],
                                [7, 8, 9, 1, 0])
  np.testing.assert_array_equal(first[F.DECODER_TARGET_TOKENS], [10, 1, 0, 0])
  # Targets shifted right (as t5x: the EOS moves into a padded position).
  np.testing.assert_array_equal(first[F.DECODER_INPUT_TOKENS], [0, 10, 1, 0])
  np.testing.assert_array_equal(first[F.DECODER_LOSS_WEIGHTS], [1, 1, 0, 0])
  cut = out[1]
  # Truncation keeps the first L - 1 tokens and the EOS.
  np.testing.assert_array_equal(cut[F.HYPER_ENCODER_INPUT_TOKENS],
                                [5, 6, 7, 8, 9, 1])
  np.testing.assert_array_equal(cut[F.DECODER_TARGET_TOKENS], [10, 11, 12, 1])
  np.testing.assert_array_equal(cut[F.DECODER_INPUT_TOKENS], [0, 10, 11, 12])
  np.testing.assert_array_equal(cut[F.DECODER_LOSS_WEIGHTS], [1, 1, 1, 1])
  # A sequence without a final EOS is simply cut.
  np.testing.assert_array_equal(out[2][F.ENCODER_INPUT_TOKENS],
                                [3, 4, 5, 6, 7])
  for ex in out:
    for key, length in converter.get_model_feature_lengths(LENGTHS).items():
      assert ex[key].shape == (length,) and ex[key].dtype == np.int32
  assert converter.truncation.as_dict() == {
      "examples": 5, F.HYPER_INPUTS: 1, F.INPUTS: 1, F.TARGETS: 1}
  converter.truncation.reset()
  assert converter.truncation.as_dict()["examples"] == 0


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_batched_conversion_equals_example_conversion(drop_remainder):
  slow = converters.HyperEncDecFeatureConverter()
  fast = converters.HyperEncDecFeatureConverter()
  expected = list(slow(_dataset(), LENGTHS).batch(
      2, drop_remainder=drop_remainder).as_numpy_iterator())
  got = list(fast.convert_batched(_dataset(), LENGTHS, 2,
                                  drop_remainder).as_numpy_iterator())
  assert len(got) == len(expected) == (2 if drop_remainder else 3)
  for g, e in zip(got, expected):
    assert set(g) == set(e)
    for key in e:
      np.testing.assert_array_equal(g[key], e[key], err_msg=key)
      assert g[key].dtype == e[key].dtype
  # The batched path counts the examples of the batches it produced.
  expected_counts = slow.truncation.as_dict()
  expected_counts["examples"] = 4 if drop_remainder else 5
  assert fast.truncation.as_dict() == expected_counts


def test_batched_conversion_static_shapes():
  converter = converters.HyperEncDecFeatureConverter()
  ds = converter.convert_batched(_dataset(), LENGTHS, 2, drop_remainder=True)
  for key, length in converter.get_model_feature_lengths(LENGTHS).items():
    assert ds.element_spec[key].shape.as_list() == [2, length]


def test_trim_keep_eos():
  tokens, cut = converters.trim_keep_eos(tf.constant([4, 5, 6, 1]), 3)
  assert tokens.numpy().tolist() == [4, 5, 1] and bool(cut)
  tokens, cut = converters.trim_keep_eos(tf.constant([4, 5, 1]), 3)
  assert tokens.numpy().tolist() == [4, 5, 1] and not bool(cut)
  tokens, cut = converters.trim_keep_eos(tf.constant([4, 5, 6, 7]), 2)
  assert tokens.numpy().tolist() == [4, 5] and bool(cut)


def test_packing_drops_hyper_inputs_and_adds_segments():
  converter = converters.HyperEncDecFeatureConverter(pack=True)
  lengths = {F.HYPER_INPUTS: 6, F.INPUTS: 8, F.TARGETS: 6}
  out = list(converter(_dataset(), lengths).as_numpy_iterator())
  assert len(out) < len(EXAMPLES)  # Several examples share a row.
  for ex in out:
    assert set(ex) == set(F.MODEL_FEATURES) | set(F.PACKING_FEATURES)
    assert not ex[F.HYPER_ENCODER_INPUT_TOKENS].any()
    # Decoder inputs restart at 0 at every packed target.
    starts = np.flatnonzero(np.diff(ex["decoder_segment_ids"],
                                    prepend=0) != 0)
    assert (ex[F.DECODER_INPUT_TOKENS][starts] == 0).all()
    np.testing.assert_array_equal(ex[F.DECODER_LOSS_WEIGHTS],
                                  ex[F.DECODER_TARGET_TOKENS] != 0)
  # Every target token of the (cut) examples lands in some packed row.
  total = sum(int((ex[F.DECODER_TARGET_TOKENS] != 0).sum()) for ex in out)
  assert total == sum(min(len(t), 6) for _, _, t in EXAMPLES)


def test_convert_batched_refuses_packing():
  converter = converters.HyperEncDecFeatureConverter(pack=True)
  with pytest.raises(ValueError, match="does not pack"):
    converter.convert_batched(_dataset(), LENGTHS, 2)


def test_missing_feature_is_reported():
  ds = _dataset().map(lambda ex: {F.INPUTS: ex[F.INPUTS],
                                  F.TARGETS: ex[F.TARGETS]})
  with pytest.raises(ValueError, match="hyper_inputs"):
    converters.HyperEncDecFeatureConverter()(ds, LENGTHS)
  with pytest.raises(ValueError, match="hyper_inputs"):
    converters.HyperEncDecFeatureConverter().convert_batched(ds, LENGTHS, 2)


def test_token_lists_convert_as_the_pipeline():
  """Evaluation's entry (rows tokenized in Python) gives the pipeline's arrays."""
  tokens = {k: [ex[i] for ex in EXAMPLES]
            for i, k in enumerate(F.TOKEN_FEATURES)}
  arrays, truncated = converters.convert_token_lists(tokens, LENGTHS)
  converter = converters.HyperEncDecFeatureConverter()
  (expected,) = list(converter.convert_batched(
      _dataset(), LENGTHS, len(EXAMPLES)).as_numpy_iterator())
  assert set(arrays) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
    assert arrays[key].dtype == expected[key].dtype
  counts = converter.truncation.as_dict()
  assert {k: int(v.sum()) for k, v in truncated.items()} == {
      k: counts[k] for k in F.TOKEN_FEATURES}
  empty, _ = converters.convert_token_lists(
      {k: [] for k in F.TOKEN_FEATURES}, LENGTHS)
  assert empty[F.DECODER_INPUT_TOKENS].shape == (0, LENGTHS[F.TARGETS])
  with pytest.raises(ValueError, match="sequence_lengths needs keys"):
    converters.convert_token_lists(tokens, {F.INPUTS: 4})
