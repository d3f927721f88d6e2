"""Train summaries: averaged step metrics, throughput, FLOPs and MFU, progress line.

Every ``Summaries.period`` steps the trainer hands the accumulated device metrics to
:class:`TrainSummaries`, which averages them, adds

  tokens_per_second, examples_per_second, step_time       (host wall clock;
                                                           tokens = non-padding
                                                           target tokens, the
                                                           loss weights)
  flops_per_second, mfu                                    (model FLOPs utilisation)

writes everything to TensorBoard in ``MODEL_DIR/train`` and prints one progress
line with an ETA. FLOPs per step are model FLOPs (``hyper_tasks.models.flops``: 3x
the forward pass per example), falling back to XLA's cost analysis of the lowered
(unpartitioned) train step, i.e. the whole step over all devices. The peak FLOP/s per device is
configurable; by default it is looked up by ``device_kind`` (dense bfloat16 peaks
of common accelerators) or, on CPU and unknown devices, measured once with a
float32 2048^2 matmul.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.evaluation import tensorboard
from hyper_tasks.models import flops as flops_lib

TRAIN_SUBDIR = "train"

# Dense bfloat16 peak FLOP/s per device, by substring of ``device.device_kind``.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("TPU v2", 45e12),
)
_MEASURED: dict[str, float] = {}


def measure_peak_flops(size: int = 2048, repeats: int = 3) -> float:
  """Best FLOP/s of a float32 ``[size, size]`` matmul on the default device (cached
  per device kind). Smaller matmuls do not reach a CPU's peak (512^2 measures about
  half of it here), which would overstate MFU."""
  kind = jax.devices()[0].device_kind
  if kind in _MEASURED:
    return _MEASURED[kind]
  x = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  _MEASURED[kind] = 2.0 * size ** 3 / max(best, 1e-9)
  return _MEASURED[kind]


def table_peak_flops(device_kind: str) -> Optional[float]:
  """The ``PEAK_FLOPS`` entry matching ``device_kind``, or None."""
  for key, value in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None


def peak_flops_per_device(override: Optional[float] = None) -> float:
  """``override``, else the table value for this device kind, else measured."""
  if override:
    return float(override)
  return table_peak_flops(jax.devices()[0].device_kind) or measure_peak_flops()


def step_flops(lowered: Any, model: Any = None,
               batch_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> float:
  """FLOPs of one train step over all devices (0.0 when unknown).

  Model FLOPs (the MFU convention): ``3 x`` the forward FLOPs of
  ``hyper_tasks.models.flops.model_flops`` per example, times the batch size; the
  hypernetwork counts once per row of ``hyper_encoder_input_tokens`` (every example,
  or every group of ``B / rows`` examples sharing an instruction). Without that
  module (or for a model it does not know), XLA's estimate of the lowered step,
  which also counts elementwise work and the optimizer.

  Args:
    lowered: ``jax.jit(train_step).lower(state, batch)``.
    model: the ``EncoderDecoderModel``.
    batch_shapes: ``{feature: shape}`` of the global batch.
  """
  if model is not None and batch_shapes is not None:
    try:
      b, enc_len = batch_shapes["encoder_input_tokens"]
      dec_len = batch_shapes["decoder_target_tokens"][1]
      hyper = batch_shapes.get("hyper_encoder_input_tokens")
      instr_len = hyper[1] if hyper is not None and model.uses_instruction else 0
      forward = flops_lib.model_flops(model, enc_len, dec_len, instr_len)
      # Grouped instructions (``instruction_group_size``): the hypernetwork runs
      # once per ``[B / g, Lh]`` row, not once per example.
      rows = hyper[0] if instr_len and hyper[0] else b
      return 3.0 * b * float(forward.amortized(b / rows))
    except ImportError:
      pass
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Analytic FLOPs failed (%s); using XLA's estimate.", e)
  try:
    cost = lowered.cost_analysis()
    if isinstance(cost, Sequence):
      cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("No XLA cost analysis (%s); FLOP/s and MFU are not reported.", e)
    return 0.0


def _fmt_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class TrainSummaries:
  """Averages metrics over a summary window and writes them.

  Args:
    model_dir: ``MODEL_DIR``; events go to ``MODEL_DIR/train``.
    num_steps: the run's final step (for the ETA).
    flops_per_step: FLOPs of one step over all devices (0: not reported).
    peak_flops: peak FLOP/s of one device.
    num_devices: devices the step runs on.
    write: write TensorBoard events (False on non-leader hosts).
    progress: print the console progress line.
  """

  def __init__(self, model_dir: str, num_steps: int, flops_per_step: float,
               peak_flops: float, num_devices: int, write: bool = True,
               progress: bool = True):
    self.num_steps = num_steps
    self.flops_per_step = flops_per_step
    self.peak_flops = peak_flops
    self.num_devices = num_devices
    self.progress = progress
    self.writer = (tensorboard.SummaryWriter(os.path.join(model_dir, TRAIN_SUBDIR))
                   if write else None)
    self.history: list[dict[str, float]] = []
    self._window_start = time.perf_counter()

  def reset_clock(self) -> None:
    """Restart the throughput window (e.g. after compilation or evaluation)."""
    self._window_start = time.perf_counter()

  def write(self, step: int, device_metrics: Sequence[Mapping[str, Any]]
            ) -> dict[str, float]:
    """Averages ``device_metrics`` (one dict per step of the window) and logs them.

    Returns:
      The summary written, including ``step``.
    """
    elapsed = time.perf_counter() - self._window_start
    host = jax.device_get(list(device_metrics))
    n = len(host)
    out: dict[str, float] = {}
    for key in host[0]:
      values = np.asarray([float(m[key]) for m in host])
      out[key] = float(values.sum() if key in ("num_tokens", "num_examples")
                       else values.mean())
    step_time = elapsed / max(n, 1)
    out["step_time"] = step_time
    out["tokens_per_second"] = out.pop("num_tokens") / max(elapsed, 1e-9)
    out["examples_per_second"] = out.pop("num_examples") / max(elapsed, 1e-9)
    out.pop("finite", None)
    if self.flops_per_step:
      out["flops_per_second"] = self.flops_per_step / max(step_time, 1e-9)
      if self.peak_flops:
        out["mfu"] = out["flops_per_second"] / (self.peak_flops * self.num_devices)
    if self.writer is not None:
      self.writer.scalars(out, step)
    out["step"] = step
    self.history.append(out)
    if self.progress:
      eta = step_time * (self.num_steps - step)
      mfu = f" | MFU {out['mfu']:.1%}" if "mfu" in out else ""
      print(f"step {step}/{self.num_steps} | loss {out['loss']:.4f} | "
            f"acc {out['accuracy']:.3f} | {out['tokens_per_second']:.0f} tok/s | "
            f"{step_time:.3f} s/step{mfu} | ETA {_fmt_eta(eta)}",
            file=sys.stderr, flush=True)
    self._window_start = time.perf_counter()
    return out

  def text(self, name: str, text: str, step: int) -> None:
    if self.writer is not None:
      self.writer.text(name, text, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
