"""Checkpoint tensors read when they are used, not when the checkpoint is opened.

A :class:`LazyArray` knows its shape and dtype from the file's header and reads
its values only when converted (``np.asarray``, :func:`materialize`): a restore
that places each tensor on its devices as it reads it never holds a full host
copy of the model (peak host memory: what is placed so far plus one tensor).
``param_restore.restore_params`` treats it as an array (``shape``, ``dtype``,
``astype``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


class LazyArray:
  """``shape``/``dtype`` now, values from ``read()`` on demand (cast and
  transposed as asked)."""

  def __init__(self, shape, dtype, read: Callable[[], np.ndarray],
               transpose: bool = False):
    self.shape = tuple(int(d) for d in shape)
    self.dtype = np.dtype(dtype)
    self._read = read
    self._transpose = transpose

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def astype(self, dtype) -> "LazyArray":
    return LazyArray(self.shape, dtype, self._read, self._transpose)

  def __array__(self, dtype=None, copy=None):
    del copy
    value = np.asarray(self._read())
    if self._transpose:
      value = value.T
    # A transposed view, not a copy: placing it makes the one copy.
    value = np.asarray(value, dtype=dtype or self.dtype)
    if value.shape != self.shape:
      raise ValueError(f"lazy tensor read with shape {value.shape}, header said "
                       f"{self.shape}.")
    return value

  def __repr__(self) -> str:
    return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def materialize(x: Any) -> Any:
  """``x`` itself, or a :class:`LazyArray`'s values (numpy)."""
  return np.asarray(x) if isinstance(x, LazyArray) else x
