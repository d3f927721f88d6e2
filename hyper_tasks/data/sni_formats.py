"""Super-NaturalInstructions: formatting instances into records.

Formats. Tk-Instruct builds one encoder input from parts::

  Definition: <definition>.\\n\\n                                  (definition part)
   Positive Example 1 -\\nInput: <x>.\\n Output: <y>.\\n[ Explanation: <e>.\\n]\\n
   Negative Example 1 -\\n...                                     (example parts)
  Now complete the following example -\\nInput: <x>.\\nOutput:     (instance part)

(a period is added where a part does not end in punctuation). HINT formats put the
definition and example parts in ``hyper_inputs`` and the instance part in
``inputs``; ``concat`` formats (the baselines) put everything in ``inputs`` and
leave ``hyper_inputs`` empty. So ``concat_X.inputs == X.hyper_inputs + X.inputs``
for every instance: the two differ only in where the instruction goes, which keeps
the comparison fair. Targets and references are identical across formats.

Format names: ``[concat_][def][_pos_K][_neg_K][_expl]``, e.g. ``def``,
``def_pos_2``, ``concat_def_pos_2_neg_2_expl``, ``concat_pos_2`` (examples only).

Token budget (optional, Tk-Instruct's rule): given a budget per feature and a token
counter, demonstrations are added one at a time and the first that would make the
text exceed its budget ends that kind (positives, then negatives; later ones are
not tried), so a demonstration is either whole or absent, never cut mid-example.
The budget of a HINT format's instruction is the ``hyper_inputs`` length (the
definition and examples alone, as HINT's code packs them); that of a ``concat``
format is the ``inputs`` length, counted with the instance part, as Tk-Instruct
counts its source. Counts include the EOS seqio appends. The definition and the
instance are always kept (the feature converter truncates what is still too long
and reports it). Without a budget nothing is dropped.
"""
from __future__ import annotations

import dataclasses
import re
import string
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

from hyper_tasks.data import features as F
from hyper_tasks.data import sni

# text -> its length in tokens, EOS included (see token_counter).
TokenCounter = Callable[[str], int]


@dataclasses.dataclass(frozen=True)
class SniFormat:
  """Which parts of a Tk-Instruct input to build, and where the instruction goes."""
  name: str
  definition: bool = True
  num_pos: int = 0
  num_neg: int = 0
  explanation: bool = False
  concat: bool = False


_FORMAT_RE = re.compile(
    r"^(?P<concat>concat_)?(?P<def>def)?(?:_?pos_(?P<pos>\d+))?"
    r"(?:_neg_(?P<neg>\d+))?(?P<expl>_expl)?$")


def format_name(fmt: SniFormat) -> str:
  """The canonical name of a format (inverse of ``parse_format``)."""
  parts = ["def"] if fmt.definition else []
  parts += [f"pos_{fmt.num_pos}"] if fmt.num_pos else []
  parts += [f"neg_{fmt.num_neg}"] if fmt.num_neg else []
  parts += ["expl"] if fmt.explanation else []
  return ("concat_" if fmt.concat else "") + "_".join(parts)


def parse_format(name: str) -> SniFormat:
  """``"concat_def_pos_2_neg_2_expl"`` -> SniFormat(...).

  Raises:
    ValueError: a name that is not canonical ``[concat_][def][_pos_K][_neg_K]
      [_expl]`` with a definition or positive examples.
  """
  m = _FORMAT_RE.match(name)
  fmt = None
  if m and (m["def"] or m["pos"]):
    fmt = SniFormat(name=name, definition=bool(m["def"]),
                    num_pos=int(m["pos"] or 0), num_neg=int(m["neg"] or 0),
                    explanation=bool(m["expl"]), concat=bool(m["concat"]))
  if fmt is None or format_name(fmt) != name:
    raise ValueError(
        f"Unknown SNI format {name!r}; expected [concat_][def][_pos_K][_neg_K]"
        "[_expl], e.g. def, def_pos_2, concat_def_pos_2_neg_2_expl.")
  return fmt


# HINT formats and their concatenated baselines, registered by default.
DEFAULT_FORMATS = (
    "def", "def_pos_1", "def_pos_2",
    "concat_def", "concat_def_pos_1", "concat_def_pos_2",
    "concat_def_pos_2_neg_2", "concat_def_pos_2_expl",
    "concat_def_pos_2_neg_2_expl", "concat_pos_2",
)


def _end(text: str) -> str:
  """Tk-Instruct's rule: add a period unless the text ends in punctuation."""
  return text if text and text[-1] in string.punctuation else text + "."


def definition_part(definition: str) -> str:
  return _end("Definition: " + definition.strip()) + "\n\n"


def demonstration_part(demo: sni.Demonstration, index: int, kind: str,
                       explanation: bool) -> str:
  """`` Positive Example 1 -\\nInput: ...\\n Output: ...\\n[ Explanation: ...]\\n``."""
  text = _end(f" {kind} Example {index} -\nInput: {demo.input.strip()}") + "\n"
  text = _end(text + f" Output: {demo.output.strip()}") + "\n"
  if explanation and demo.explanation:
    text = _end(text + f" Explanation: {demo.explanation.strip()}") + "\n"
  return text + "\n"


def instance_part(instance_input: str) -> str:
  text = _end("Now complete the following example -\n"
              f"Input: {instance_input.strip()}")
  return text + "\nOutput: "


def token_counter(vocabulary) -> TokenCounter:
  """Counts tokens as the task will: ``vocabulary.encode`` plus the EOS seqio
  appends (as Tk-Instruct's ``len(tokenizer(text)["input_ids"])`` counts ``</s>``)."""
  return lambda text: len(vocabulary.encode(text)) + 1


def instruction_part(task: sni.SniTask, fmt: SniFormat,
                     budget: Optional[int] = None,
                     count_tokens: Optional[TokenCounter] = None,
                     suffix: str = "") -> str:
  """Definition and example parts of ``fmt`` (empty if it has none).

  Args:
    task, fmt: what to build.
    budget: with ``count_tokens``, Tk-Instruct's rule (module docstring): a
      demonstration is kept only if ``count_tokens(text so far + it + suffix)`` stays
      within ``budget``; the first one that does not fit ends its kind. None: every
      demonstration of ``fmt`` is kept.
    count_tokens: see :func:`token_counter`.
    suffix: text that follows in the same feature (a concat format's instance).
  Raises:
    ValueError: a budget without a counter.
  """
  text = definition_part(task.definition) if fmt.definition else ""
  kinds = (("Positive", task.positive_examples[:fmt.num_pos]),
           ("Negative", task.negative_examples[:fmt.num_neg]))
  parts = [[demonstration_part(d, i + 1, kind, fmt.explanation)
            for i, d in enumerate(demos)] for kind, demos in kinds]
  if budget is None:
    return text + "".join(p for ps in parts for p in ps)
  if count_tokens is None:
    raise ValueError("instruction_part: a token budget needs count_tokens.")
  everything = text + "".join(p for ps in parts for p in ps)
  # Fast path: when everything fits, every shorter prefix fits too (demonstrations
  # are whitespace-delimited, so dropping one never lengthens the tokenization).
  if count_tokens(everything + suffix) <= budget:
    return everything
  for kind_parts in parts:
    for part in kind_parts:
      if count_tokens(text + part + suffix) > budget:
        break
      text += part
  return text


def choose_target(instance: sni.Instance) -> str:
  """The training target: one reference, chosen by instance id.

  Deterministic (the same in every format and run) yet spread over references
  when an instance has several.
  """
  if not instance.outputs:
    return ""
  return instance.outputs[zlib.crc32(instance.id.encode()) %
                          len(instance.outputs)]


def format_instance(task: sni.SniTask, instance: sni.Instance, fmt: SniFormat,
                    budget: Optional[Mapping[str, int]] = None,
                    count_tokens: Optional[TokenCounter] = None,
                    instruction: Optional[str] = None) -> dict[str, Any]:
  """One record (features.py schema) of ``instance`` in format ``fmt``.

  Args:
    budget: token budgets by feature (``hyper_inputs`` for a HINT format's
      instruction, ``inputs`` for a concat format's whole input; e.g. the task
      feature lengths); demonstrations that do not fit are dropped whole
      (module docstring). None or a missing key: no dropping.
    count_tokens: see :func:`token_counter` (needed with a budget).
    instruction: the HINT format's instruction part when already built (it
      depends only on the task).
  """
  budget = budget or {}
  query = instance_part(instance.input)
  if fmt.concat:
    hyper = ""
    inputs = instruction_part(task, fmt, budget.get("inputs"), count_tokens,
                              suffix=query) + query
  else:
    if instruction is None:
      instruction = instruction_part(task, fmt, budget.get("hyper_inputs"),
                                     count_tokens)
    hyper, inputs = instruction, query
  return F.make_example(
      hyper, inputs, choose_target(instance), task.name,
      references=instance.outputs, category=task.category,
      example_id=instance.id)


def format_tasks(tasks: Sequence[sni.SniTask], fmt: SniFormat,
                 validation: bool = False,
                 budget: Optional[Mapping[str, int]] = None,
                 count_tokens: Optional[TokenCounter] = None
                 ) -> list[dict[str, Any]]:
  """Records of every selected instance of ``tasks``, task by task (``budget``,
  ``count_tokens``: see :func:`format_instance`)."""
  out = []
  for task in tasks:
    chosen = task.validation_instances if validation else task.instances
    instruction = None
    if not fmt.concat:  # the same for every instance of the task
      instruction = instruction_part(task, fmt, (budget or {}).get("hyper_inputs"),
                                     count_tokens)
    out.extend(format_instance(task, inst, fmt, budget, count_tokens, instruction)
               for inst in chosen if inst.outputs)
  return out
