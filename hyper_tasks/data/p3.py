"""P3 / T0: promptsource templates rendered over local datasets.

Templates. promptsource (not installable on Python >= 3.10) stores prompts as
``<templates_dir>/<dataset>[/<subset>]/templates.yaml`` with ``!Template`` and
``!TemplateMetadata`` YAML tags. ``load_templates`` reads them with a safe YAML
loader and ``Template.apply`` renders them exactly as promptsource 0.2.3 does:
jinja2 with ``zip`` and the ``choice``/``most_frequent`` filters, every ``}}``
variable piped through ``| string | truncate(2048)``, ``|||`` inside example
fields protected while splitting prompt from target, parts stripped. The one
deliberate difference: the ``choice`` filter draws from a seeded generator, so a
rendering is reproducible.

Records. ``render`` turns a dataset row into (prompt, target, answer choices) and
returns None where promptsource yields no usable pair (a template that does not
apply to the row, or an unlabeled row). ``inputs`` is the rendered prompt.
``hyper_inputs`` is, by default (``instruction="template"``, HINT's setting),
the template's instruction: its prompt with every row field blanked, e.g.
``Given that [premise] Does it follow that [hypothesis] Yes, no, or maybe?``,
identical for every example of a (dataset, template), so the hypernetwork runs
once per template. HINT hand-edited about 2,000 prompts into such templates;
here ``template_instruction`` derives them from the jinja by rendering it over
placeholders (``[field]``, ``[passage.text]``; answer choices rendered over the
same placeholders, static ones kept; a conditional on a row field shows its
branches, ``[because... | so...]``; only the part before ``|||``). Of the 2,085
templates in promptsource 0.2.3's 279 template files, 2,030 (97.4%) derive
cleanly; the other 55 read row values in ways a blank cannot show (items
filtered or counted by row values, ``{% set %}`` decided by a row field, a random
pick among computed values) and fall back, with a warning naming the template, to
the per-example form. ``instruction="prompt"`` uses that form everywhere: the
rendered prompt in both ``hyper_inputs`` and ``inputs``.

Rank classification (T0's held-out evaluation): ``rank_classification`` is a seqio
preprocessor expanding each example into one example per answer choice, with
``targets`` the choice, ``choice_index``, ``is_correct`` (choice == gold target)
and ``num_choices``; all choices of an example share its ``example_id``.

Few-shot. ``make_record`` adds k solved examples, rendered with the same
template, before the instruction in ``hyper_inputs`` (HINT) or, for baselines,
before the prompt in ``inputs`` (``hyper_inputs`` then empty). Two formats:

  ``flan`` (default; HINT's FLAN-style format on P3, FLAN's few-shot defaults
  as HINT's few-shot T0 tasks set them; the query's ``inputs`` also get the
  ``" X"`` delimiter)::

    0 <prompt 1> X 1 <target 1> X 0 <prompt 2> X 1 <target 2> X  Definition: <instr>

  ``newline``::

    <prompt 1>\\n<target 1>\\n\\n<prompt 2>\\n<target 2>\\n\\n<instruction>

Shots come from the training split when it is available locally, otherwise from
the same split; either way they never include the example itself, and they are a
seeded function of the example's index.

Datasets. Rows are read from ``<data_dir>/<dataset>/<subset>/<split>.jsonl``
(Hugging Face schema; ``<split>.hf_format.jsonl`` is preferred when both exist),
or with the ``datasets`` package when it is installed and the caller allows it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import re
import zlib
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import jinja2
import jinja2.meta
import jinja2.visitor
import tensorflow as tf
import yaml

from hyper_tasks.data import features as F

# promptsource's truncation of every template variable.
TEXT_VAR_LENGTH = 2048
ANSWER_CHOICES = "answer_choices"
_PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"

# ------------------------------------------------------------------ templates

_CHOICE_RNG = random.Random(0)


def _choice(choices):
  return _CHOICE_RNG.choice(choices)


def _most_frequent(items):
  """promptsource's filter: the items that appear most often."""
  if not items:
    return None
  counts = Counter(items).most_common()
  top = counts[0][1]
  return [item for item, count in counts if count == top]


_ENV = jinja2.Environment(loader=jinja2.BaseLoader())
_ENV.globals.update(zip=zip)
_ENV.filters["choice"] = _choice
_ENV.filters["most_frequent"] = _most_frequent


class _TemplateLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
  """Safe YAML loader that reads promptsource's tags as plain mappings.

  libyaml's loader when PyYAML has it: ten times faster than the pure-Python
  one on promptsource's 279 template files.
  """


def _as_mapping(loader, node):
  return loader.construct_mapping(node, deep=True)


_TemplateLoader.add_constructor("!Template", _as_mapping)
_TemplateLoader.add_constructor("!TemplateMetadata", _as_mapping)


def _escape_pipe(example: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v.replace("|||", _PIPE_PROTECTOR) if isinstance(v, str) else v
          for k, v in example.items()}


def _unescape_pipe(text: str) -> str:
  return text.replace(_PIPE_PROTECTOR, "|||")


def remove_hyphen(example: Mapping[str, Any]) -> dict[str, Any]:
  """promptsource's key cleaning: ``-`` in field names becomes ``_``."""
  return {k.replace("-", "_"): v for k, v in example.items()}


@dataclasses.dataclass(frozen=True)
class Template:
  """One promptsource template."""
  name: str
  jinja: str
  answer_choices: Optional[str] = None
  id: str = ""
  original_task: bool = False
  choices_in_prompt: bool = False
  metrics: tuple[str, ...] = ()
  dataset: str = ""
  subset: Optional[str] = None

  @functools.cached_property
  def _compiled(self) -> jinja2.Template:
    return _ENV.from_string(self.jinja.replace(
        "}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}"))

  @functools.cached_property
  def _compiled_choices(self) -> Optional[jinja2.Template]:
    if self.answer_choices is None:
      return None
    return _ENV.from_string(self.answer_choices)

  def answer_choices_list(self, example: Mapping[str, Any]) -> Optional[list[str]]:
    """The rendered answer choices of ``example``, or None (open-ended)."""
    if self._compiled_choices is None:
      return None
    rendered = self._compiled_choices.render(**_escape_pipe(example))
    return [_unescape_pipe(c.strip()) for c in rendered.split("|||")]

  def apply(self, example: Mapping[str, Any], seed: int = 0) -> list[str]:
    """Renders ``example``: ``[prompt, target]`` normally (promptsource's apply).

    Raises:
      ValueError: the example has a field named ``answer_choices``.
    """
    protected = _escape_pipe(example)
    if ANSWER_CHOICES in protected:
      raise ValueError("Example contains the restricted key 'answer_choices'.")
    protected[ANSWER_CHOICES] = self.answer_choices_list(example)
    _CHOICE_RNG.seed(seed)
    rendered = self._compiled.render(**protected)
    return [_unescape_pipe(part).strip() for part in rendered.split("|||")]


def template_path(templates_dir: str, dataset: str,
                  subset: Optional[str] = None) -> str:
  parts = [templates_dir, dataset] + ([subset] if subset else [])
  return os.path.join(*parts, "templates.yaml")


def load_templates(templates_dir: str, dataset: str,
                   subset: Optional[str] = None) -> list[Template]:
  """The templates of one dataset (subset), sorted by name.

  Raises:
    FileNotFoundError: no ``templates.yaml`` there.
  """
  path = template_path(templates_dir, dataset, subset)
  with open(path, encoding="utf-8") as f:
    data = yaml.load(f, Loader=_TemplateLoader)  # pylint: disable=no-value-for-parameter
  out = []
  for tid, t in (data.get("templates") or {}).items():
    meta = t.get("metadata") or {}
    out.append(Template(
        name=str(t["name"]), jinja=t["jinja"],
        answer_choices=t.get("answer_choices"), id=str(t.get("id", tid)),
        original_task=bool(meta.get("original_task")),
        choices_in_prompt=bool(meta.get("choices_in_prompt")),
        metrics=tuple(meta.get("metrics") or ()), dataset=dataset,
        subset=subset))
  return sorted(out, key=lambda t: t.name)


def t0_rate(num_rows: int, num_templates: int,
            max_examples: int = 500_000) -> int:
  """T0's mixing rate of each template task of a dataset (its example cap).

  As in T0's seqio tasks: a dataset with at most ``max_examples`` training rows
  contributes all of them through every template; a larger one is capped at
  ``max_examples`` in all, ``max_examples // num_templates`` per template.
  """
  if num_rows > max_examples:
    return max_examples // max(num_templates, 1)
  return num_rows


def task_clean(text: str) -> str:
  """A template or dataset name as a seqio-safe name fragment (as T0 does)."""
  return re.sub(r"[^\w\d\._]+", "_", text).strip("_")


# --------------------------------------------------------- template instructions

INSTRUCTION_TEMPLATE = "template"
INSTRUCTION_PROMPT = "prompt"
INSTRUCTIONS = (INSTRUCTION_TEMPLATE, INSTRUCTION_PROMPT)


class CannotBlank(Exception):
  """A prompt depends on a row value in a way a placeholder cannot show."""


class _NoLength(CannotBlank, TypeError):
  """A row field's length was asked for."""


class _Unknown:
  """A test on a row field (``label == 0``): true for some rows, not others."""
  __slots__ = ("expr",)

  def __init__(self, expr: str):
    self.expr = expr

  def __bool__(self):
    raise CannotBlank(f"the truth of {self.expr!r} depends on the row")

  def __str__(self):
    raise CannotBlank(f"the value of {self.expr!r} depends on the row")


_STR_METHODS = frozenset(m for m in dir(str) if not m.startswith("_"))


def _name_of(value: Any) -> str:
  if isinstance(value, _Placeholder):
    return value.name
  return value.expr if isinstance(value, _Unknown) else repr(value)


def _arithmetic(symbol: str, reflected: bool = False):
  """A binary operator of placeholders: a placeholder naming the expression."""

  def method(self, other):
    left, right = (other, self) if reflected else (self, other)
    return _Placeholder(f"{_name_of(left)} {symbol} {_name_of(right)}")
  return method


class _Placeholder(str):
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
    return f"_Placeholder({self.name!r})"

  def child(self, key: Any) -> "_Placeholder":
    if isinstance(key, slice):
      return self
    if isinstance(key, str) and not isinstance(key, _Placeholder):
      return _Placeholder(f"{self.name}.{key}")
    return _Placeholder(f"{self.name}[{_name_of(key)}]")

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
    raise CannotBlank(f"the order of {self.name!r} and {_name_of(other)} "
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
    return _Placeholder(f"-{self.name}")

  def __abs__(self):
    return _Placeholder(f"abs({self.name})")

  def __round__(self, ndigits=None):
    return self

  __sub__, __rsub__ = _arithmetic("-"), _arithmetic("-", True)
  __mul__, __rmul__ = _arithmetic("*"), _arithmetic("*", True)
  __truediv__, __rtruediv__ = _arithmetic("/"), _arithmetic("/", True)
  __floordiv__, __rfloordiv__ = _arithmetic("//"), _arithmetic("//", True)
  __mod__ = _arithmetic("%")
  __pow__, __rpow__ = _arithmetic("**"), _arithmetic("**", True)


def _unknown(value: Any) -> bool:
  return isinstance(value, (_Placeholder, _Unknown))


class _Choices(list):
  """Answer choices rendered with placeholders; indices past them stay blanks."""

  def __getitem__(self, key):
    if isinstance(key, int) and not -len(self) <= key < len(self):
      return _Placeholder(f"{ANSWER_CHOICES}[{key}]")
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


def _if(*args):
  """``{% if t1 %}b1{% elif t2 %}b2{% else %}b3{% endif %}`` over placeholders.

  Known tests select as jinja does; a test on a row field keeps its branch as an
  alternative (a branch the field would select for some rows).
  """
  *pairs, otherwise = args
  candidates, any_unknown = [], False
  for test, body in zip(pairs[::2], pairs[1::2]):
    if _unknown(test):
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


def _cond(test, then, otherwise):
  """``then if test else otherwise`` over placeholders."""
  if _unknown(test):
    return _alternatives([then, otherwise])
  return then if test else otherwise


_COMPARE = {
    "eq": ("==", lambda a, b: a == b), "ne": ("!=", lambda a, b: a != b),
    "lt": ("<", lambda a, b: a < b), "lteq": ("<=", lambda a, b: a <= b),
    "gt": (">", lambda a, b: a > b), "gteq": (">=", lambda a, b: a >= b),
    "in": ("in", lambda a, b: a in b),
    "notin": ("not in", lambda a, b: a not in b),
}


def _compare(left, *ops):
  """A chained comparison; unknown when a row field takes part."""
  result = True
  for op, right in zip(ops[::2], ops[1::2]):
    symbol, fn = _COMPARE[op]
    if _unknown(left) or _unknown(right):
      return _Unknown(f"{_name_of(left)} {symbol} {_name_of(right)}")
    result = fn(left, right)
    if not result:
      return result
    left = right
  return result


def _known(value):
  """A test that must not depend on the row."""
  if _unknown(value):
    raise CannotBlank(f"{_name_of(value)!r} decides a {{% set %}} statement")
  return value


def _not(value):
  return _Unknown(f"not {_name_of(value)}") if _unknown(value) else not value


def _and(left, right):
  if not _unknown(left) and not left:
    return left
  if not _unknown(right) and not right:
    return right
  if _unknown(left) or _unknown(right):
    return _Unknown(f"{_name_of(left)} and {_name_of(right)}")
  return right


def _or(left, right):
  if not _unknown(left) and left:
    return left
  if not _unknown(right) and right:
    return right
  if _unknown(left) or _unknown(right):
    return _Unknown(f"{_name_of(left)} or {_name_of(right)}")
  return right


def _options(values: Iterable[Any]) -> Optional[_Placeholder]:
  """``[a | b | c]``: one blank showing the values a row field selects from.

  Placeholders show their names (``[choice1 | choice2]``); None when a value is
  not text or a number.
  """
  names = []
  for value in values:
    if isinstance(value, _Placeholder):
      names.append(value.name)
    elif isinstance(value, (str, int, float)):
      text = str(value).strip()
      if text.startswith("[") and text.endswith("]") and text.count("[") == 1:
        text = text[1:-1]  # A choice that is one field: its name.
      if text:
        names.append(text)
    else:
      return None
  return _Placeholder(" | ".join(dict.fromkeys(names))) if names else None


class _InstructionEnvironment(jinja2.Environment):
  """Renders templates over placeholders; strict, so nothing is silently empty."""

  def getitem(self, obj, argument):
    if isinstance(obj, _Placeholder):
      return obj.child(argument)
    if _unknown(argument):  # A row field selects one of known options.
      values = obj.values() if isinstance(obj, Mapping) else obj
      options = _options(values) if isinstance(values, Iterable) else None
      if options is None:
        raise CannotBlank(f"{_name_of(argument)!r} selects from a computed "
                          f"{type(obj).__name__}")
      return options
    if isinstance(obj, _Choices):
      return obj[argument]
    return super().getitem(obj, argument)

  def getattr(self, obj, attribute):
    if isinstance(obj, _Placeholder):
      return obj if attribute in _STR_METHODS else obj.child(attribute)
    return super().getattr(obj, attribute)


def _test(name, value, *args):
  """``value is <name>(args)`` (the environment's tests know placeholders)."""
  return _INSTRUCTION_ENV.tests[name](value, *args)


def _blank_test(name: str, fn):
  """A jinja test that is unknown when a row field takes part."""
  def test(value, *args):
    if _unknown(value) or any(_unknown(a) for a in args):
      return _Unknown(f"{_name_of(value)} is {name}")
    return fn(value, *args)
  return test


def _keep_blank(fn):
  """A filter that keeps a placeholder's blank (``int``, ``float``...)."""
  def filter_fn(value, *args, **kwargs):
    if _unknown(value):
      return value
    return fn(value, *args, **kwargs)
  return filter_fn


def _length(value):
  """The ``length`` filter: a row list's length is a blank."""
  if isinstance(value, _Placeholder):
    return _Placeholder(f"{value.name}|length")
  return len(value)


def _choice(choices):
  """The ``choice`` filter: a random pick is a blank showing the options."""
  if _unknown(choices):
    return choices
  options = _options(choices)
  if options is None:
    raise CannotBlank("a random choice among computed values")
  return options


def _range(*args):
  """``range``: over a blank length, one blank index."""
  if any(_unknown(a) for a in args):
    return [_Placeholder("i")]
  return range(*args)


_INSTRUCTION_ENV = _InstructionEnvironment(loader=jinja2.BaseLoader(),
                                           undefined=jinja2.StrictUndefined)
_INSTRUCTION_ENV.globals.update(
    zip=zip, range=_range, __ps_if=_if, __ps_cond=_cond, __ps_cmp=_compare,
    __ps_not=_not, __ps_and=_and, __ps_or=_or, __ps_is=_test,
    __ps_known=_known)
_INSTRUCTION_ENV.tests.update(
    {name: _blank_test(name, fn) for name, fn in _INSTRUCTION_ENV.tests.items()
     if name not in ("defined", "undefined")})
_INSTRUCTION_ENV.filters.update(
    choice=_choice, random=_choice, most_frequent=_most_frequent, length=_length,
    count=_length, int=_keep_blank(_INSTRUCTION_ENV.filters["int"]),
    float=_keep_blank(_INSTRUCTION_ENV.filters["float"]))


def _call(name: str, args: Sequence[jinja2.nodes.Expr],
          lineno: int) -> jinja2.nodes.Call:
  return jinja2.nodes.Call(jinja2.nodes.Name(name, "load", lineno=lineno),
                           list(args), [], None, None, lineno=lineno)


class _BlankTransformer(jinja2.visitor.NodeTransformer):
  """Rewrites tests and conditionals so row fields make them unknown, not wrong.

  ``{% if %}`` renders its branches into variables and lets ``_if`` choose;
  comparisons, ``not``/``and``/``or``, ``is`` tests and ``a if t else b`` become
  calls of the three-valued helpers above.
  """

  def __init__(self):
    self._count = 0

  def _visit_all(self, items):
    out = []
    for item in items:
      new = self.visit(item)
      if isinstance(new, jinja2.nodes.Node):
        out.append(new)
      elif new is not None:
        out.extend(new)
    return out

  def visit_If(self, node):
    branches = [node] + list(node.elif_)
    if any(True for _ in node.find_all((jinja2.nodes.Assign,
                                        jinja2.nodes.AssignBlock))):
      # ``{% set %}`` in a branch: only a test that does not read the row can
      # choose (both branches' assignments cannot be shown at once).
      for branch in branches:
        branch.test = _call("__ps_known", [self.visit(branch.test)],
                            node.lineno)
        branch.body = self._visit_all(branch.body)
      node.else_ = self._visit_all(node.else_)
      return node
    nodes_out, args = [], []
    for branch in branches + [None]:
      if branch is None:
        body = self._visit_all(node.else_)
      else:
        branch.test = self.visit(branch.test)
        body = self._visit_all(branch.body)
      name = f"__ps_branch{self._count}"
      self._count += 1
      nodes_out.append(jinja2.nodes.AssignBlock(
          jinja2.nodes.Name(name, "store", lineno=node.lineno), None, body,
          lineno=node.lineno))
      value = jinja2.nodes.Name(name, "load", lineno=node.lineno)
      args += [value] if branch is None else [branch.test, value]
    nodes_out.append(jinja2.nodes.Output([_call("__ps_if", args, node.lineno)],
                                         lineno=node.lineno))
    return nodes_out

  def visit_CondExpr(self, node):
    node = self.generic_visit(node)
    otherwise = node.expr2 or jinja2.nodes.Const("", lineno=node.lineno)
    return _call("__ps_cond", [node.test, node.expr1, otherwise], node.lineno)

  def visit_Compare(self, node):
    node = self.generic_visit(node)
    args = [node.expr]
    for operand in node.ops:
      args += [jinja2.nodes.Const(operand.op, lineno=node.lineno), operand.expr]
    return _call("__ps_cmp", args, node.lineno)

  def visit_Not(self, node):
    node = self.generic_visit(node)
    return _call("__ps_not", [node.node], node.lineno)

  def visit_And(self, node):
    node = self.generic_visit(node)
    return _call("__ps_and", [node.left, node.right], node.lineno)

  def visit_Or(self, node):
    node = self.generic_visit(node)
    return _call("__ps_or", [node.left, node.right], node.lineno)

  def visit_Test(self, node):
    node = self.generic_visit(node)
    return _call("__ps_is", [jinja2.nodes.Const(node.name, lineno=node.lineno),
                             node.node, *node.args], node.lineno)


def _prompt_only(body: list) -> tuple[list, bool]:
  """``body`` cut at the first ``|||`` (in text, possibly inside if/for blocks).

  Returns the kept nodes and whether a ``|||`` was found; the target after it is
  never rendered, so code that only computes the target cannot fail.
  """
  kept = []
  for node in body:
    if isinstance(node, jinja2.nodes.Output):
      parts = []
      for child in node.nodes:
        if (isinstance(child, jinja2.nodes.TemplateData) and
            "|||" in child.data):
          parts.append(jinja2.nodes.TemplateData(child.data.split("|||")[0],
                                                 lineno=child.lineno))
          kept.append(jinja2.nodes.Output(parts, lineno=node.lineno))
          return kept, True
        parts.append(child)
    elif isinstance(node, (jinja2.nodes.If, jinja2.nodes.For)):
      found = False
      for branch in [node] + list(getattr(node, "elif_", [])):
        branch.body, cut = _prompt_only(branch.body)
        found = found or cut
      node.else_, cut = _prompt_only(node.else_)
      if found or cut:
        kept.append(node)
        return kept, True
    kept.append(node)
  return kept, False


def _render_blank(source: str, context: Mapping[str, Any],
                  prompt_only: bool = False) -> str:
  """``source`` rendered over placeholders for every variable it reads."""
  ast = _INSTRUCTION_ENV.parse(source)
  if prompt_only:
    ast.body, _ = _prompt_only(ast.body)
  names = jinja2.meta.find_undeclared_variables(ast)
  ast = _BlankTransformer().visit(ast)
  variables = {n: _Placeholder(n) for n in names
               if n not in _INSTRUCTION_ENV.globals}
  variables.update(context)
  return _INSTRUCTION_ENV.from_string(ast).render(**variables)


def blank_instruction(template: Template) -> str:
  """The template's prompt with every row field blanked as ``[field]``.

  The same for every row of the template by construction (no row is read):
  ``{{ premise }}`` renders as ``[premise]``, ``{{ passage.text }}`` as
  ``[passage.text]``, a loop over a row list as one pass over ``[list]``;
  answer choices are the template's ``answer_choices`` rendered over the same
  placeholders (static ones kept; choices computed from a row list stay one
  blank, ``[answer_choices[0]]``). Where a row value selects text, the
  instruction shows the options: a conditional as its branches (``[because... |
  so...]``; a branch empty for some rows is kept alone, as the template applies
  only to the others), an index or the ``choice`` filter as the values
  (``[Yes | No]``, ``[choice1 | choice2]``). Only the prompt (before ``|||``)
  is rendered.

  Raises:
    CannotBlank, jinja2.TemplateError, TypeError, ...: the prompt cannot be
      expressed without a row (the caller falls back to the rendered prompt).
  """
  choices = None
  if template.answer_choices is not None:
    try:
      rendered = _render_blank(template.answer_choices, {})
      choices = _Choices(c.strip() for c in rendered.split("|||"))
    except Exception:  # pylint: disable=broad-except
      choices = None
    if choices is None or len(choices) < 2:
      # Choices computed from the row (``endings | join(" ||| ")``): one blank.
      choices = _Placeholder(ANSWER_CHOICES)
  prompt = _render_blank(template.jinja, {ANSWER_CHOICES: choices},
                         prompt_only=True)
  prompt = prompt.split("|||")[0].strip()
  if not prompt:
    raise CannotBlank("the blanked prompt is empty")
  return prompt


@functools.lru_cache(maxsize=None)
def template_instruction(template: Template) -> Optional[str]:
  """The template-level instruction, or None (logged) where it cannot be blanked.

  None means: use each example's rendered prompt (the per-example form).
  """
  try:
    return blank_instruction(template)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning(
        "P3: template %r of %s cannot be blanked into one instruction (%s: %s); "
        "its examples use their rendered prompts as instructions.",
        template.name, "/".join(filter(None, [template.dataset,
                                              template.subset])),
        type(e).__name__, e)
    return None


# ------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class P3Dataset:
  """A Hugging Face dataset (subset) and its splits.

  Attributes:
    name: Hugging Face dataset name (also the templates folder).
    subset: configuration name, or None.
    splits: seqio split -> Hugging Face split (ANLI rounds use e.g. dev_r1).
    key: name used in task names; defaults to ``<name>_<subset>``.
    aliases: other folder names for the subset's local data (``wsc`` for
      ``wsc.fixed``).
  """
  name: str
  subset: Optional[str] = None
  splits: tuple[tuple[str, str], ...] = (("train", "train"),
                                         ("validation", "validation"))
  key: str = ""
  aliases: tuple[str, ...] = ()

  @property
  def task_key(self) -> str:
    return task_clean(self.key or "_".join(filter(None, [self.name,
                                                         self.subset])))

  def hf_split(self, split: str) -> str:
    return dict(self.splits)[split]


def _ds(name, subset=None, **kwargs):
  return P3Dataset(name, subset, **kwargs)


# T0's training datasets (Sanh et al. 2022, D4 "train" set).
T0_TRAIN_DATASETS = tuple(_ds(*x.split("/")) for x in (
    "commonsense_qa", "dream", "quail", "quartz", "social_i_qa", "wiqa",
    "cosmos_qa", "qasc", "quarel", "sciq", "wiki_hop/original",
    "adversarial_qa/dbidaf", "adversarial_qa/dbert", "adversarial_qa/droberta",
    "quoref", "duorc/SelfRC", "duorc/ParaphraseRC", "ropes",
    "kilt_tasks/hotpotqa", "wiki_qa", "common_gen", "wiki_bio",
    "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes",
    "yelp_review_full", "cnn_dailymail/3.0.0", "gigaword", "multi_news",
    "samsum", "xsum", "ag_news", "dbpedia_14", "trec", "glue/mrpc",
    "paws/labeled_final", "glue/qqp"))

# T0's held-out evaluation datasets, evaluated on validation data.
T0_EVAL_DATASETS = (
    _ds("anli", splits=(("train", "train_r1"), ("validation", "dev_r1")),
        key="anli_r1"),
    _ds("anli", splits=(("train", "train_r2"), ("validation", "dev_r2")),
        key="anli_r2"),
    _ds("anli", splits=(("train", "train_r3"), ("validation", "dev_r3")),
        key="anli_r3"),
    _ds("super_glue", "cb"),
    _ds("super_glue", "copa"),
    _ds("super_glue", "rte"),
    _ds("super_glue", "wic"),
    _ds("super_glue", "wsc.fixed", aliases=("wsc",)),
    _ds("hellaswag"),
    _ds("story_cloze", "2016", splits=(("validation", "validation"),)),
    _ds("winogrande", "winogrande_xl"),
)


def find_data_file(data_dir: str, dataset: P3Dataset,
                   hf_split: str) -> Optional[str]:
  """The local jsonl of a split, or None."""
  subsets = [dataset.subset, *dataset.aliases] if dataset.subset else [None]
  for subset in subsets:
    folder = os.path.join(data_dir, dataset.name, *([subset] if subset else []))
    for filename in (f"{hf_split}.hf_format.jsonl", f"{hf_split}.jsonl"):
      path = os.path.join(folder, filename)
      if os.path.exists(path):
        return path
  return None


def iter_jsonl(path: str, shard_index: int = 0,
               num_shards: int = 1) -> Iterator[tuple[int, dict]]:
  """(row index, row) of a jsonl file, every num_shards-th row."""
  with open(path, encoding="utf-8") as f:
    index = 0
    for line in f:
      if not line.strip():
        continue
      if index % num_shards == shard_index:
        yield index, json.loads(line)
      index += 1


@functools.lru_cache(maxsize=None)
def count_rows(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def hf_rows(dataset: P3Dataset, hf_split: str) -> Optional[list[dict]]:
  """Rows from the ``datasets`` package, or None when it is not installed."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  ds = datasets.load_dataset(dataset.name, dataset.subset, split=hf_split)
  return [dict(row) for row in ds]


# -------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Rendered:
  prompt: str
  target: str
  choices: Optional[tuple[str, ...]]


def render(template: Template, row: Mapping[str, Any],
           seed: int = 0) -> Optional[Rendered]:
  """A row through a template; None where promptsource gives no usable pair."""
  example = remove_hyphen(row)
  parts = template.apply(example, seed=seed)
  if len(parts) != 2 or not parts[0] or not parts[1]:
    return None
  choices = template.answer_choices_list(example)
  return Rendered(parts[0], parts[1], tuple(choices) if choices else None)


FEW_SHOT_FLAN = "flan"
FEW_SHOT_NEWLINE = "newline"
FEW_SHOT_FORMATS = (FEW_SHOT_FLAN, FEW_SHOT_NEWLINE)
# HINT's FLAN-style exemplar format on P3 (FLAN's few-shot defaults as HINT's
# t0 few-shot tasks set them): "0 " before each exemplar's input, " X " after
# it and after its target, " Definition: " before the query.
FLAN_INPUTS_PREFIX = "0 "
FLAN_TARGETS_PREFIX = "1 "
FLAN_X_Y_DELIMITER = " X "
FLAN_EXAMPLE_SEPARATOR = " X "
FLAN_DEFINITION_SEPARATOR = " Definition: "


def format_shots(shots: Sequence[Rendered],
                 shot_format: str = FEW_SHOT_FLAN) -> str:
  """The exemplars as one string, in ``shot_format`` (see the module docstring).

  ``newline``: ``<prompt>\\n<target>`` per shot, separated by blank lines.
  ``flan``: ``0 <prompt> X 1 <target> X `` per shot, concatenated.
  """
  if shot_format == FEW_SHOT_NEWLINE:
    return "\n\n".join(f"{s.prompt}\n{s.target}" for s in shots)
  if shot_format == FEW_SHOT_FLAN:
    return "".join(
        f"{FLAN_INPUTS_PREFIX}{s.prompt}{FLAN_X_Y_DELIMITER}"
        f"{FLAN_TARGETS_PREFIX}{s.target}{FLAN_EXAMPLE_SEPARATOR}"
        for s in shots)
  raise ValueError(f"Unknown few-shot format {shot_format!r}; use one of "
                   f"{FEW_SHOT_FORMATS}.")


def with_shots(shots: Sequence[Rendered], query: str,
               shot_format: str = FEW_SHOT_FLAN) -> str:
  """The exemplars followed by ``query`` (an instruction or a prompt)."""
  separator = ("\n\n" if shot_format == FEW_SHOT_NEWLINE
               else FLAN_DEFINITION_SEPARATOR)
  return format_shots(shots, shot_format) + separator + query


def make_record(dataset: P3Dataset, template: Template, rendered: Rendered,
                example_id: str, shots: Sequence[Rendered] = (),
                shots_in_inputs: bool = False,
                with_choices: bool = False,
                instruction: Optional[str] = None,
                shot_format: str = FEW_SHOT_FLAN) -> dict[str, Any]:
  """One record (features.py schema); few-shot when ``shots`` are given.

  Args:
    dataset: the row's dataset.
    template: the template it was rendered with.
    rendered: the row's rendering.
    example_id: unique per example.
    shots: solved exemplars (rendered with the same template).
    shots_in_inputs: put the shots in ``inputs`` (baselines; ``hyper_inputs``
      then empty) instead of ``hyper_inputs``.
    with_choices: add ``answer_choices`` (rank classification).
    instruction: the template-level instruction (``template_instruction``);
      None: the rendered prompt (the per-example form).
    shot_format: ``flan`` (HINT's) or ``newline``.
  """
  hyper = rendered.prompt if instruction is None else instruction
  inputs = rendered.prompt
  if shots:
    if shot_format == FEW_SHOT_FLAN:
      # HINT's few-shot tasks append the delimiter to the query's inputs too
      # (then strip trailing spaces): "<prompt> X".
      inputs = (rendered.prompt + FLAN_X_Y_DELIMITER).strip()
    if shots_in_inputs:
      hyper, inputs = "", with_shots(shots, inputs, shot_format)
    else:
      hyper = with_shots(shots, hyper, shot_format)
  record = F.make_example(hyper, inputs, rendered.target, dataset.task_key,
                          template=template.name, example_id=example_id)
  if with_choices:
    record[ANSWER_CHOICES] = list(rendered.choices or ())
  return record


def pick_shots(pool: Sequence[tuple[int, Rendered]], k: int, index: int,
               same_split: bool, seed: int, salt: str) -> list[Rendered]:
  """k shots for row ``index``: seeded, never the row itself.

  Args:
    pool: (row index, rendering) candidates.
    k: number of shots (fewer if the pool is smaller).
    index: the row being answered.
    same_split: whether the pool comes from the row's own split.
    seed: user seed.
    salt: distinguishes tasks (dataset/template).
  """
  candidates = [r for i, r in pool if not (same_split and i == index)]
  rng = random.Random(zlib.crc32(f"{seed}/{salt}/{index}".encode()))
  return rng.sample(candidates, min(k, len(candidates)))


# --------------------------------------------------------- tf preprocessors


def rank_classification(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: one example per answer choice (T0's score_eval).

  Input examples carry ``answer_choices`` ``[n]``; output examples have
  ``targets`` = choice i, ``choice_index`` = i, ``is_correct`` = (choice i ==
  the gold target), ``num_choices`` = n, and every other feature copied.
  Examples without choices are dropped.
  """

  def expand(ex):
    choices = ex[ANSWER_CHOICES]
    n = tf.size(choices)
    out = {k: tf.fill([n], v) for k, v in ex.items()
           if k not in (ANSWER_CHOICES, F.TARGETS, F.CHOICE_INDEX,
                        F.IS_CORRECT, F.NUM_CHOICES)}
    out[F.TARGETS] = choices
    out[F.CHOICE_INDEX] = tf.range(n, dtype=tf.int32)
    out[F.IS_CORRECT] = tf.cast(
        tf.equal(choices, tf.strings.strip(ex[F.TARGETS])), tf.int32)
    out[F.NUM_CHOICES] = tf.fill([n], tf.cast(n, tf.int32))
    return out

  ds = dataset.filter(lambda ex: tf.size(ex[ANSWER_CHOICES]) > 0)
  return ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def log_skipped(name: str, skipped: int, total: int) -> None:
  if skipped:
    logging.info("%s: %d of %d rows give no prompt/target pair (skipped).",
                 name, skipped, total)
