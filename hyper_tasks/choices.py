"""One check for settings that take one of a few named values.

Every such setting (``remat_policy``, ``attention_impl``, a T5 variant or size, a
hypernetwork name, a dtype, a restore format, ...) is refused with the same
message, naming the setting, the value and the choices.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(what: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ``ValueError("Unknown <what> <value>; choose from <choices>.")``."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"Unknown {what} {value!r}; choose from {choices}.")
