"""Fixtures of the data tests: small synthetic Super-NaturalInstructions directories.

Tests build their SNI directories with the ``sni_task`` and ``sni_dir_factory``
fixtures (functions), so they need no import path of their own.
"""
import json
import os

import pytest

from hyper_tasks.data import registry

DEFINITION = "Answer with the capital city of the given country"


def task_json(num_instances=5, *, definition=DEFINITION, ids=True,
              languages=True, name="task"):
  """A task dict in the official schema (options select schema variants)."""
  data = {
      "Contributors": ["test"],
      "Categories": ["Answer Generation"],
      "Definition": definition,
      "Positive Examples": [
          {"input": "France", "output": "Paris",
           "explanation": "Paris is the capital of France"},
          {"input": "Japan", "output": "Tokyo.",
           "explanation": "Tokyo is the capital of Japan."},
          {"input": "Peru", "output": "Lima"},
      ],
      "Negative Examples": [
          {"input": "Italy", "output": "Berlin",
           "explanation": "Berlin is not in Italy"},
      ],
      "Instances": [
          {"input": f"Country {i}", "output": [f"Capital {i}"]}
          for i in range(num_instances)
      ],
  }
  if ids:
    for i, inst in enumerate(data["Instances"]):
      inst["id"] = f"{name}-id{i}"
  if languages:
    data["Input_language"] = ["English"]
    data["Output_language"] = ["English"]
    data["Instruction_language"] = ["English"]
  return data


def write_sni_dir(root, train=None, test=None):
  """Writes ``tasks/<name>.json`` and ``splits/default/{train,test}_tasks.txt``.

  Args:
    root: directory (pathlib.Path).
    train: {name: task dict or raw string (malformed JSON)}.
    test: the same for the test split.

  Returns:
    ``str(root)``.
  """
  os.makedirs(root / "tasks", exist_ok=True)
  os.makedirs(root / "splits" / "default", exist_ok=True)
  for which, tasks in (("train", train or {}), ("test", test or {})):
    for name, data in tasks.items():
      text = data if isinstance(data, str) else json.dumps(data)
      (root / "tasks" / f"{name}.json").write_text(text, encoding="utf-8")
    (root / "splits" / "default" / f"{which}_tasks.txt").write_text(
        "".join(f"{n}\n" for n in tasks), encoding="utf-8")
  return str(root)


@pytest.fixture
def sni_task():
  """``task_json`` (see above)."""
  return task_json


@pytest.fixture
def sni_dir_factory():
  """``write_sni_dir`` (see above)."""
  return write_sni_dir


@pytest.fixture
def clean_registry():
  """Unregisters this package's seqio providers after the test."""
  yield
  registry.unregister_all()
