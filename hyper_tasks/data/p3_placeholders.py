"""P3 template instructions: the values a template sees in place of a row.

``p3_instructions.blank_instruction`` renders a template with no row: every row
field is a ``Placeholder`` (a ``str`` shown as ``[field]`` whose attributes,
items, slices and arithmetic give further placeholders), a test on a field is
``Unknown`` (true for some rows, not others), and the three-valued helpers here
(``if_``, ``cond``, ``compare``, ``not_``, ``and_``, ``or_``, ``known``), which
the rewritten template calls in place of jinja's tests and conditionals, keep
the branches a field chooses between as alternatives (``[a | b]``). Anything a
placeholder cannot show raises ``CannotBlank``.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from hyper_tasks.data import p3_templates


class CannotBlank(Exception):
  """A prompt depends on a row value in a way a placeholder cannot show."""


class _NoLength(CannotBlank, TypeError):
  """A row field's length was asked for."""


class Unknown:
  """A test on a row field (``label == 0``): true for some rows, not others."""
  __slots__ = ("expr",)

  def __init__(self, expr: str):
    self.expr = expr

  def __bool__(self):
    raise CannotBlank(f"the truth of {self.expr!r} depends on the row")

  def __str__(self):
    raise CannotBlank(f"the value of {self.expr!r} depends on the row")


STR_METHODS = frozenset(m for m in dir(str) if not m.startswith("_"))


def name_of(value: Any) -> str:
  if isinstance(value, Placeholder):
    return value.name
  return value.expr if isinstance(value, Unknown) else repr(value)


def _arithmetic(symbol: str, reflected: bool = False):
  """A binary operator of placeholders: a placeholder naming the expression."""

  def method(self, other):
    left, right = (other, self) if reflected else (self, other)
    return Placeholder(f"{name_of(left)} {symbol} {name_of(right)}")
  return method


class Placeholder(str):
  """A row field while a template is rendered into its instruction: ``[name]``.

  A ``str`` (so text operations such as ``" ".join`` and ``%`` formatting work)
  whose attribute and item access give nested placeholders (``[passage.text]``,
  ``[choices[0]]``), whose iteration gives one placeholder standing for every
  element, and whose slices and ``str`` methods (``premise[:-1]``,
  ``question.strip()``) keep the field's blank. Arithmetic gives a placeholder
  naming the expression (``[5 * label]``).
  """

  def __new__(cls, name: str):
    obj = super().__new__(cls, f"[{name}]")
    obj.name = name
    return obj

  def __repr__(self):
    return f"Placeholder({self.name!r})"

  def child(self, key: Any) -> "Placeholder":
    if isinstance(key, slice):
      return self
    if isinstance(key, str) and not isinstance(key, Placeholder):
      return Placeholder(f"{self.name}.{key}")
    return Placeholder(f"{self.name}[{name_of(key)}]")

  def __getitem__(self, key):
    return self.child(key)

  def __iter__(self):
    yield self

  def __call__(self, *args, **kwargs):
    del args, kwargs
    return self

  def __reversed__(self):
    yield self

  def __bool__(self):
    return True  # Python-level truth (inside filters): a field holds something.

  def __len__(self):
    # A TypeError too: ``list(field)`` then iterates instead of sizing first.
    raise _NoLength(f"the length of {self.name!r} depends on the row")

  def _no_order(self, other):
    raise CannotBlank(f"the order of {self.name!r} and {name_of(other)} "
                      "depends on the row")

  __lt__ = __le__ = __gt__ = __ge__ = _no_order

  def __add__(self, other):
    if isinstance(other, str):
      return str(self) + other
    return _arithmetic("+")(self, other)

  def __radd__(self, other):
    if isinstance(other, str):
      return other + str(self)
    return _arithmetic("+", True)(self, other)

  def __rmod__(self, other):
    if isinstance(other, str):  # "%s" % field: formatting, not arithmetic.
      return other % str(self)
    return _arithmetic("%", True)(self, other)

  def __neg__(self):
    return Placeholder(f"-{self.name}")

  def __abs__(self):
    return Placeholder(f"abs({self.name})")

  def __round__(self, ndigits=None):
    return self

  __sub__, __rsub__ = _arithmetic("-"), _arithmetic("-", True)
  __mul__, __rmul__ = _arithmetic("*"), _arithmetic("*", True)
  __truediv__, __rtruediv__ = _arithmetic("/"), _arithmetic("/", True)
  __floordiv__, __rfloordiv__ = _arithmetic("//"), _arithmetic("//", True)
  __mod__ = _arithmetic("%")
  __pow__, __rpow__ = _arithmetic("**"), _arithmetic("**", True)


def is_unknown(value: Any) -> bool:
  return isinstance(value, (Placeholder, Unknown))


class Choices(list):
  """Answer choices rendered with placeholders; indices past them stay blanks."""

  def __getitem__(self, key):
    if isinstance(key, int) and not -len(self) <= key < len(self):
      return Placeholder(f"{p3_templates.ANSWER_CHOICES}[{key}]")
    return super().__getitem__(key)


def _alternatives(texts: Sequence[Any]) -> str:
  """The branches a row field chooses between: one text, or ``[a | b]``."""
  texts = [str(t) for t in texts]
  kept = [t for t in texts if t.strip()]
  distinct = list(dict.fromkeys(t.strip() for t in kept))
  if not distinct:
    return ""
  if len(distinct) == 1:
    return kept[0]
  if any("|||" in t for t in distinct):
    raise CannotBlank("a row field chooses between different prompt/target "
                      "splits")
  return "[" + " | ".join(distinct) + "]"


def if_(*args):
  """``{% if t1 %}b1{% elif t2 %}b2{% else %}b3{% endif %}`` over placeholders.

  Known tests select as jinja does; a test on a row field keeps its branch as an
  alternative (a branch the field would select for some rows).
  """
  *pairs, otherwise = args
  candidates, any_unknown = [], False
  for test, body in zip(pairs[::2], pairs[1::2]):
    if is_unknown(test):
      any_unknown = True
      candidates.append(body)
    elif test:
      candidates.append(body)
      break
  else:
    candidates.append(otherwise)
  if not any_unknown:
    return candidates[-1]
  return _alternatives(candidates)


def cond(test, then, otherwise):
  """``then if test else otherwise`` over placeholders."""
  if is_unknown(test):
    return _alternatives([then, otherwise])
  return then if test else otherwise


_COMPARE = {
    "eq": ("==", lambda a, b: a == b), "ne": ("!=", lambda a, b: a != b),
    "lt": ("<", lambda a, b: a < b), "lteq": ("<=", lambda a, b: a <= b),
    "gt": (">", lambda a, b: a > b), "gteq": (">=", lambda a, b: a >= b),
    "in": ("in", lambda a, b: a in b),
    "notin": ("not in", lambda a, b: a not in b),
}


def compare(left, *ops):
  """A chained comparison; unknown when a row field takes part."""
  result = True
  for op, right in zip(ops[::2], ops[1::2]):
    symbol, fn = _COMPARE[op]
    if is_unknown(left) or is_unknown(right):
      return Unknown(f"{name_of(left)} {symbol} {name_of(right)}")
    result = fn(left, right)
    if not result:
      return result
    left = right
  return result


def known(value):
  """A test that must not depend on the row."""
  if is_unknown(value):
    raise CannotBlank(f"{name_of(value)!r} decides a {{% set %}} statement")
  return value


def not_(value):
  return Unknown(f"not {name_of(value)}") if is_unknown(value) else not value


def and_(left, right):
  if not is_unknown(left) and not left:
    return left
  if not is_unknown(right) and not right:
    return right
  if is_unknown(left) or is_unknown(right):
    return Unknown(f"{name_of(left)} and {name_of(right)}")
  return right


def or_(left, right):
  if not is_unknown(left) and left:
    return left
  if not is_unknown(right) and right:
    return right
  if is_unknown(left) or is_unknown(right):
    return Unknown(f"{name_of(left)} or {name_of(right)}")
  return right


def options(values: Iterable[Any]) -> Optional[Placeholder]:
  """``[a | b | c]``: one blank showing the values a row field selects from.

  Placeholders show their names (``[choice1 | choice2]``); None when a value is
  not text or a number.
  """
  names = []
  for value in values:
    if isinstance(value, Placeholder):
      names.append(value.name)
    elif isinstance(value, (str, int, float)):
      text = str(value).strip()
      if text.startswith("[") and text.endswith("]") and text.count("[") == 1:
        text = text[1:-1]  # A choice that is one field: its name.
      if text:
        names.append(text)
    else:
      return None
  return Placeholder(" | ".join(dict.fromkeys(names))) if names else None
