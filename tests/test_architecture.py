"""The package's layering, read from its imports (docs/ARCHITECTURE.md).

Floors, bottom up; a module imports only its own floor or the ones below:

  0  hyper_tasks.tree_utils, choices, gin_paths, gin_macros, gin_utils (generic)
  1  hyper_tasks.models, hyper_tasks.data          (neither imports the other)
  2  hyper_tasks.convert                           (checkpoint files; models only)
  3  hyper_tasks.train, hyper_tasks.evaluation     (train may use evaluation,
                                                    evaluation never train)
  4  entry points: hyper_tasks.{cli,demo,eval,infer,sweep,...}, any ``__main__``
     and ``cli`` module

Also: no import cycle between modules (function-local imports count), no
function-local import of a project module (they hide edges from a reader; an
optional third-party dependency may still be imported lazily), and no module over
~450 lines unless its docstring says why it is one cohesive thing.
"""
from __future__ import annotations

import ast
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "hyper_tasks")
MAX_LINES = 450
FLOOR0 = {"hyper_tasks", "hyper_tasks.tree_utils", "hyper_tasks.choices",
          "hyper_tasks.gin_paths",
          "hyper_tasks.gin_macros", "hyper_tasks.gin_utils"}
PACKAGES = {"models": 1, "data": 1, "convert": 2, "train": 3, "evaluation": 3}
# Same-floor packages that may import one another, in this direction only.
SAME_FLOOR_ALLOWED = {("train", "evaluation")}


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3]
  name = rel.replace(os.sep, ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _modules() -> dict[str, str]:
  out = {}
  for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
    dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
    for f in filenames:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        out[_module_name(path)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The project module an imported name refers to (``a.b.c`` -> ``a.b`` when
  ``c`` is a name inside module ``a.b``)."""
  while name:
    if name in MODULES:
      return name
    name = name.rpartition(".")[0]
  return None


def _imports(module: str) -> list[tuple[str, bool, int]]:
  """``(imported project module, imported inside a function, line)``."""
  with open(MODULES[module], encoding="utf-8") as f:
    tree = ast.parse(f.read())
  local_nodes = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for inner in ast.walk(node):
        if isinstance(inner, (ast.Import, ast.ImportFrom)):
          local_nodes.add(id(inner))
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      target = _resolve(name) if name.startswith("hyper_tasks") else None
      if target and target != module:
        out.append((target, id(node) in local_nodes, node.lineno))
  return out


def _is_entry(module: str) -> bool:
  parts = module.split(".")
  if parts[-1] in ("__main__", "cli"):
    return True
  return len(parts) >= 2 and parts[1] not in PACKAGES and module not in FLOOR0


def _floor(module: str) -> tuple[int, str]:
  if module in FLOOR0:
    return 0, "base"
  if _is_entry(module):
    return 4, "entry"
  package = module.split(".")[1]
  return PACKAGES[package], package


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_scan_sees_the_package():
  assert {"hyper_tasks.models.t5", "hyper_tasks.train.trainer",
          "hyper_tasks.evaluation.evaluator", "hyper_tasks.data.registry",
          "hyper_tasks.convert.hf", "hyper_tasks.eval"} <= set(MODULES)
  assert ("hyper_tasks.models.config", False) in {
      (t, local) for t, local, _ in GRAPH["hyper_tasks.models.t5"]}


def test_no_module_imports_a_floor_above_it():
  problems = []
  for module, edges in GRAPH.items():
    floor, package = _floor(module)
    for target, _, line in edges:
      target_floor, target_package = _floor(target)
      if target_floor > floor:
        problems.append(f"{module}:{line} (floor {floor}) imports {target} "
                        f"(floor {target_floor})")
      elif (target_floor == floor and floor in (1, 2, 3) and
            package != target_package and
            (package, target_package) not in SAME_FLOOR_ALLOWED):
        problems.append(f"{module}:{line} ({package}) imports {target} "
                        f"({target_package}, same floor, not allowed)")
  assert not problems, "\n".join(problems)


def test_no_import_cycles():
  edges = {m: sorted({t for t, _, _ in e}) for m, e in GRAPH.items()}
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []
  counter = [0]

  def strongconnect(v):  # Tarjan's strongly connected components.
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      strongconnect(v)
  assert not cycles, f"import cycles: {cycles}"


def test_no_function_local_project_imports():
  problems = [f"{m}:{line} imports {t} inside a function"
              for m, edges in GRAPH.items() for t, local, line in edges if local]
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_or_say_why(module):
  with open(MODULES[module], encoding="utf-8") as f:
    text = f.read()
  lines = text.count("\n")
  if lines <= MAX_LINES:
    return
  docstring = ast.get_docstring(ast.parse(text)) or ""
  assert "cohesive" in docstring, (
      f"{module} has {lines} lines (> {MAX_LINES}): split it, or say in its "
      "docstring why it is one cohesive thing")
