"""Shared benchmark helpers: the machine, its measured matmul peak, timing, RESULTS.md.

Every benchmark prints and records the machine it ran on and the dense matmul FLOP/s
measured in the same process, so "fraction of peak" means the same thing on a
laptop, a shared CI box or a GPU. ``replace_section`` rewrites one ``## <title>``
section of ``benchmarks/RESULTS.md`` and leaves the others (other benchmarks' results)
alone.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Callable, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def memory_gib() -> Optional[float]:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal"):
          return int(line.split()[1]) / 2 ** 20
  except OSError:
    pass
  return None


def machine_description() -> str:
  """One line: accelerator(s) or CPU, cores, memory, library versions, load."""
  import jax
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  parts = [f"jax {jax.__version__} on {jax.default_backend()} ({len(devices)} x {kind})",
           f"CPU {cpu_name()}, {usable_cores()} usable cores"]
  mem = memory_gib()
  if mem:
    parts.append(f"{mem:.0f} GiB RAM")
  try:
    import torch
    parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
  except ImportError:
    pass
  if hasattr(os, "getloadavg"):
    parts.append("load avg at start {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()))
  return "; ".join(parts)


def time_calls(fn: Callable[[], object], warmup: int = 1, steps: int = 3,
               sync: Callable[[object], object] = lambda x: x) -> list[float]:
  """Wall seconds of ``steps`` calls of ``fn`` after ``warmup`` calls.

  ``sync`` makes the result concrete (e.g. ``jax.block_until_ready``), so
  asynchronous dispatch is not mistaken for speed.
  """
  for _ in range(warmup):
    sync(fn())
  out = []
  for _ in range(steps):
    t = time.perf_counter()
    sync(fn())
    out.append(time.perf_counter() - t)
  return out


def time_calls_cpu(fn: Callable[[], object], warmup: int = 1, steps: int = 3,
                   sync: Callable[[object], object] = lambda x: x
                   ) -> tuple[list[float], list[float]]:
  """Like :func:`time_calls`, also returning the process CPU seconds (all threads)
  of each call. On a machine shared with other jobs, work per CPU-second is far less
  disturbed than wall time, so ratios between two programs are best taken on it."""
  for _ in range(warmup):
    sync(fn())
  wall, cpu = [], []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    sync(fn())
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return wall, cpu


def summary(seconds: list[float]) -> float:
  """The median: robust to one step disturbed by other load on a shared machine."""
  return statistics.median(seconds)


def matmul_peak_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
  """Dense matmul FLOP/s of this machine, measured with jax: ``[n, n] @ [n, n]``.

  The best of ``repeats`` timed calls after a warmup (peak, not typical).
  """
  import jax
  import jax.numpy as jnp
  key = jax.random.PRNGKey(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  times = time_calls(lambda: f(a, b), warmup=2, steps=repeats,
                     sync=jax.block_until_ready)
  return 2.0 * n ** 3 / min(times)


def nominal_peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """The chip's data-sheet dense peak for ``dtype`` (bfloat16 only), else None.

  CPUs and float32 compute have no single meaningful nominal peak (vector width,
  TF32 modes), so "fraction of peak" there uses the measured matmul rate instead.
  """
  if dtype not in ("bfloat16", "bf16"):
    return None
  # The trainer's table (its MFU summaries use the same numbers).
  from hyper_tasks.train.summaries import table_peak_flops  # pylint: disable=g-import-not-at-top
  return table_peak_flops(device_kind)


def torch_matmul_peak_flops(n: int = 2048, repeats: int = 5) -> Optional[float]:
  """The same measurement through torch (float32), or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  a, b = torch.randn(n, n), torch.randn(n, n)
  times = time_calls(lambda: a @ b, warmup=2, steps=repeats)
  return 2.0 * n ** 3 / min(times)


def fmt_flops(x: float) -> str:
  for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9),
                      ("MFLOP", 1e6)):
    if x >= scale:
      return f"{x / scale:.2f} {unit}"
  return f"{x:.0f} FLOP"


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def replace_section(title: str, body: str, path: str = RESULTS) -> None:
  """Write ``## title`` + ``body`` into ``path``, replacing that section if present.

  A section runs from its ``## `` heading to the next ``## `` heading (or the end).
  Other sections are kept verbatim; a missing file is created with a short header.
  """
  text = ""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  if not text.strip():
    text = ("# Benchmark results\n\nEach section is written by the benchmark named in "
            "it; rerun that benchmark to refresh it.\n")
  section = f"## {title}\n\n{body.strip()}\n"
  pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)",
                       re.MULTILINE | re.DOTALL)
  if pattern.search(text):
    text = pattern.sub(lambda _: section + "\n", text, count=1)
  else:
    text = text.rstrip("\n") + "\n\n" + section
  with open(path, "w") as f:
    f.write(text.rstrip("\n") + "\n")


def load_note(loaded_note: str = "loaded: other jobs shared the machine") -> str:
  """``- Load average at the end: a/b/c on N usable cores`` and, above N, a note."""
  load = os.getloadavg()
  cores = usable_cores()
  return (f"- Load average at the end: {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on "
          f"{cores} usable cores" + (f" ({loaded_note})." if load[0] > cores else "."))


def run_worker(script: str, args: list[str], env: dict) -> dict:
  """Runs ``python script --worker ... args`` in a fresh process (settings such as
  the fake device count must precede jax's start) and returns the JSON it printed
  after ``RESULT ``; exits with its stderr when it failed."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, os.path.abspath(script), *args],
                        env=dict(os.environ, **env), capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.exit(proc.stderr[-4000:])
  return json.loads(lines[-1][len("RESULT "):])
