"""The preprocessing cache on the embedded tasks: refusals, damaged directories,
a worker dying mid-write, resuming a build, a token-level (C4-style) task, and
the seekable order itself."""
import os

import numpy as np
import pytest
import seqio

from hyper_tasks.data import cache
from hyper_tasks.data import cache_writer
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import seekable
from hyper_tasks.data import sni_tasks

LENGTHS = {"hyper_inputs": 48, "inputs": 24, "targets": 8}
TASK = "esni_def_train"


@pytest.fixture(autouse=True)
def embedded():
  register.register_embedded()
  yield
  registry.unregister_all()


def _build(root, **kwargs):
  kwargs = dict(dict(workers=0, splits=("train",), num_shards=2), **kwargs)
  return cache_writer.build_cache(TASK, str(root), LENGTHS, **kwargs)


def _first_batch(root, lengths=LENGTHS):
  it = pipeline.get_dataset(TASK, "train", lengths, 4, cache_dirs=[str(root)])
  batch = next(it)
  it.close()
  return batch


def _files(directory):
  return {os.path.relpath(os.path.join(d, f), directory):
          open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(directory) for f in fs
          if not f.startswith("hyper_tasks.")}


def test_another_vocabulary_is_refused(tmp_path):
  _build(tmp_path)
  # The same task registered with a byte vocabulary of other extra ids.
  sni_tasks.register_embedded_sni(vocabulary=seqio.ByteVocabulary(extra_ids=10))
  for call in (lambda: _first_batch(tmp_path), lambda: _build(tmp_path)):
    with pytest.raises(cache.CacheMismatchError) as e:
      call()
    assert cache.task_dir(str(tmp_path), TASK) in str(e.value)
    assert "'vocabulary'" in str(e.value)


def test_other_lengths_are_refused(tmp_path):
  _build(tmp_path)
  for call in (lambda: _first_batch(tmp_path, dict(LENGTHS, targets=16)),
               lambda: cache_writer.build_cache(
                   TASK, str(tmp_path), dict(LENGTHS, targets=16), workers=0)):
    with pytest.raises(cache.CacheMismatchError, match="'sequence_lengths'"):
      call()


def test_a_changed_task_is_refused(tmp_path):
  _build(tmp_path)
  sni_tasks.register_sni(sni_tasks.EMBEDDED_SNI_DIR, prefix="esni",
                         max_instances_per_task=5)  # Another registration key.
  with pytest.raises(cache.CacheMismatchError, match="'fingerprint'"):
    _first_batch(tmp_path)


def test_damaged_directories_are_clear_errors(tmp_path):
  _build(tmp_path)
  directory = cache.task_dir(str(tmp_path), TASK)
  info_path = os.path.join(directory, "info.train.json")
  info = cache.read_json(info_path)
  cache.write_json(info_path, dict(info, num_shards=3))
  with pytest.raises(cache.CacheError, match="'num_shards' is 3"):
    _first_batch(tmp_path)
  cache.write_json(info_path, info)
  shard = cache.shard_path(directory, "train", 1, 2)
  data = open(shard, "rb").read()
  with open(shard, "wb") as f:
    f.write(data[:-10])
  with pytest.raises(cache.CacheError, match="does not match its offsets"):
    _first_batch(tmp_path)
  os.remove(shard)
  with pytest.raises(cache.CacheError) as e:
    _first_batch(tmp_path)
  assert shard in str(e.value) and "missing" in str(e.value)
  os.remove(os.path.join(directory, cache.COMPLETED))
  with pytest.raises(cache.CacheError, match="incomplete"):
    _first_batch(tmp_path)


def test_a_worker_dying_mid_write_is_named_and_the_build_resumes(
    tmp_path, monkeypatch):
  monkeypatch.setenv(cache_writer.EXIT_AFTER_ENV, f"{TASK}:3")
  with pytest.raises(cache_writer.CacheWorkerError) as e:
    _build(tmp_path / "a", workers=1, register_fn=register.register_embedded)
  message = str(e.value)
  assert "died with exit code 17" in message and "run the command again" in message
  directory = cache.task_dir(str(tmp_path / "a"), TASK)
  assert cache.shard_path(directory, "train", 0, 2) in message
  # The partial cache is never read as complete.
  with pytest.raises(cache.CacheError, match="incomplete"):
    _first_batch(tmp_path / "a")
  monkeypatch.delenv(cache_writer.EXIT_AFTER_ENV)
  _build(tmp_path / "a", workers=1, register_fn=register.register_embedded)
  _build(tmp_path / "b")
  assert _files(directory) == _files(cache.task_dir(str(tmp_path / "b"), TASK))


def test_an_interrupted_build_writes_only_the_missing_shards(tmp_path):
  built = _build(tmp_path)
  directory = cache.task_dir(str(tmp_path), TASK)
  keep = cache.shard_path(directory, "train", 0, 2)
  before = os.stat(keep).st_mtime_ns
  # As if interrupted while writing shard 1: no marker, a partial file.
  os.remove(cache.marker_path(directory, "train", 1, 2))
  os.remove(os.path.join(directory, cache.COMPLETED))
  with open(cache.shard_path(directory, "train", 1, 2) + ".partial", "wb") as f:
    f.write(b"junk")
  # workers and num_shards of the first run are kept (2 shards).
  assert _build(tmp_path, num_shards=7) == built
  assert os.stat(keep).st_mtime_ns == before
  assert os.path.exists(os.path.join(directory, cache.COMPLETED))
  _first_batch(tmp_path)


@pytest.mark.parametrize("options", [
    dict(instruction_group_size=2), dict(pack=True), dict(num_shards=2)])
def test_groups_packing_and_host_slices_from_the_cache(tmp_path, options):
  """The same batches as uncached in the seekable order, from any start_batch
  (groups and packing skip batches; unpacked host slices seek)."""
  _build(tmp_path)

  def batches(n, start_batch=0, **kwargs):
    it = pipeline.get_dataset(TASK, "train", LENGTHS, 4, seed=2,
                              start_batch=start_batch, **kwargs)
    out = [next(it) for _ in range(n)]
    it.close()
    return out

  shards = options.pop("num_shards", 1)
  cached = [batches(6, shard_id=i, num_shards=shards, cache_dirs=[str(tmp_path)],
                    **options) for i in range(shards)]
  uncached = [batches(6, shard_id=i, num_shards=shards, cache_dirs=[],
                      seekable_order=True, **options) for i in range(shards)]
  resumed = [batches(3, 3, shard_id=i, num_shards=shards,
                     cache_dirs=[str(tmp_path)], **options)
             for i in range(shards)]
  for i in range(shards):
    for x, y, z in zip(cached[i], uncached[i], [None] * 3 + resumed[i]):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
        if z is not None:
          np.testing.assert_array_equal(x[key], z[key])
  if shards > 1:  # The hosts' slices make the one-host global batches.
    it = pipeline.get_dataset(TASK, "train", LENGTHS, 4 * shards, seed=2,
                              cache_dirs=[str(tmp_path)])
    whole = next(it)
    it.close()
    for key in whole:
      np.testing.assert_array_equal(
          np.concatenate([cached[i][0][key] for i in range(shards)]),
          whole[key])


def test_uncached_tasks_are_logged_and_read_uncached(tmp_path, caplog):
  with caplog.at_level("INFO"):
    batch = _first_batch(tmp_path)
  assert "NOT in the preprocessing cache" in caplog.text
  assert batch["encoder_input_tokens"].shape == (4, LENGTHS["inputs"])


@pytest.mark.usefixtures("clean_gin")
def test_a_token_level_task_caches_in_concatenated_shards(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  name = "embedded_pretrain"  # C4-style cutting: several records per document.
  # Its validation split: 19 records from several documents.
  cache_writer.build_cache(name, str(tmp_path / "two"), LENGTHS, workers=0,
                           splits=("validation",), num_shards=2)
  info = cache.read_json(os.path.join(cache.task_dir(str(tmp_path / "two"), name),
                                      "info.validation.json"))
  assert info["hyper_tasks"]["order"] == cache.CONCATENATED
  cache_writer.build_cache(name, str(tmp_path / "one"), LENGTHS, workers=0,
                           splits=("validation",), num_shards=1)
  kwargs = dict(shuffle=False, num_epochs=1, drop_remainder=False)
  batches = [list(pipeline.get_dataset(name, "validation", LENGTHS, 8,
                                       cache_dirs=dirs, **kwargs))
             for dirs in ([str(tmp_path / "one")], [])]
  assert len(batches[0]) == len(batches[1]) > 1
  for x, y in zip(*batches):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  uncached = pipeline.load_examples(name, "validation", None, LENGTHS)
  gin.bind_parameter("hyper_tasks.data.input_cache.cache_dirs",
                     [str(tmp_path / "one")])
  assert pipeline.load_examples(name, "validation", None, LENGTHS) == uncached
  # Two shards: the same records, shard after shard.
  gin.bind_parameter("hyper_tasks.data.input_cache.cache_dirs",
                     [str(tmp_path / "two")])
  two = pipeline.load_examples(name, "validation", None, LENGTHS)
  key = lambda r: sorted(r.items())
  assert two != uncached and sorted(two, key=key) == sorted(uncached, key=key)


def _stream(order, start, n):
  tasks, examples = [], []
  for t, e in order.chunks(start):
    tasks.append(t)
    examples.append(e)
    if sum(map(len, tasks)) >= n:
      break
  return np.concatenate(tasks)[:n], np.concatenate(examples)[:n]


def test_mixture_order_seeks_anywhere_and_samples_by_rate():
  order = seekable.Order(["a", "b", "c"], [5, 50, 7], [1.0, 2.0, 1.0],
                         shuffle=True, seed=3, num_epochs=None)
  n = seekable.BLOCK + 5000
  tasks, examples = _stream(order, 0, n)
  for start in (1, 4999, seekable.BLOCK - 3, seekable.BLOCK + 17):
    t, e = _stream(order, start, 2000)
    np.testing.assert_array_equal(t, tasks[start:start + 2000])
    np.testing.assert_array_equal(e, examples[start:start + 2000])
  counts = np.bincount(tasks, minlength=3) / n
  np.testing.assert_allclose(counts, [0.25, 0.5, 0.25], atol=0.01)
  # Every epoch of a task is a permutation of its examples.
  a = examples[tasks == 0]
  for epoch in range(3):
    assert sorted(a[5 * epoch:5 * epoch + 5]) == list(range(5))


def test_finite_epochs_give_every_example_that_many_times():
  order = seekable.Order(["a", "b"], [3, 40], [1.0, 1.0], shuffle=True, seed=0,
                         num_epochs=2)
  chunks = list(order.chunks(0))
  tasks = np.concatenate([t for t, _ in chunks])
  examples = np.concatenate([e for _, e in chunks])
  for t, size in ((0, 3), (1, 40)):
    assert sorted(examples[tasks == t]) == sorted(list(range(size)) * 2)
  tail = list(order.chunks(50))
  np.testing.assert_array_equal(np.concatenate([e for _, e in tail]),
                                examples[50:])
