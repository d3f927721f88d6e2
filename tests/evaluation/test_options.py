"""EvalOptions: checked when made; keywords replace the options' fields."""
import dataclasses

import pytest

from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import options as options_lib

LENGTHS = {"hyper_inputs": 8, "inputs": 8, "targets": 16}


def test_controls_are_normalised_and_keywords_replace_fields():
  opts = evaluator.EvalOptions(sequence_lengths=LENGTHS, control="shuffle",
                               controls=("empty", "random"))
  assert opts.control == "shuffled_instruction"
  assert opts.controls == ("empty_instruction", "random_instruction")
  smaller = options_lib.make_options(opts, batch_size=4, control=None)
  assert (smaller.batch_size, smaller.control) == (4, None)
  assert opts.batch_size == 32  # frozen: the original is unchanged
  with pytest.raises(dataclasses.FrozenInstanceError):
    opts.batch_size = 1  # pytype: disable=not-writable
  assert opts.decoding == {"method": "greedy", "num_beams": 1,
                           "max_decode_length": 16}
  assert options_lib.make_options(
      opts, decode_method="beam", max_decode_length=5).decoding == {
          "method": "beam", "num_beams": 4, "max_decode_length": 5}


def test_bad_options_raise():
  with pytest.raises(ValueError, match="decode_method"):
    evaluator.EvalOptions(decode_method="sample")
  with pytest.raises(ValueError, match="batch_size"):
    evaluator.EvalOptions(batch_size=0)
  with pytest.raises(ValueError, match="Unknown control 'upside_down'"):
    evaluator.EvalOptions(controls=("upside_down",))
  with pytest.raises(TypeError, match="bogus"):
    options_lib.make_options(None, bogus=1)
  with pytest.raises(ValueError, match="sequence_lengths is required"):
    _ = evaluator.EvalOptions().lengths
