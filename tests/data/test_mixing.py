"""Mixtures mixed as text, and P3 sources that shuffle row indices.

pipeline mixes the records of text tasks and tokenizes once, after sampling;
seqio's Mixture.get_dataset tokenizes every member task on its own. Both must give
the same examples in the same order. P3 task sources shuffle row indices and
render blocks of rows; they must give the records a shuffle of the rendered
records would, and read rows as p3_rows.iter_jsonl numbers them. The first
batch of a P3 mixture must not render more than a few blocks per task.
"""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_tasks
from hyper_tasks.data import p3_templates
from hyper_tasks.data import pipeline
from hyper_tasks.data import registry
from hyper_tasks.data import task_datasets
from hyper_tasks.data import toy

LENGTHS = {F.HYPER_INPUTS: 64, F.INPUTS: 32, F.TARGETS: 16}

TEMPLATES_YAML = """\
dataset: toyds
subset: sub
templates:
  id-b: !Template
    answer_choices: no ||| yes
    id: id-b
    jinja: 'Is "{{ sentence }}" about {{ topic }}? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      metrics:
      - Accuracy
      original_task: true
    name: is about
    reference: ''
  id-c: !Template
    id: id-c
    jinja: 'Write a sentence about {{ topic }}. ||| {{ sentence }}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      metrics:
      - ROUGE
      original_task: false
    name: generate
    reference: ''
"""

TOYDS = p3_rows.P3Dataset("toyds", "sub")
OTHER = p3_rows.P3Dataset("otherds", "sub")


def _rows(n, offset=0):
  return [{"sentence": f"Sentence number {offset + i}.",
           "topic": ["cats", "dogs", "birds"][i % 3], "label": i % 2}
          for i in range(n)]


def _write(root, dataset, splits, line_end=b"\n"):
  """Templates and ``<split>.jsonl`` (rows joined by ``line_end``)."""
  tdir = root / "templates" / dataset.name / dataset.subset
  tdir.mkdir(parents=True)
  (tdir / "templates.yaml").write_text(
      TEMPLATES_YAML.replace("toyds", dataset.name))
  ddir = root / "data" / dataset.name / dataset.subset
  ddir.mkdir(parents=True)
  for split, rows in splits.items():
    (ddir / f"{split}.jsonl").write_bytes(
        b"".join(json.dumps(r).encode() + line_end for r in rows))
  return str(root / "templates"), str(root / "data")


@pytest.fixture
def two_p3_datasets(tmp_path):
  """toyds (11 train rows, 7 validation rows with two unrenderable) and
  otherds (5 train rows): t0_train has 4 template tasks."""
  validation = _rows(7, 100)
  validation[2]["label"] = validation[5]["label"] = -1
  templates, data = _write(tmp_path, TOYDS, {"train": _rows(11),
                                             "validation": validation})
  _write(tmp_path, OTHER, {"train": _rows(5, 50)})
  p3_tasks.register_t0(templates, data, train_datasets=(TOYDS, OTHER),
                       eval_datasets=(TOYDS,), shots=(2,))
  yield templates, data
  registry.unregister_all()


def _examples(ds, n=None):
  if n is not None:
    ds = ds.take(n)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({k: v.tolist() if isinstance(v, np.ndarray) else v
                for k, v in ex.items()})
  return out


def _both_paths(name, split, n=None, **kwargs):
  provider = pipeline.get_provider(name)
  kwargs = dict(dict(shuffle=True, seed=0, num_epochs=None, shard_info=None),
                **kwargs)
  text = task_datasets.task_dataset(provider, split, LENGTHS, **kwargs)
  seqio_path = task_datasets.task_dataset(provider, split, LENGTHS,
                                          text_level=False, **kwargs)
  assert text.element_spec == seqio_path.element_spec
  return _examples(text, n), _examples(seqio_path, n)


@pytest.mark.parametrize("name, split", [
    ("t0_train", "train"),
    ("t0_train_2_shot", "train"),
    ("t0_eval_score_eval", "validation"),
])
@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(seed=7),
    dict(shuffle=False),
    dict(shuffle=False, num_epochs=1),
    dict(num_epochs=2),
    dict(shard_info=seqio.ShardInfo(1, 2)),
])
def test_p3_mixture_as_text_equals_seqio(two_p3_datasets, name, split,
                                         kwargs):
  provider = pipeline.get_provider(name)
  assert task_datasets.text_mixture_tasks(provider, split)
  text, seqio_path = _both_paths(name, split, n=150, **kwargs)
  assert len(text) >= 10
  assert text == seqio_path


@pytest.fixture
def toy_mixture():
  toy.register_toy(num_per_op=5, num_test_per_op=2)
  registry.add_mixture(
      "toy_mix", ("test",),
      [("toy_train", 3.0), ("toy_concat_train", 1.0),
       ("toy_noinstr_test_seen", 2.0)])
  yield
  registry.unregister_all()


@pytest.mark.parametrize("kwargs", [
    dict(), dict(seed=3), dict(shuffle=False),
    dict(shard_info=seqio.ShardInfo(0, 3)),
])
def test_toy_mixture_as_text_equals_seqio(toy_mixture, kwargs):
  # In-memory sources and seqio's shuffle after preprocessing (1000 examples).
  for split in ("train", "test"):
    text, seqio_path = _both_paths("toy_mix", split, n=400, **kwargs)
    assert len(text) == 400
    assert text == seqio_path


def test_batches_of_a_mixture_are_deterministic(two_p3_datasets):
  def batches(**kwargs):
    it = pipeline.get_dataset("t0_train", "train", LENGTHS, batch_size=4,
                              seed=2, **kwargs)
    return [next(it) for _ in range(5)]
  first, again = batches(), batches()
  resumed = batches(start_batch=2)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _spec(name):
  return pipeline.get_provider(name).source._dataset_fn.__self__  # pylint: disable=protected-access


@pytest.mark.parametrize("name, split", [
    ("p3_toyds_sub_generate", "train"), ("p3_toyds_sub_generate", "validation"),
    ("p3_toyds_sub_is_about_2_shot", "train"),
    ("p3_toyds_sub_is_about_2_shot", "validation"),
    ("p3_toyds_sub_is_about_score_eval", "validation")])
def test_p3_source_serves_the_records_in_order(two_p3_datasets, name, split):
  spec = _spec(name)
  assert split in pipeline.get_provider(name).splits
  records = list(spec.records(split))
  served = _examples(spec.dataset_fn(split, False))
  if spec.score_eval:
    for r in records:
      r[p3_templates.ANSWER_CHOICES] = [
          c.encode() for c in r[p3_templates.ANSWER_CHOICES]]
  expected = [{k: v.encode() if isinstance(v, str) else v
               for k, v in r.items()} for r in records]
  assert served == expected
  # Shards partition the records.
  shards = [_examples(spec.dataset_fn(split, False, None,
                                      seqio.ShardInfo(i, 3)))
            for i in range(3)]
  assert sorted(map(str, sum(shards, []))) == sorted(map(str, served))


def test_p3_source_shuffles_as_a_shuffle_of_rendered_records(
    two_p3_datasets):
  # Every train row renders: the order is that of the records shuffled with
  # the same buffer and seed (the shuffle moves row indices instead).
  spec = _spec("p3_toyds_sub_is_about")
  records = list(spec.records("train"))
  for seed in (0, 5):
    reference = tf.data.Dataset.from_tensor_slices(
        {k: [r[k] for r in records] for k in F.RECORD_SIGNATURE}).shuffle(
            p3_tasks._SHUFFLE_ROWS, seed=seed, reshuffle_each_iteration=True)
    served = spec.dataset_fn("train", True, seed).repeat(3)
    assert _examples(served) == _examples(reference.repeat(3))
  # With unrenderable rows (validation), the same records each epoch.
  served = _examples(spec.dataset_fn("validation", True, 1).repeat(2))
  expected = sorted(map(str, _examples(spec.dataset_fn("validation", False))))
  assert len(served) == 2 * len(expected) == 10
  assert sorted(map(str, served[:5])) == expected
  assert sorted(map(str, served[5:])) == expected


def test_jsonl_rows_are_numbered_as_iter_jsonl(tmp_path):
  (tmp_path / "x").mkdir()
  path = tmp_path / "x" / "train.jsonl"
  rows = [{"i": i, "text": t} for i, t in enumerate(
      ["a", "b\u2028c", "d\u0085", "e", "f"])]
  enc = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
  # CRLF, blank lines, a lone CR, whitespace-only lines, no final newline.
  path.write_bytes(enc[0] + b"\r\n\r\n" + enc[1] + b"\r" + enc[2] +
                   b"\n  \t\n\xc2\xa0\n" + enc[3] + b"\n\n" + enc[4])
  expected = list(p3_rows.iter_jsonl(str(path)))
  assert [r for _, r in expected] == rows
  offsets = p3_rows._line_offsets(str(path))
  assert len(offsets) == len(rows)
  reader = p3_rows.RowReader(p3_rows.P3Dataset("x"), str(tmp_path))
  assert reader.num_rows("train") == len(rows)
  assert reader.rows_at("train", [4, 0, 2, 1, 3]) == [
      rows[4], rows[0], rows[2], rows[1], rows[3]]


def test_first_batch_renders_few_blocks(two_p3_datasets, monkeypatch):
  calls = []
  render = p3_tasks._TaskSpec.render_block

  def counting(self, split, indices, *args, **kwargs):
    calls.append(len(indices))
    return render(self, split, indices, *args, **kwargs)

  monkeypatch.setattr(p3_tasks._TaskSpec, "render_block", counting)
  it = pipeline.get_dataset("t0_train", "train", LENGTHS, batch_size=4)
  next(it)
  it.close()
  # 4 tasks of 5-11 rows, repeated. seqio's 1000-example shuffle after
  # tokenization rendered each of them 100-200 times before its first example;
  # now the 128 examples of the first tokenization mini-batch need ~20 calls.
  num_tasks = len(pipeline.get_provider("t0_train").tasks)
  assert len(calls) <= 15 * num_tasks


def test_p3_training_tasks_are_shuffled_by_their_source_only(
    two_p3_datasets):
  task = pipeline.get_provider("p3_toyds_sub_generate")
  assert task.shuffle_buffer_size is None
  source = task.source.get_dataset("train", shuffle=True, seed=4)
  served = task.get_dataset(LENGTHS, "train", shuffle=True, seed=4,
                            trim_output_features=False)
  assert [e[F.EXAMPLE_ID] for e in _examples(source)] == [
      e[F.EXAMPLE_ID] for e in _examples(served)]
  score_eval = pipeline.get_provider("p3_toyds_sub_is_about_score_eval")
  assert score_eval.shuffle_buffer_size == 1000


def test_closed_iterator_ends(two_p3_datasets):
  it = pipeline.get_dataset("t0_train", "train", LENGTHS, batch_size=4)
  next(it)
  it.close()
  with pytest.raises(StopIteration):
    next(it)
  assert it not in pipeline._OPEN_ITERATORS
