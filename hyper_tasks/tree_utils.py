"""Flat views of parameter pytrees: ``{'encoder/layers_0/mlp/wi_0/kernel': array}``.

Everything that selects parameters by name (optimizer groups, restore rules, checkpoint
import) works on these '/'-joined paths, so the conversion lives in one place:

* :func:`flatten` / :func:`unflatten` convert between nested dicts and flat dicts.
  They are exact inverses for nested dicts with string keys; a key that contains the
  separator is an error rather than a silently different tree.
* :func:`path_str` names a leaf of *any* pytree (nested dicts, ``FrozenDict``, optax
  states with ``MaskedNode``) from its ``jax.tree_util`` key path, which is how
  optimizer labels are computed without caring about the container types;
  :func:`leaves_by_path` / :func:`unflatten_like` are the flat view of any pytree
  and its way back into the same structure.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax


def flatten(tree: Mapping[str, Any], sep: str = "/",
            is_leaf: Optional[Callable[[Any], bool]] = None) -> dict[str, Any]:
  """Flattens a nested mapping into ``{'a/b/c': leaf}``.

  Args:
    tree: nested mappings (dict, FrozenDict) whose leaves are arrays or anything
      that is not a mapping.
    sep: separator joining the keys of a path.
    is_leaf: optional predicate; a mapping for which it returns True is kept whole
      (e.g. a serialized tensorstore spec inside a checkpoint).

  Returns:
    A flat dict in depth-first insertion order. Empty sub-dicts are dropped.

  Raises:
    ValueError: a key contains ``sep`` (the flat form could not be inverted).
  """
  out: dict[str, Any] = {}

  def visit(node, prefix):
    for key, value in node.items():
      key = str(key)
      if sep in key:
        raise ValueError(f"Key {key!r} under {prefix or '<root>'!r} contains the "
                         f"separator {sep!r}; the flat form would be ambiguous.")
      path = f"{prefix}{sep}{key}" if prefix else key
      if isinstance(value, Mapping) and not (is_leaf and is_leaf(value)):
        visit(value, path)
      else:
        out[path] = value

  visit(tree, "")
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Inverse of :func:`flatten`: ``{'a/b': x}`` -> ``{'a': {'b': x}}``.

  Raises:
    ValueError: one path is a prefix of another (``a/b`` and ``a/b/c``), so the
      same node would have to be both a leaf and a dict.
  """
  out: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, last = path.split(sep)
    node = out
    for i, key in enumerate(parents):
      child = node.setdefault(key, {})
      if not isinstance(child, dict):
        raise ValueError(f"Path {path!r} runs through leaf "
                         f"{sep.join(parents[:i + 1])!r}.")
      node = child
    if last in node:
      raise ValueError(f"Path {path!r} is both a leaf and a subtree.")
    node[last] = value
  return out


def path_str(key_path: tuple[Any, ...], sep: str = "/") -> str:
  """Joins a ``jax.tree_util`` key path into ``'a/b/c'``."""
  parts = []
  for k in key_path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:  # Future key types: fall back to their string form.
      parts.append(str(k))
  return sep.join(parts)


def leaf_paths(tree: Any, sep: str = "/") -> list[str]:
  """The '/'-joined path of every leaf of an arbitrary pytree, in leaf order."""
  return [path_str(p, sep) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def leaves_by_path(tree: Any, sep: str = "/") -> dict[str, Any]:
  """``{'/'-joined path: leaf}`` of an arbitrary pytree, in leaf order; None
  leaves are left out."""
  return {path_str(p, sep): v for p, v in jax.tree_util.tree_leaves_with_path(tree)
          if v is not None}


def unflatten_like(reference: Any, flat: Mapping[str, Any], sep: str = "/") -> Any:
  """A pytree of ``reference``'s structure whose leaf at each path is ``flat[path]``
  (the inverse of :func:`leaves_by_path` for ``reference``'s paths)."""
  return jax.tree.unflatten(jax.tree.structure(reference),
                            [flat[p] for p in leaf_paths(reference, sep)])


def to_host(x) -> Any:
  """``x`` (array or pytree of arrays) as numpy on this process.

  An array that spans several processes (sharded over a multi-host mesh) is
  all-gathered, so every process gets the whole value; every process must then
  make the same call, as with any collective.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def one(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)
  return jax.tree.map(one, x)
