"""P3 / T0: a template's instruction, its prompt with the row fields blanked.

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

This module is the jinja side: an environment whose item and attribute access,
tests and filters know placeholders, and an AST rewrite that routes tests and
conditionals to the three-valued helpers of ``p3_placeholders.py`` (the values).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

import jinja2
import jinja2.meta
import jinja2.visitor

from hyper_tasks.data import p3_placeholders as ph
from hyper_tasks.data import p3_templates

INSTRUCTION_TEMPLATE = "template"
INSTRUCTION_PROMPT = "prompt"
INSTRUCTIONS = (INSTRUCTION_TEMPLATE, INSTRUCTION_PROMPT)


class _InstructionEnvironment(jinja2.Environment):
  """Renders templates over placeholders; strict, so nothing is silently empty."""

  def getitem(self, obj, argument):
    if isinstance(obj, ph.Placeholder):
      return obj.child(argument)
    if ph.is_unknown(argument):  # A row field selects one of known options.
      values = obj.values() if isinstance(obj, Mapping) else obj
      options = ph.options(values) if isinstance(values, Iterable) else None
      if options is None:
        raise ph.CannotBlank(f"{ph.name_of(argument)!r} selects from a "
                             f"computed {type(obj).__name__}")
      return options
    if isinstance(obj, ph.Choices):
      return obj[argument]
    return super().getitem(obj, argument)

  def getattr(self, obj, attribute):
    if isinstance(obj, ph.Placeholder):
      return obj if attribute in ph.STR_METHODS else obj.child(attribute)
    return super().getattr(obj, attribute)


def _test(name, value, *args):
  """``value is <name>(args)`` (the environment's tests know placeholders)."""
  return _INSTRUCTION_ENV.tests[name](value, *args)


def _blank_test(name: str, fn):
  """A jinja test that is unknown when a row field takes part."""
  def test(value, *args):
    if ph.is_unknown(value) or any(ph.is_unknown(a) for a in args):
      return ph.Unknown(f"{ph.name_of(value)} is {name}")
    return fn(value, *args)
  return test


def _keep_blank(fn):
  """A filter that keeps a placeholder's blank (``int``, ``float``...)."""
  def filter_fn(value, *args, **kwargs):
    if ph.is_unknown(value):
      return value
    return fn(value, *args, **kwargs)
  return filter_fn


def _length(value):
  """The ``length`` filter: a row list's length is a blank."""
  if isinstance(value, ph.Placeholder):
    return ph.Placeholder(f"{value.name}|length")
  return len(value)


def _choice(choices):
  """The ``choice`` filter: a random pick is a blank showing the options."""
  if ph.is_unknown(choices):
    return choices
  options = ph.options(choices)
  if options is None:
    raise ph.CannotBlank("a random choice among computed values")
  return options


def _range(*args):
  """``range``: over a blank length, one blank index."""
  if any(ph.is_unknown(a) for a in args):
    return [ph.Placeholder("i")]
  return range(*args)


_INSTRUCTION_ENV = _InstructionEnvironment(loader=jinja2.BaseLoader(),
                                           undefined=jinja2.StrictUndefined)
_INSTRUCTION_ENV.globals.update(
    zip=zip, range=_range, __ps_if=ph.if_, __ps_cond=ph.cond,
    __ps_cmp=ph.compare, __ps_not=ph.not_, __ps_and=ph.and_, __ps_or=ph.or_,
    __ps_is=_test, __ps_known=ph.known)
_INSTRUCTION_ENV.tests.update(
    {name: _blank_test(name, fn) for name, fn in _INSTRUCTION_ENV.tests.items()
     if name not in ("defined", "undefined")})
_INSTRUCTION_ENV.filters.update(
    choice=_choice, random=_choice,
    most_frequent=p3_templates.most_frequent, length=_length, count=_length,
    int=_keep_blank(_INSTRUCTION_ENV.filters["int"]),
    float=_keep_blank(_INSTRUCTION_ENV.filters["float"]))


def _call(name: str, args: Sequence[jinja2.nodes.Expr],
          lineno: int) -> jinja2.nodes.Call:
  return jinja2.nodes.Call(jinja2.nodes.Name(name, "load", lineno=lineno),
                           list(args), [], None, None, lineno=lineno)


class _BlankTransformer(jinja2.visitor.NodeTransformer):
  """Rewrites tests and conditionals so row fields make them unknown, not wrong.

  ``{% if %}`` renders its branches into variables and lets ``ph.if_`` choose;
  comparisons, ``not``/``and``/``or``, ``is`` tests and ``a if t else b`` become
  calls of the three-valued helpers of ``p3_placeholders``.
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
  variables = {n: ph.Placeholder(n) for n in names
               if n not in _INSTRUCTION_ENV.globals}
  variables.update(context)
  return _INSTRUCTION_ENV.from_string(ast).render(**variables)


def blank_instruction(template: p3_templates.Template) -> str:
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
    p3_placeholders.CannotBlank, jinja2.TemplateError, TypeError, ...: the
      prompt cannot be expressed without a row (the caller falls back to the rendered prompt).
  """
  choices = None
  if template.answer_choices is not None:
    try:
      rendered = _render_blank(template.answer_choices, {})
      choices = ph.Choices(c.strip() for c in rendered.split("|||"))
    except Exception:  # pylint: disable=broad-except
      choices = None
    if choices is None or len(choices) < 2:
      # Choices computed from the row (``endings | join(" ||| ")``): one blank.
      choices = ph.Placeholder(p3_templates.ANSWER_CHOICES)
  prompt = _render_blank(template.jinja,
                         {p3_templates.ANSWER_CHOICES: choices},
                         prompt_only=True)
  prompt = prompt.split("|||")[0].strip()
  if not prompt:
    raise ph.CannotBlank("the blanked prompt is empty")
  return prompt


@functools.lru_cache(maxsize=None)
def template_instruction(template: p3_templates.Template) -> Optional[str]:
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
