"""models.jit_cache: one build per (model, key, pins), stored on the model."""
import copy

from hyper_tasks.models import jit_cache


class _Model:
  """Stands in for an EncoderDecoderModel (any object with a __dict__)."""

  def double(self, x, factor=2):
    return x * factor


def test_built_once_per_key_and_pins():
  model, calls = _Model(), []

  def build(tag):
    calls.append(tag)
    return tag
  pin_a, pin_b = object(), object()
  assert jit_cache.get(model, "f", lambda: build("a"), pins=(pin_a,)) == "a"
  assert jit_cache.get(model, "f", lambda: build("x"), pins=(pin_a,)) == "a"
  assert jit_cache.get(model, "f", lambda: build("b"), pins=(pin_b,)) == "b"
  assert jit_cache.get(model, "g", lambda: build("g")) == "g"
  assert calls == ["a", "b", "g"]
  # Another model (or a shallow copy, which shares the __dict__ contents) has
  # its own entries.
  other = copy.copy(model)
  assert jit_cache.get(other, "f", lambda: build("c"), pins=(pin_a,)) == "c"
  assert jit_cache.get(model, "f", lambda: build("y"), pins=(pin_a,)) == "a"


def test_least_recently_used_entries_are_dropped():
  model = _Model()
  for i in range(jit_cache.MAX_PER_MODEL + 1):
    jit_cache.get(model, i, lambda i=i: i)
  assert jit_cache.get(model, 0, lambda: "rebuilt") == "rebuilt"
  assert jit_cache.get(model, jit_cache.MAX_PER_MODEL, lambda: "x") == (
      jit_cache.MAX_PER_MODEL)


def test_method_jits_a_bound_method_with_static_keywords():
  model = _Model()
  f = jit_cache.method(model, "double", factor=3)
  assert f is jit_cache.method(model, "double", factor=3)
  assert f is not jit_cache.method(model, "double", factor=2)
  assert float(f(2.0)) == 6.0
