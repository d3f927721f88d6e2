"""Per-device memory of a T5.1.1-XL train step with FSDP over 8 devices (compile only).

    python benchmarks/xl_memory.py                       # remat none and full
    python benchmarks/xl_memory.py --remat full --record

The real XL configuration (``t5_1_1/xl``: 24+24 layers, d_model 2048, d_ff 5120,
32 heads, vocabulary 32128) is built abstractly and its train step (loss gradient
+ dual Adafactor) lowered and compiled for 8 fake CPU devices as an FSDP mesh
(``data`` 8: parameters and optimizer state split over all 8, batch split over
``data``), through the trainer's own ``--check --compile`` path
(``preflight.train_report``): nothing is allocated or run. Reported per device:
parameters + optimizer state (from the shardings), and XLA's
``memory_analysis()`` of the compiled step (arguments, outputs, temporaries).
Each remat policy runs in its own process (the fake device count must be set
before jax starts). The 16 GiB target is for batch 8 x 1024 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "T5.1.1-XL train step memory, FSDP over 8 devices (compile only)"
GIB = 1024 ** 3


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="xl")
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=1024)
  p.add_argument("--targets", type=int, default=128)
  p.add_argument("--remat", default="none,full")
  p.add_argument("--scan", action="store_true",
                 help="scan_layers: one nn.scan per stack (compiles the full depth "
                 "quickly)")
  p.add_argument("--layers", default="",
                 help="comma-separated layer counts per stack to compile instead of "
                 "the full depth (e.g. 2,4); the per-device memory is then "
                 "extrapolated linearly to the real depth (an unrolled XL step "
                 "takes over 30 min to compile on a 2-core CPU)")
  p.add_argument("--record", action="store_true")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def worker(args) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from hyper_tasks.models import builders  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import optimizers, preflight, train_config, trainer  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == args.devices, jax.devices()
  overrides = ({"num_encoder_layers": int(args.layers),
                "num_decoder_layers": int(args.layers)} if args.layers else None)
  model = builders.make_model("t5_1_1", args.size, hypernet="none", dropout_rate=0.0,
                              remat_policy=args.remat, dtype="float32",
                              config_overrides=overrides,
                              scan_layers=args.scan)
  lengths = {"hyper_inputs": 8, "inputs": args.inputs, "targets": args.targets}

  def batches(start_batch=0, shard_id=0, num_shards=1, batch_size=8):
    del start_batch, shard_id, num_shards
    ones = lambda n: np.ones((batch_size, n), np.int32)
    while True:
      yield {"hyper_encoder_input_tokens": ones(8),
             "encoder_input_tokens": ones(args.inputs),
             "decoder_input_tokens": ones(args.targets),
             "decoder_target_tokens": ones(args.targets),
             "decoder_loss_weights": ones(args.targets)}

  start = time.perf_counter()
  report = trainer.train(
      model=model, model_dir=tempfile.mkdtemp(), mixture_or_task_name="synthetic",
      num_steps=1, batch_size=args.batch, sequence_lengths=lengths,
      optimizer=optimizers.adafactor_dual(),
      parallelism=train_config.Parallelism(mesh_shape=(args.devices, 1),
                                           fsdp=True),
      dataset_fn=batches, check=preflight.CheckOptions(compile=True))
  values = report.values
  mem = values["memory_analysis"]
  return {"remat": args.remat + (", scan" if args.scan else ""),
          "seconds": time.perf_counter() - start,
          "layers": model.config.num_encoder_layers,
          "params": sum(values["params_per_group"].values()),
          "param_bytes": values["param_bytes_per_device"],
          "opt_bytes": values["opt_bytes_per_device"], "memory": mem,
          "lines": report.format()}


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  machine = common.machine_description()
  print(f"machine: {machine}")
  results = []
  base = [f"--size={args.size}", f"--devices={args.devices}",
          f"--batch={args.batch}", f"--inputs={args.inputs}",
          f"--targets={args.targets}"] + (["--scan"] if args.scan else [])
  depths = args.layers.split(",") if args.layers else [""]
  for policy, depth in [(p, d) for p in args.remat.split(",") for d in depths]:
    result = common.run_worker(
        __file__, ["--worker", f"--remat={policy}", f"--layers={depth}", *base],
        dict(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}"))
    print(result["lines"], flush=True)
    results.append(result)
  from hyper_tasks.models.config import preset  # pylint: disable=g-import-not-at-top
  depth = preset("t5_1_1", args.size).num_encoder_layers

  def total(r):
    m = r["memory"]
    return (m.get("argument_size_in_bytes", 0) + m.get("output_size_in_bytes", 0)
            - m.get("alias_size_in_bytes", 0) + m.get("temp_size_in_bytes", 0))

  def fields(r):
    return (r["param_bytes"] + r["opt_bytes"],
            r["memory"].get("argument_size_in_bytes", 0),
            r["memory"].get("temp_size_in_bytes", 0), total(r))

  rows = []
  for r in results:
    state, args_b, temp, tot = fields(r)
    rows.append([r["remat"], r["layers"], f"{r['params'] / 1e9:.2f}B",
                 f"{state / GIB:.2f} GiB", f"{args_b / GIB:.2f} GiB",
                 f"{temp / GIB:.2f} GiB", f"{tot / GIB:.2f} GiB",
                 f"{r['seconds']:.0f} s"])
  # Linear in depth: extrapolate two compiled depths to the real one.
  for policy in sorted({r["remat"] for r in results}):
    runs = sorted((r for r in results if r["remat"] == policy),
                  key=lambda r: r["layers"])
    if len(runs) >= 2 and runs[-1]["layers"] != depth:
      a, b = runs[0], runs[-1]
      per = [(y - x) / (b["layers"] - a["layers"])
             for x, y in zip(fields(a), fields(b))]
      est = [y + p * (depth - b["layers"]) for y, p in zip(fields(b), per)]
      n = a["params"] + (b["params"] - a["params"]) / (b["layers"] - a["layers"]) * (
          depth - a["layers"])
      rows.append([policy, f"{depth} (extrapolated)", f"{n / 1e9:.2f}B"]
                  + [f"{x / GIB:.2f} GiB" for x in est]
                  + [("under" if est[3] < 16 * GIB else "over") + " 16 GiB"])
  table = common.markdown_table(
      ["remat", "layers per stack", "parameters", "params + optimizer / device",
       "arguments / device", "temporaries / device", "total / device",
       "build + lower + compile"], rows)
  print(table)
  if args.record:
    lines = [f"`python benchmarks/xl_memory.py {' '.join(argv or sys.argv[1:])}`",
             "", f"- Machine: {machine}.",
             f"- t5_1_1/{args.size}, float32 parameters and compute, dual Adafactor, "
             f"batch {args.batch} x {args.inputs} input + {args.targets} target "
             f"tokens, FSDP mesh data={args.devices} (fake CPU devices), compiled "
             "through the trainer's `--check --compile`; nothing allocated. "
             "Total = arguments + outputs - aliased (donated state) + temporaries.",
             common.load_note("loaded: compile times are slow"),
             "", table]
    common.replace_section(SECTION + (", scan_layers" if args.scan else ""),
                           "\n".join(lines))


if __name__ == "__main__":
  main()
