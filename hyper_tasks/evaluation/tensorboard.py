"""A TensorBoard event-file writer that needs neither TensorFlow nor torch.

The trainer (train scalars) and the evaluator (eval scalars, reports) both log
to TensorBoard. `tf.summary` would pull TensorFlow's eager runtime into the JAX
training process, and `torch.utils.tensorboard` would pull in torch, so this
module writes the event protocol buffers itself with what the `tensorboard` pip
package already ships:

- `tensorboard.compat.proto` for the `Event` / `Summary` messages,
- `tensorboard.summary.writer.record_writer.RecordWriter` for the TFRecord
  framing (length + masked CRC32C), which is pure Python,
- the text and hparams plugins' metadata helpers, so the Text and HParams
  dashboards recognise our summaries.

Scalars are written as `simple_value`, the classic form that every TensorBoard
reader (including `EventAccumulator.Scalars`) understands. Writes are
synchronous and flushed after every call: logging happens every few hundred
steps at most, so a background queue would buy nothing and could lose the last
values on a crash.

Local paths are written with plain Python file I/O. Paths with a scheme
(`gs://...`) go through `tf.io.gfile`, importing TensorFlow lazily only then.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any, Mapping, Optional

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer import record_writer

# Distinguishes writers created by one process within the same second.
_writer_ids = itertools.count()


def is_remote_path(path: str) -> bool:
  """True for paths with a URL scheme (gs://, ram://, ...), handled by gfile."""
  return "://" in os.fspath(path)


def _gfile():
  # Imported lazily: only remote paths need TensorFlow's filesystem layer.
  from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _open_for_write(path: str):
  directory = os.path.dirname(path)
  if is_remote_path(path):
    _gfile().makedirs(directory)
    return _gfile().GFile(path, "wb")
  os.makedirs(directory, exist_ok=True)
  return open(path, "wb")


def _as_float(name: str, value: Any) -> float:
  try:
    # Also accepts numpy / jax scalars and 1-element arrays.
    return float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"Scalar {name!r} must be convertible to float, got "
        f"{type(value).__name__}: {value!r}") from e


def _hparam_value(value: Any) -> bool | int | float | str:
  # The hparams plugin accepts bool / number / string; anything else (None,
  # tuples, gin references) is recorded by its string form rather than refused.
  if isinstance(value, (bool, int, float, str)):
    return value
  if hasattr(value, "item"):  # numpy / jax scalar
    try:
      return _hparam_value(value.item())
    except (TypeError, ValueError):
      pass
  return str(value)


class SummaryWriter:
  """Appends TensorBoard events to a new event file in `logdir`.

  Usage:
    with SummaryWriter(model_dir + "/train") as writer:
      writer.scalars({"loss": 1.2, "learning_rate": 1e-3}, step=100)
      writer.text("config", gin.operative_config_str(), step=0)

  Each writer creates its own file (named like TensorFlow's, so TensorBoard
  picks it up); several writers may share a directory. Thread-safe.
  """

  def __init__(self, logdir: str, *, filename_suffix: str = ""):
    """Creates `logdir` if needed and opens a fresh event file in it.

    Args:
      logdir: local directory, or a `scheme://` path handled by `tf.io.gfile`.
      filename_suffix: appended to the event file name.
    """
    self._logdir = os.fspath(logdir)
    name = "events.out.tfevents.%010d.%s.%d.%d%s" % (
        time.time(), socket.gethostname(), os.getpid(), next(_writer_ids),
        filename_suffix)
    self._path = os.path.join(self._logdir, name)
    self._lock = threading.Lock()
    self._writer: Optional[record_writer.RecordWriter] = (
        record_writer.RecordWriter(_open_for_write(self._path)))
    # The first record of every event file declares the format version.
    self._write_event(event_pb2.Event(wall_time=time.time(),
                                      file_version="brain.Event:2"))

  @property
  def logdir(self) -> str:
    return self._logdir

  @property
  def path(self) -> str:
    """The event file this writer appends to."""
    return self._path

  def _write_event(self, event: event_pb2.Event) -> None:
    with self._lock:
      if self._writer is None:
        raise ValueError(f"SummaryWriter for {self._logdir} is closed.")
      self._writer.write(event.SerializeToString())
      self._writer.flush()

  def _write_summary(self, summary: summary_pb2.Summary, step: int) -> None:
    self._write_event(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary))

  def scalar(self, name: str, value: Any, step: int) -> None:
    """Logs one scalar; `value` is anything `float()` accepts (NaN allowed)."""
    self.scalars({name: value}, step)

  def scalars(self, values: Mapping[str, Any], step: int) -> None:
    """Logs several scalars at one step as a single event."""
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=_as_float(name, value))
        for name, value in values.items()
    ])
    if summary.value:
      self._write_summary(summary, step)

  def text(self, name: str, text: str, step: int) -> None:
    """Logs a string for the Text dashboard (rendered as Markdown)."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),  # A scalar string.
        string_val=[text.encode("utf-8")])
    value = summary_pb2.Summary.Value(
        tag=name, tensor=tensor,
        metadata=text_metadata.create_summary_metadata(
            display_name=name, description=""))
    self._write_summary(summary_pb2.Summary(value=[value]), step)

  def hparams(self, hparams: Mapping[str, Any], step: int = 0) -> None:
    """Records hyperparameters for the HParams dashboard.

    Values that are not bool / int / float / str are logged as `str(value)`.
    Metrics shown next to them are the scalars of the same run.
    """
    summary = hparams_summary.hparams_pb(
        {str(k): _hparam_value(v) for k, v in hparams.items()})
    self._write_summary(summary, step)

  def flush(self) -> None:
    """Writes are already flushed; kept for API parity with other writers."""
    with self._lock:
      if self._writer is not None:
        self._writer.flush()

  def close(self) -> None:
    """Closes the event file; further writes raise. Idempotent."""
    with self._lock:
      if self._writer is not None:
        self._writer.close()
        self._writer = None

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
