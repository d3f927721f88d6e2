"""`EvalOptions`: how to evaluate or infer, one frozen object.

The evaluator's functions (`evaluate`, `evaluate_many`, `evaluate_examples`,
`infer`, `run_records`) take one `EvalOptions` instead of repeating the same
keywords; keywords naming its fields still work and replace those of the
options they are given (`make_options`). The options are checked when made:
an unknown decode method or control, or a batch size below 1, is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from hyper_tasks.data import features as F
from hyper_tasks.data import vocab as vocab_lib
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import sharding
from hyper_tasks.evaluation.records import control_name
from hyper_tasks.evaluation.runner import DECODE_METHODS


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How to evaluate (or infer); one object instead of repeated keywords.

  Attributes:
    sequence_lengths: `{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}`
      (required by every function).
    split: the split to read (functions that read names).
    batch_size: rows per model call (every call has exactly this many).
    vocabulary: None: the (first) task's own vocabulary; records need one.
    max_examples: per (task, template) group, in examples (not answer-choice
      rows): per SNI task, per P3 template, per toy phrasing.
    decode_method: "greedy" or "beam" (generation tasks).
    num_beams: beams for "beam".
    max_decode_length: None: `sequence_lengths["targets"]`.
    control: None, "shuffle", "random" or "empty" (or a controls.CONTROLS
      name, to which it is normalised); a controlled run is reported under
      `report["controls"]`.
    controls: `evaluate_many` only: extra controls, each run after the main
      one and added under `report["controls"][<control>]`.
    use_cache: encode each distinct instruction once (see module docstring).
    step: training step recorded in the report.
    config_str: gin operative config recorded in the report.
    checkpoint: checkpoint path recorded in the report.
    progress: tqdm progress bars with ETA.
    seed: the controls' seed.
    mesh: None: one device (the parameters wherever they are). A
      `jax.sharding.Mesh`: every batch is split over its `"data"` axis (across
      processes too) and the outputs gathered on every process (sharding.py);
      place the parameters on it first (`train.partitioning`, as training does).
      `batch_size` must divide by the data axis.
  """
  sequence_lengths: Optional[Mapping[str, int]] = None
  split: str = "test"
  batch_size: int = 32
  vocabulary: Optional[vocab_lib.VocabularyLike] = None
  max_examples: Optional[int] = None
  decode_method: str = "greedy"
  num_beams: int = 4
  max_decode_length: Optional[int] = None
  control: Optional[str] = None
  controls: Sequence[str] = ()
  use_cache: bool = True
  step: int = 0
  config_str: Optional[str] = None
  checkpoint: Optional[str] = None
  progress: bool = True
  seed: int = 0
  mesh: Optional[Any] = None

  def __post_init__(self):
    if self.decode_method not in DECODE_METHODS:
      raise ValueError(f"decode_method must be one of {DECODE_METHODS}, got "
                       f"{self.decode_method!r}.")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    sharding.check_mesh(self.mesh, self.batch_size)
    controls = ((self.controls,) if isinstance(self.controls, str)
                else tuple(self.controls))
    object.__setattr__(self, "control", control_name(self.control))
    object.__setattr__(self, "controls", tuple(control_name(c)
                                               for c in controls))

  @property
  def lengths(self) -> dict[str, int]:
    """`sequence_lengths`, checked (see `batching.check_sequence_lengths`)."""
    if self.sequence_lengths is None:
      raise ValueError("EvalOptions.sequence_lengths is required.")
    return batching.check_sequence_lengths(self.sequence_lengths)

  @property
  def decoding(self) -> dict[str, Any]:
    """The report's `decoding` section."""
    return {"method": self.decode_method,
            "num_beams": (int(self.num_beams) if self.decode_method == "beam"
                          else 1),
            "max_decode_length": int(self.max_decode_length
                                     or self.lengths[F.TARGETS])}


def make_options(options: Optional[EvalOptions] = None,
                 **overrides) -> EvalOptions:
  """`options` (default `EvalOptions()`) with `overrides` (field keywords)."""
  return dataclasses.replace(options or EvalOptions(), **overrides)
