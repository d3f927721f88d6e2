"""Every gin file writes a configurable the same way: ``<package>.<name>``, where
``hyper_tasks.<package>`` is the gin module the package registers it under."""
import os
import re

import gin
import pytest

from hyper_tasks import gin_utils

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gin")
BINDING = re.compile(r"^\s*(?:\w+/)?([A-Za-z_][\w.]*)\.(\w+)\s*=")
REFERENCE = re.compile(r"@([A-Za-z_][\w.]*)")


def _gin_files():
  return sorted(os.path.relpath(os.path.join(d, f), GIN_DIR)
                for d, _, fs in os.walk(GIN_DIR) for f in fs if f.endswith(".gin"))


@pytest.fixture(scope="module")
def spellings():
  """``{configurable name: "<package>.<name>"}`` from the registry."""
  gin_utils.import_configurables()
  out = {}
  for full in gin.config._REGISTRY._selector_map:  # pylint: disable=protected-access
    parts = full.split(".")
    if parts[0] == "hyper_tasks":
      assert len(parts) == 3, f"{full}: register it under hyper_tasks.<package>"
      out[parts[-1]] = f"{parts[1]}.{parts[-1]}"
  return out


def test_every_package_registers_under_one_module(spellings):
  assert spellings["make_model"] == "models.make_model"
  assert spellings["register_all"] == "data.register_all"
  assert spellings["adafactor_dual"] == "train.adafactor_dual"
  assert spellings["make_mesh"] == "train.make_mesh"
  assert spellings["evaluate"] == "eval.evaluate"


@pytest.mark.parametrize("name", _gin_files())
def test_gin_file_spells_configurables_one_way(name, spellings):
  problems = []
  with open(os.path.join(GIN_DIR, name), encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      code = line.split("#", 1)[0]
      match = BINDING.match(code)
      written = [match.group(1)] if match else []
      written += REFERENCE.findall(code)
      for selector in written:
        configurable = selector.rsplit(".", 1)[-1]
        if configurable[:1].isupper() and configurable.isupper():
          continue  # a macro
        want = spellings.get(configurable)
        if want is not None and selector != want:
          problems.append(f"{name}:{number}: {selector!r} (write {want!r})")
  assert not problems, "\n".join(problems)
