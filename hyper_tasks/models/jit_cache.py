"""One compile cache: the jitted functions of a model, built once per setting.

Every jitted function that closes over a model (its ``score_batch``,
``predict_batch`` and ``encode_instruction``, the evaluation runner's and the
diagnostics' functions, the trainer's step) is looked up here with
:func:`get`, keyed by the model and a hashable key naming the function and its
static settings (decode method, beams, optimizer, mesh, input shapes ...).
``jax.jit`` then keeps one executable per input shape, so repeated evaluations
during training, a fresh :class:`~hyper_tasks.models.cache.AdaptationCache`
after each parameter update, or a notebook calling ``train()`` again neither
retrace nor recompile.

Entries are stored on the model object (so they live exactly as long as the
model) and checked by identity (a shallow copy of a model starts its own). At most :data:`MAX_PER_MODEL` entries are kept per model, the
least recently used dropped first.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Hashable, Sequence, TypeVar

import jax

T = TypeVar("T")

MAX_PER_MODEL = 16
_ATTRIBUTE = "_hyper_tasks_compiled"


class _Store(collections.OrderedDict):
  """A model's entries: key -> (pins, value)."""

  def __init__(self, owner):
    super().__init__()
    self.owner = owner


def get(model, key: Hashable, build: Callable[[], T], *,
        pins: Sequence[Any] = ()) -> T:
  """The value ``build()`` returned for ``(model, key, pins)``, built once.

  Args:
    model: the object the function belongs to (usually an
      ``EncoderDecoderModel``); the entry is stored on it.
    key: names the function and its static settings.
    build: makes the (jitted) function; called on a miss only.
    pins: further objects the function closes over (an optimizer, ...), matched
      by identity.
  """
  store = vars(model).get(_ATTRIBUTE)
  if store is None or store.owner is not model:  # None yet, or a copy's.
    store = vars(model)[_ATTRIBUTE] = _Store(model)
  full_key = (key, tuple(id(p) for p in pins))
  hit = store.get(full_key)
  if hit is not None and all(a is b for a, b in zip(hit[0], pins)):
    store.move_to_end(full_key)
    return hit[1]
  value = build()
  store[full_key] = (tuple(pins), value)
  store.move_to_end(full_key)
  while len(store) > MAX_PER_MODEL:
    store.popitem(last=False)
  return value


def method(model, name: str, **static) -> Callable[..., Any]:
  """``jax.jit(functools.partial(getattr(model, name), **static))``, cached.

  E.g. ``method(model, "score_batch")`` or ``method(model, "predict_batch",
  method="greedy", num_beams=1, max_decode_length=16)``.
  """
  return get(model, ("method", name, tuple(sorted(static.items()))),
             lambda: jax.jit(functools.partial(getattr(model, name), **static)))
