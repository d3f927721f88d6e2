"""P3 / T0: promptsource templates, read and rendered exactly as promptsource.

promptsource (not installable on Python >= 3.10) stores prompts as
``<templates_dir>/<dataset>[/<subset>]/templates.yaml`` with ``!Template`` and
``!TemplateMetadata`` YAML tags. ``load_templates`` reads them with a safe YAML
loader and ``Template.apply`` renders them exactly as promptsource 0.2.3 does:
jinja2 with ``zip`` and the ``choice``/``most_frequent`` filters, every ``}}``
variable piped through ``| string | truncate(2048)``, ``|||`` inside example
fields protected while splitting prompt from target, parts stripped. The one
deliberate difference: the ``choice`` filter draws from a seeded generator, so a
rendering is reproducible.

The rest of P3: p3_instructions.py (a template's instruction, its prompt with
the row fields blanked), p3_rows.py (datasets and their rows), p3.py (rows ->
records, few-shot, rank classification), p3_tasks.py (seqio registration).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import random
from collections import Counter
from typing import Any, Mapping, Optional

import jinja2
import yaml

# promptsource's truncation of every template variable.
TEXT_VAR_LENGTH = 2048
ANSWER_CHOICES = "answer_choices"
_PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"

_CHOICE_RNG = random.Random(0)


def _choice(choices):
  return _CHOICE_RNG.choice(choices)


def most_frequent(items):
  """promptsource's filter: the items that appear most often."""
  if not items:
    return None
  counts = Counter(items).most_common()
  top = counts[0][1]
  return [item for item, count in counts if count == top]


_ENV = jinja2.Environment(loader=jinja2.BaseLoader())
_ENV.globals.update(zip=zip)
_ENV.filters["choice"] = _choice
_ENV.filters["most_frequent"] = most_frequent


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
