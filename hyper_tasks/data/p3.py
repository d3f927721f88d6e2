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
apply to the row, or an unlabeled row). As in HINT, the prompt goes to both
``hyper_inputs`` and ``inputs``: P3 has no separate instruction, so the
hypernetwork reads the whole prompt.

Rank classification (T0's held-out evaluation): ``rank_classification`` is a seqio
preprocessor expanding each example into one example per answer choice, with
``targets`` the choice, ``choice_index``, ``is_correct`` (choice == gold target)
and ``num_choices``; all choices of an example share its ``example_id``.

Few-shot. ``few_shot_record`` prepends k solved examples, rendered with the same
template, to ``hyper_inputs`` (HINT) or, for baselines, to ``inputs``
(``hyper_inputs`` then empty)::

  <prompt 1>\\n<target 1>\\n\\n<prompt 2>\\n<target 2>\\n\\n<prompt>

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
from typing import Any, Iterator, Mapping, Optional, Sequence

import jinja2
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


def format_shots(shots: Sequence[Rendered]) -> str:
  """``<prompt>\\n<target>`` per shot, separated by blank lines."""
  return "\n\n".join(f"{s.prompt}\n{s.target}" for s in shots)


def make_record(dataset: P3Dataset, template: Template, rendered: Rendered,
                example_id: str, shots: Sequence[Rendered] = (),
                shots_in_inputs: bool = False,
                with_choices: bool = False) -> dict[str, Any]:
  """One record (features.py schema); few-shot when ``shots`` are given."""
  hyper = inputs = rendered.prompt
  if shots:
    context = format_shots(shots) + "\n\n" + rendered.prompt
    if shots_in_inputs:
      hyper, inputs = "", context
    else:
      hyper = context
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
