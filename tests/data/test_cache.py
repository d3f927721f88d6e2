"""The preprocessing cache on real data: parity with the uncached pipeline,
seeking, seqio's reader, evaluation records, re-runs.

The real data is ``../shared/data``: the SNI copy (``sni_def_pos_2_train``) and,
for ``t0_train``, the shared promptsource templates of SuperGLUE COPA (12
template tasks; WSC too in the benchmark) with the shared rows serving as the
train split (the shared copy holds validation rows only). Built once per module,
t0_train by two worker processes.
"""
import logging
import os
import shutil

import numpy as np
import pytest
import seqio

from hyper_tasks.data import cache
from hyper_tasks.data import cache_writer
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_tasks
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import registry

LENGTHS = {"hyper_inputs": 64, "inputs": 32, "targets": 16}
BATCH = 8
NAMES = ("t0_train", "sni_def_pos_2_train")
SAMPLE = (p3_rows.P3Dataset("super_glue", "copa"),)


def register_real(shared: str, p3_data: str) -> None:
  """The real SNI tasks and a t0_train of the shared P3 sample (the workers
  register with this too)."""
  vocab = os.path.join(shared, "t5_vocab", "spiece.model")
  register.register_all(sni_dir=os.path.join(shared, "sni"), vocabulary=vocab,
                        sni_allow_missing_tasks=True)
  p3_tasks.register_t0(os.path.join(shared, "p3", "promptsource_templates"),
                       p3_data, vocabulary=vocab, train_datasets=SAMPLE,
                       eval_datasets=SAMPLE[:1], shots=())


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("cache_real")
  p3_data = root / "p3"
  for name in ("copa",):
    folder = p3_data / "super_glue" / name
    folder.mkdir(parents=True)
    for split in ("train", "validation"):
      shutil.copy(shared_data / "p3" / "super_glue" / name /
                  "validation.hf_format.jsonl",
                  folder / f"{split}.hf_format.jsonl")
  kwargs = dict(shared=str(shared_data), p3_data=str(p3_data))
  register_real(**kwargs)
  out = str(root / "cache")
  # t0_train's template tasks in two worker processes, a task per job; the
  # SNI task in three interleaved shards, in this process.
  built = cache_writer.build_cache(
      "t0_train", out, LENGTHS, workers=2, register_fn=register_real,
      register_kwargs=kwargs, splits=("train",))
  built.update(cache_writer.build_cache("sni_def_pos_2_train", out, LENGTHS,
                                        workers=0, splits=("train",),
                                        num_shards=3))
  yield out, built, kwargs
  registry.unregister_all()


def _batches(name, n, batch_size=BATCH, **kwargs):
  it = pipeline.get_dataset(name, "train", LENGTHS, batch_size, **kwargs)
  out = [next(it) for _ in range(n)] if n else list(it)
  it.close()
  return out


def _assert_same(a, b):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      assert x[key].dtype == y[key].dtype
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_build_covers_every_member_task(real):
  out, built, _ = real
  members = {t.name for t in pipeline.tasks_of("t0_train")}
  assert len(members) > 10
  assert set(built) == members | {"sni_def_pos_2_train"}
  for name in built:
    directory = cache.task_dir(out, name)
    assert os.path.exists(os.path.join(directory, cache.COMPLETED))
    info = cache.read_json(seqio.utils.get_cached_info_path(directory, "train"))
    assert info["num_shards"] == (3 if name.startswith("sni") else 1)
    assert sum(info["hyper_tasks"]["shard_records"]) == built[name]["train"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_cached_batches_equal_uncached_for_20_steps(real, name, caplog):
  out = real[0]
  with caplog.at_level(logging.INFO):
    cached = _batches(name, 20, seed=3, cache_dirs=[out])
  assert "read from the preprocessing cache" in caplog.text
  uncached = _batches(name, 20, seed=3, cache_dirs=[], seekable_order=True)
  _assert_same(cached, uncached)
  # Another seed, another order.
  other = _batches(name, 1, seed=4, cache_dirs=[out])
  assert not np.array_equal(other[0]["encoder_input_tokens"],
                            cached[0]["encoder_input_tokens"])


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_step_10_seeks_to_the_same_batches(real, name):
  out = real[0]
  full = _batches(name, 20, seed=3, cache_dirs=[out])
  _assert_same(_batches(name, 10, seed=3, cache_dirs=[out], start_batch=10),
               full[10:])
  # Two hosts, each its half of every global batch, resumed at step 10.
  halves = [_batches(name, 3, BATCH // 2, seed=3, cache_dirs=[out],
                     start_batch=10, shard_id=i, num_shards=2)
            for i in range(2)]
  for step in range(3):
    for key in full[0]:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]),
          full[10 + step][key])


def test_cache_content_equals_seqio_pipeline_in_source_order(real):
  """Unshuffled, one epoch: the cached task gives the batches of today's
  (seqio) pipeline, for the SNI task and two P3 template tasks."""
  out = real[0]
  p3 = sorted(t.name for t in pipeline.tasks_of("t0_train"))
  for name in ["sni_def_pos_2_train", p3[0], p3[-1]]:
    kwargs = dict(shuffle=False, num_epochs=1, drop_remainder=False)
    cached = _batches(name, 0, cache_dirs=[out], **kwargs)
    _assert_same(cached, _batches(name, 0, cache_dirs=[], **kwargs))


def test_seqio_reads_the_cache(real):
  out = real[0]
  directory = cache.task_dir(out, "sni_def_pos_2_train")
  source = seqio.dataset_providers._CachedDataSource(directory, "train")  # pylint: disable=protected-access
  theirs = sorted(tuple(ex["inputs"].tolist()) + (-1,) +
                  tuple(ex["hyper_inputs"].tolist())
                  for ex in source.get_dataset("train", shuffle=False)
                  .as_numpy_iterator())
  split = cache.CachedSplit(directory, "train")
  ours = sorted(tuple(ex["inputs"].tolist()) + (-1,) +
                tuple(ex["hyper_inputs"].tolist()) for ex in
                pipeline.seekable.read_cached_examples(split, None))
  assert len(theirs) == split.num_examples > 0
  assert theirs == ours


@pytest.mark.usefixtures("clean_gin")
def test_evaluation_records_from_the_cache_equal_uncached(real, caplog):
  """Also a rank-classification task: its answer-choice rows, in order."""
  import gin  # pylint: disable=g-import-not-at-top
  out = real[0]
  rank = pipeline.tasks_of("t0_eval_score_eval")[0].name
  cache_writer.build_cache(rank, out, LENGTHS, workers=0)
  p3 = sorted(t.name for t in pipeline.tasks_of("t0_train"))[0]
  for name, split in (("sni_def_pos_2_train", "train"), (p3, "train"),
                      (rank, "validation")):
    uncached = pipeline.load_examples(name, split, None, LENGTHS)
    gin.bind_parameter("hyper_tasks.data.input_cache.cache_dirs", [out])
    with caplog.at_level(logging.INFO):
      cached = pipeline.load_examples(name, split, None, LENGTHS)
    gin.clear_config()
    assert "data cache: read" in caplog.text
    assert cached == uncached and len(cached) > 0


def test_rerun_on_a_complete_cache_does_nothing(real):
  out, built, kwargs = real

  def mtimes():
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(out) for f in fs}

  before = mtimes()
  again = cache_writer.build_cache(
      "|".join(NAMES), out, LENGTHS, workers=2, register_fn=register_real,
      register_kwargs=kwargs, splits=("train",), num_shards=5)
  assert again == built
  assert mtimes() == before


def test_other_lengths_are_refused(real):
  out = real[0]
  other = dict(LENGTHS, inputs=48)
  with pytest.raises(cache.CacheMismatchError) as e:
    pipeline.get_dataset("sni_def_pos_2_train", "train", other, BATCH,
                         cache_dirs=[out])
  assert cache.task_dir(out, "sni_def_pos_2_train") in str(e.value)
  assert "'sequence_lengths'" in str(e.value)
