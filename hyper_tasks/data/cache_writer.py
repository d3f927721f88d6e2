"""``hyper-tasks cache``: render, tokenize and write tasks into the cache.

``build_cache(pattern, output_dir, sequence_lengths, workers=N)`` writes every
registered task whose name matches ``pattern`` (a mixture's match brings its
member tasks) in the layout of ``cache.py``, one shard per job, in ``N`` spawned
worker processes (``0``: in this process). Each worker registers the sources
again (``register_fn(**register_kwargs)``, by default ``register_all``), renders
its shard with the task's own source and preprocessors (unshuffled, untrimmed:
the examples ``task_datasets.task_dataset(shuffle=False)`` gives) and writes it
under a temporary name, renamed when whole; its offsets and its completion
marker follow.

Re-running on a complete cache does nothing; an interrupted run resumes with
the shards that have no marker (the number of shards is fixed by the first
run's settings file, whatever ``workers`` is now); a cache directory holding
another vocabulary, other lengths or a changed task is refused
(``cache.CacheMismatchError``). A worker that dies is reported with the shard
it was writing (``CacheWorkerError``); ``COMPLETED`` is written only when every
shard of every split asked for is complete.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import re
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from hyper_tasks.data import cache
from hyper_tasks.data import features as F
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import task_datasets

# Test hook: "<task name>:<n>" makes a worker exit abruptly after writing n
# records of that task (a worker dying mid-write).
EXIT_AFTER_ENV = "HYPER_TASKS_CACHE_TEST_EXIT_AFTER"


class CacheWorkerError(RuntimeError):
  """A worker process died or failed while writing a shard."""


@dataclasses.dataclass(frozen=True)
class Job:
  task: str
  split: str
  index: int
  num_shards: int
  directory: str
  fingerprint: str


def tasks_matching(pattern: str) -> list[seqio.Task]:
  """Registered tasks whose name, or whose mixture's name, matches ``pattern``
  (a regular expression matched against the whole name)."""
  regex = re.compile(pattern)
  names = registry.registered_names()
  chosen: dict[str, seqio.Task] = {}
  for name in names["mixtures"]:
    if regex.fullmatch(name):
      for task in seqio.get_mixture_or_task(name).tasks:
        chosen.setdefault(task.name, task)
  for name in names["tasks"]:
    if regex.fullmatch(name):
      chosen.setdefault(name, seqio.get_mixture_or_task(name))
  if not chosen:
    raise ValueError(f"--tasks={pattern!r} matches no registered task or mixture "
                     f"({len(names['tasks'])} tasks, {len(names['mixtures'])} "
                     f"mixtures registered; e.g. {names['mixtures'][:8]}).")
  return [chosen[n] for n in sorted(chosen)]


def shard_dataset(task: seqio.Task, split: str,
                  sequence_lengths: Mapping[str, int], index: int = 0,
                  num_shards: int = 1) -> tf.data.Dataset:
  """The records of shard ``index`` of ``num_shards``: source examples ``index,
  index + num_shards, ...`` (one-to-one tasks: the source's examples, then
  sharded; others: sharded at the source), preprocessed (with ``<feature>_pretokenized`` copies
  of a text-level task's strings), untrimmed."""
  source = task.source
  if num_shards == 1:
    ds = source.get_dataset(split=split, shuffle=False)
  elif cache.is_one_to_one(task):
    # Sharded after the source (which may drop rows it cannot render), so
    # record r of shard k is example r * n + k of the task's order.
    ds = source.get_dataset(split=split, shuffle=False).shard(num_shards, index)
  elif source.supports_arbitrary_sharding:
    ds = source.get_dataset(split=split, shuffle=False,
                            shard_info=seqio.ShardInfo(index, num_shards))
  else:
    ds = source.get_dataset(split=split, shuffle=False).shard(num_shards, index)
  preps = list(task.preprocessors)
  cut = next((i for i, p in enumerate(preps) if task_datasets.is_tokenizer(p)),
             None)
  with seqio.utils.map_seed_manager(None):
    if cut is not None and registry.is_text_level(task.name):
      ds = task._preprocess_dataset(  # pylint: disable=protected-access
          ds, preps[:cut], sequence_length=sequence_lengths)
      ds = ds.map(_with_pretokenized, num_parallel_calls=tf.data.AUTOTUNE)
      preps = preps[cut:]
    ds = task._preprocess_dataset(  # pylint: disable=protected-access
        ds, preps, sequence_length=sequence_lengths)
  return task._validate_preprocessing(ds)  # pylint: disable=protected-access


def _with_pretokenized(ex):
  out = dict(ex)
  for key in F.TOKEN_FEATURES:
    if key in ex:
      out[key + cache.PRETOKENIZED] = ex[key]
  return out


def serialize(example: Mapping[str, Any]) -> bytes:
  """A numpy example (1-D int arrays, scalars, bytes) as a tf.train.Example."""
  feature = {}
  for key, value in example.items():
    value = np.asarray(value)
    if value.ndim > 1:
      raise ValueError(f"Feature {key!r} has shape {value.shape}; the cache "
                       "stores scalars and 1-D sequences.")
    flat = value.reshape(-1).tolist()
    if value.dtype.kind in "iub":
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=flat))
    elif value.dtype.kind == "f":
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
    else:
      feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[v if isinstance(v, bytes) else str(v).encode() for v in flat]))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString(
          deterministic=True)  # Map keys sorted: the same bytes in any process.


def feature_spec(example: Mapping[str, Any]) -> dict[str, dict]:
  """seqio's info-file feature descriptions of an example."""
  spec = {}
  for key, value in example.items():
    value = np.asarray(value)
    dtype = "string" if value.dtype.kind in "SOU" else value.dtype.name
    spec[key] = {"shape": [None] if value.ndim else [], "dtype": dtype}
  return spec


def write_shard(task: seqio.Task, split: str, sequence_lengths: Mapping[str, int],
                index: int, num_shards: int, directory: str) -> dict[str, Any]:
  """Writes one shard, its offsets and its completion marker; returns the
  marker's contents."""
  exit_after = _exit_after(task.name)
  path = cache.shard_path(directory, split, index, num_shards)
  partial = f"{path}.partial"
  offsets, spec = [0], None
  tokens = {k: 0 for k in F.TOKEN_FEATURES}
  vocabulary = task.output_features[F.TARGETS].vocabulary
  with tf.io.TFRecordWriter(partial) as writer:
    for example in shard_dataset(task, split, sequence_lengths, index,
                                 num_shards).as_numpy_iterator():
      data = serialize(example)
      writer.write(data)
      offsets.append(offsets[-1] + cache.RECORD_HEAD + len(data)
                     + cache.RECORD_TAIL)
      spec = spec or feature_spec(example)
      for key in tokens:
        if key in example:
          ids = example[key]
          tokens[key] += int(np.count_nonzero(
              (ids != vocabulary.eos_id) & (ids != vocabulary.pad_id)))
      if exit_after is not None and len(offsets) - 1 >= exit_after:
        writer.flush()
        os._exit(17)  # pylint: disable=protected-access
  os.replace(partial, path)
  np.save(cache.marker_path(directory, split, index, num_shards,
                            "offsets.tmp.npy"), np.asarray(offsets, np.int64))
  os.replace(cache.marker_path(directory, split, index, num_shards,
                               "offsets.tmp.npy"),
             cache.marker_path(directory, split, index, num_shards,
                               "offsets.npy"))
  marker = {"records": len(offsets) - 1, "bytes": offsets[-1],
            "tokens": tokens, "features": spec}
  cache.write_json(cache.marker_path(directory, split, index, num_shards),
                   marker)
  return marker


def _exit_after(task_name: str) -> Optional[int]:
  value = os.environ.get(EXIT_AFTER_ENV, "")
  name, _, count = value.rpartition(":")
  return int(count) if value and name == task_name else None


def _run_job(job: Job, sequence_lengths: Mapping[str, int]) -> dict[str, Any]:
  task = seqio.get_mixture_or_task(job.task)
  found = cache.fingerprint(task, job.split)
  if found != job.fingerprint:
    raise CacheWorkerError(
        f"Worker registered task {job.task!r} differently from the parent "
        f"(fingerprint {found} vs {job.fingerprint}); pass the same sources.")
  return write_shard(task, job.split, sequence_lengths, job.index,
                     job.num_shards, job.directory)


def _worker(worker: int, register_fn, register_kwargs, sequence_lengths, jobs,
            results) -> None:
  """A worker process: registers the sources, then writes the shards it is
  sent, one at a time, until it is sent None."""
  logging.basicConfig(level=logging.WARNING)
  register_fn(**register_kwargs)
  while True:
    item = jobs.get()
    if item is None:
      return
    number, job = item
    try:
      results.put(("done", worker, number, _run_job(job, sequence_lengths)))
    except Exception:  # pylint: disable=broad-except
      results.put(("error", worker, number, traceback.format_exc()))


def _describe_job(job: Job) -> str:
  return (f"task {job.task!r} split {job.split!r} shard {job.index} of "
          f"{job.num_shards} ({cache.shard_path(job.directory, job.split, job.index, job.num_shards)})")


def _run_in_processes(jobs: Sequence[Job], workers: int, register_fn,
                      register_kwargs: Mapping[str, Any],
                      sequence_lengths: Mapping[str, int]) -> None:
  """Runs ``jobs`` in ``workers`` spawned processes. The parent hands each
  worker one job at a time, so it knows the shard a dead worker was writing."""
  context = multiprocessing.get_context("spawn")
  results = context.Queue()
  queues = [context.Queue() for _ in range(min(workers, len(jobs)))]
  processes = [context.Process(
      target=_worker, args=(w, register_fn, dict(register_kwargs),
                            dict(sequence_lengths), q, results), daemon=True)
               for w, q in enumerate(queues)]
  running: list[Optional[int]] = [None] * len(queues)
  pending = iter(range(len(jobs)))

  def dispatch(worker: int) -> None:
    number = next(pending, None)
    running[worker] = number
    queues[worker].put(None if number is None else (number, jobs[number]))

  for p in processes:
    p.start()
  for w in range(len(queues)):
    dispatch(w)
  done = 0
  try:
    while done < len(jobs):
      try:
        kind, worker, number, value = results.get(timeout=1.0)
      except queue.Empty:
        for w, p in enumerate(processes):
          if not p.is_alive() and running[w] is not None:
            raise CacheWorkerError(
                f"A cache worker (pid {p.pid}) died with exit code {p.exitcode} "
                f"while writing {_describe_job(jobs[running[w]])}. Shards "
                "already complete are kept; run the command again to resume.")
        continue
      if kind == "error":
        raise CacheWorkerError(f"A cache worker failed while writing "
                               f"{_describe_job(jobs[number])}:\n{value}")
      done += 1
      logging.info("cache: wrote %s (%d records).", _describe_job(jobs[number]),
                   value["records"])
      dispatch(worker)
  finally:
    for p in processes:
      if p.is_alive():
        p.terminate()
      p.join(timeout=10)


def _plan(task: seqio.Task, split: str, sequence_lengths: Mapping[str, int],
          output_dir: str, num_shards: int) -> tuple[str, dict, list[Job]]:
  """(directory, settings, shards still to write) of one task split."""
  directory = cache.task_dir(output_dir, task.name)
  expected = cache.expected_settings(task, split, sequence_lengths)
  info_path = seqio.utils.get_cached_info_path(directory, split)
  if os.path.exists(info_path):
    cache.check_settings(cache.read_json(info_path).get("hyper_tasks") or {},
                         expected, directory)
    return directory, expected, []
  settings_file = cache.settings_path(directory, split)
  if os.path.exists(settings_file):
    settings = cache.read_json(settings_file)
    cache.check_settings(settings, expected, directory)
  else:
    one_to_one = cache.is_one_to_one(task)
    rank = registry.evaluation_mode(task.name) == registry.RANK
    settings = dict(expected, order=(cache.INTERLEAVED if one_to_one
                                     else cache.CONCATENATED),
                    num_shards=1 if rank else max(1, num_shards))
    os.makedirs(os.path.join(directory, "shards"), exist_ok=True)
    cache.write_json(settings_file, settings)
  n = int(settings["num_shards"])
  jobs = [Job(task.name, split, k, n, directory, expected["fingerprint"])
          for k in range(n)
          if not (os.path.exists(cache.marker_path(directory, split, k, n)) and
                  os.path.exists(cache.shard_path(directory, split, k, n)))]
  return directory, settings, jobs


def _finish_split(directory: str, split: str, settings: Mapping[str, Any]) -> int:
  """Writes info and stats from the shards' markers; returns the examples."""
  n = int(settings["num_shards"])
  markers = [cache.read_json(cache.marker_path(directory, split, k, n))
             for k in range(n)]
  counts = [int(m["records"]) for m in markers]
  total = sum(counts)
  order = settings["order"]
  if order == cache.INTERLEAVED and counts != cache.interleaved_counts(total, n):
    raise cache.CacheError(f"{directory}: shards of split {split!r} hold {counts} "
                           "records, not an interleaved split of the source.")
  spec = next((m["features"] for m in markers if m["features"]), {})
  ours = dict(settings, shard_records=counts)
  cache.write_json(seqio.utils.get_cached_info_path(directory, split), {
      "num_shards": n, "features": spec, "seqio_version": seqio.__version__,
      "hyper_tasks": ours})
  stats = {"examples": total}
  for key in F.TOKEN_FEATURES:
    stats[f"{key}_tokens"] = sum(int(m["tokens"].get(key, 0)) for m in markers)
  cache.write_json(seqio.utils.get_cached_stats_path(directory, split), stats)
  return total


def build_cache(pattern: str, output_dir: str,
                sequence_lengths: Mapping[str, int], *, workers: int = 1,
                register_kwargs: Optional[Mapping[str, Any]] = None,
                register_fn: Callable[..., Any] = register.register_all,
                splits: Optional[Sequence[str]] = None,
                num_shards: Optional[int] = None) -> dict[str, dict[str, int]]:
  """Caches every task matching ``pattern``; see the module docstring.

  Args:
    pattern: regular expression over task and mixture names (whole name).
    output_dir: the cache root (``CACHE_DIRS`` entry).
    sequence_lengths: the lengths training and evaluation will use (recorded;
      a reader with other lengths is refused).
    workers: worker processes (0: write in this process).
    register_kwargs: the arguments each worker calls ``register_fn`` with (the
      caller has registered the same tasks).
    register_fn: a module-level function registering the tasks in a worker
      (default ``register.register_all``).
    splits: splits to cache (default: every split of each task).
    num_shards: shards per task split (default: one when at least ``workers``
      task splits are cached, else ``workers``; rank-classification tasks get
      one, so the rows of an example stay together, in order). Fixed by the
      first run: a resumed build keeps it.

  Returns:
    ``{task: {split: examples}}`` of the splits now complete.
  """
  lengths = {k: int(sequence_lengths[k]) for k in F.TOKEN_FEATURES}
  pairs = [(task, split) for task in tasks_matching(pattern)
           for split in task.splits if not splits or split in splits]
  if num_shards is None:  # Parallel over task splits when there are enough.
    num_shards = 1 if len(pairs) >= workers else max(1, workers)
  plans, jobs = [], []
  for task, split in pairs:
    directory, settings, todo = _plan(task, split, lengths, output_dir,
                                      num_shards)
    plans.append((task.name, split, directory, settings, bool(todo)))
    jobs += todo
    if todo and os.path.exists(os.path.join(directory, cache.COMPLETED)):
      os.remove(os.path.join(directory, cache.COMPLETED))
  logging.info("cache: %d task splits under %s, %d shards to write.", len(plans),
               output_dir, len(jobs))
  if jobs and workers > 0:
    _run_in_processes(jobs, workers, register_fn, register_kwargs or {},
                      lengths)
  else:
    for job in jobs:
      _run_job(job, lengths)
  out: dict[str, dict[str, int]] = {}
  for name, split, directory, settings, built in plans:
    info = seqio.utils.get_cached_info_path(directory, split)
    if built or not os.path.exists(info):
      total = _finish_split(directory, split, settings)
    else:
      total = sum(cache.read_json(info)["hyper_tasks"]["shard_records"])
    out.setdefault(name, {})[split] = total
  for directory in {p[2] for p in plans}:
    if not os.path.exists(os.path.join(directory, cache.COMPLETED)):
      with open(os.path.join(directory, cache.COMPLETED), "w") as f:
        f.write("")
  return out
