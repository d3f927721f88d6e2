"""Peak host memory while restoring an HF T5 checkpoint, now vs the previous path.

    python benchmarks/hf_load_memory.py                  # t5_1_1/small
    python benchmarks/hf_load_memory.py --size base --record

A random T5.1.1 checkpoint of ``--size`` is written as an HF directory
(``model.safetensors``, float32) and restored into a train state (plain T5, dual
Adafactor, one CPU device) in two fresh processes, side by side:

  * params: the parameters only (``initial_restore.load_params`` with
    shardings: the evaluation path), each tensor placed as it is read;
  * now: the trainer's path (``initial_restore.restore_initial`` with
    ``FreshInit``): tensors checked from the headers and read one at a time as
    they are placed; no random initialisation of the model first;
  * previous: what the trainer did before: the whole file read into numpy
    (``hf.load_t5``), the whole model randomly initialised, then placed.

Memory is the process's resident set (``/proc/self/status`` ``VmRSS``), sampled
every 2 ms by a thread; reported: the peak and the end above the RSS just before
the restore (jax and the compiled functions already loaded), as multiples of the
checkpoint's size. On a CPU backend the placed parameters live in host memory,
so the floor is about 1.0x (the parameters themselves) plus the optimizer state.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "Peak host memory of an HF checkpoint restore"
MIB = 1024 ** 2


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="small")
  p.add_argument("--record", action="store_true")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--path", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _rss() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


class _Peak:
  """Samples the RSS on a thread; ``peak`` is the highest seen."""

  def __init__(self):
    self.peak, self._stop = _rss(), threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _rss())
      time.sleep(0.002)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss())


def _setup(size):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from hyper_tasks.models import builders  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import optimizers  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import train_state as ts_lib  # pylint: disable=g-import-not-at-top
  model = builders.make_model("t5_1_1", size, hypernet="none", dropout_rate=0.0)
  opt = optimizers.adafactor_dual()
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  shapes = ts_lib.init_input_shapes({"hyper_inputs": 8, "inputs": 8,
                                     "targets": 8})
  layout = ts_lib.make_layout(model, opt, mesh, shapes)
  return model, opt, layout, shapes


def write_checkpoint(size: str, path: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from hyper_tasks.convert import hf  # pylint: disable=g-import-not-at-top
  model, _, _, shapes = _setup(size)
  params = jax.device_get(jax.jit(lambda k: model.get_initial_variables(
      k, shapes, boxed=False)["params"])(jax.random.PRNGKey(0)))
  hf.save_t5(params, model.config, path)
  return os.path.getsize(os.path.join(path, "model.safetensors"))


def worker(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from hyper_tasks.convert import hf  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import initial_restore  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import train_state as ts_lib  # pylint: disable=g-import-not-at-top
  model, opt, layout, shapes = _setup(args.size)
  init = ts_lib.make_init_fn(model, opt, layout, shapes)
  cfg = initial_restore.InitialRestore(path=args.path, format="hf",
                                       optimizer_state="fresh")
  before = _rss()
  start = time.perf_counter()
  with _Peak() as peak:
    if args.worker == "now":
      state, _, _ = initial_restore.restore_initial(
          cfg, opt, layout, initial_restore.FreshInit(
              init, jax.random.PRNGKey(0), opt, layout))
    elif args.worker == "params":
      state, _ = initial_restore.load_params(
          args.path, layout.abstract.params, "hf",
          shardings=layout.shardings.params)
    else:
      _, params = hf.load_t5(args.path)
      fresh = init(jax.random.PRNGKey(0))
      state = fresh.replace(params=ts_lib.place(params, layout.shardings.params))
      del params, fresh
    jax.block_until_ready(state)
  return {"path": args.worker, "seconds": time.perf_counter() - start,
          "peak": peak.peak - before, "end": _rss() - before}


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  machine = common.machine_description()
  print(f"machine: {machine}")
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "hf")
    size = write_checkpoint(args.size, path)
    print(f"checkpoint: t5_1_1/{args.size}, {size / MIB:.1f} MiB", flush=True)
    for which in ("params", "now", "previous"):
      results.append(common.run_worker(
          __file__, [f"--worker={which}", f"--path={path}", f"--size={args.size}"],
          dict(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")))
  rows = [[r["path"], f"{r['peak'] / MIB:.0f} MiB", f"{r['peak'] / size:.2f}x",
           f"{r['end'] / MIB:.0f} MiB", f"{r['end'] / size:.2f}x",
           f"{r['seconds']:.1f} s"] for r in results]
  table = common.markdown_table(
      ["restore", "peak above start", "peak / checkpoint", "end above start",
       "end / checkpoint", "time"], rows)
  print(table)
  if args.record:
    lines = [f"`python benchmarks/hf_load_memory.py {' '.join(argv or sys.argv[1:])}`",
             "", f"- Machine: {machine}.",
             f"- Checkpoint: random t5_1_1/{args.size}, float32 safetensors, "
             f"{size / MIB:.1f} MiB; restored into a plain-T5 train state (dual "
             "Adafactor, optimizer state fresh) on one CPU device, each path in its "
             "own process. RSS sampled every 2 ms; 'end' is what stays resident "
             "(the placed parameters and the optimizer state).",
             common.load_note("loaded: times are slow; memory is not affected"),
             "", table]
    common.replace_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
  main()
