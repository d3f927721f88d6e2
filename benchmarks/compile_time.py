"""Compile time and compiled temporary memory of the train step, per remat / scan.

    python benchmarks/compile_time.py                    # t5_1_1/base, batch 2, 128/32
    python benchmarks/compile_time.py --size base --record

The plain T5 train step (loss gradient + dual Adafactor update, dropout on) is
lowered from abstract shapes (nothing allocated) and compiled for one CPU device
for each variant, side by side in one process: unrolled layers with remat none /
minimal / full, and ``scan_layers`` with remat none / full. Reported: lowering +
compile seconds and XLA's ``memory_analysis()`` temporary bytes; the target is
scan's compile time <= 1/3 of the unscanned step's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "Compile time and temporary memory of the train step: remat and scan"
VARIANTS = (("none", False), ("minimal", False), ("full", False), ("none", True),
            ("full", True))
MIB = 1024 ** 2


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="base")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=32)
  p.add_argument("--record", action="store_true")
  return p.parse_args(argv)


def compile_step(size, remat, scan, batch, inputs, targets) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hyper_tasks.models.builders import make_model  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train.optimizers import adafactor_dual  # pylint: disable=g-import-not-at-top
  model = make_model("t5_1_1", size, hypernet="none", dropout_rate=0.1,
                     remat_policy=remat, scan_layers=scan)
  shapes = {"encoder_input_tokens": (batch, inputs),
            "decoder_input_tokens": (batch, targets)}
  key = jax.random.key(0, impl="rbg")
  start = time.perf_counter()
  params = jax.eval_shape(lambda k: model.get_initial_variables(
      k, shapes, boxed=False)["params"], key)
  opt = adafactor_dual()
  opt_state = jax.eval_shape(opt.init, params)
  tokens = lambda n: jax.ShapeDtypeStruct((batch, n), jnp.int32)
  data = {"encoder_input_tokens": tokens(inputs),
          "decoder_input_tokens": tokens(targets),
          "decoder_target_tokens": tokens(targets),
          "decoder_loss_weights": tokens(targets)}

  def step(params, opt_state, batch, rng):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, rng)[0])(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

  compiled = jax.jit(step).lower(params, opt_state, data, key).compile()
  seconds = time.perf_counter() - start
  return {"remat": remat, "scan": scan, "seconds": seconds,
          "temp": compiled.memory_analysis().temp_size_in_bytes}


def main(argv=None):
  args = parse_args(argv)
  machine = common.machine_description()
  print(f"machine: {machine}")
  results = []
  for remat, scan in VARIANTS:
    r = compile_step(args.size, remat, scan, args.batch, args.inputs, args.targets)
    print(f"remat {remat}, scan {scan}: {r['seconds']:.1f} s, temp "
          f"{r['temp'] / MIB:.1f} MiB", flush=True)
    results.append(r)
  plain = results[0]["seconds"]
  rows = [[r["remat"], "yes" if r["scan"] else "no", f"{r['seconds']:.1f}",
           f"{r['seconds'] / plain:.2f}x", f"{r['temp'] / MIB:.1f} MiB"]
          for r in results]
  table = common.markdown_table(
      ["remat", "scan_layers", "lower + compile (s)", "vs unrolled, no remat",
       "temporaries"], rows)
  scan_ratio = next(r for r in results if r["scan"] and r["remat"] == "none")[
      "seconds"] / plain
  summary = (f"scan / unrolled compile time: {scan_ratio:.2f}x (target <= 0.33x: "
             f"{'met' if scan_ratio <= 1 / 3 else 'not met'})")
  print(table)
  print(summary)
  if args.record:
    lines = [f"`python benchmarks/compile_time.py {' '.join(argv or sys.argv[1:])}`",
             "", f"- Machine: {machine}.",
             f"- t5_1_1/{args.size}, plain T5 train step (gradient + dual "
             f"Adafactor), batch {args.batch}, {args.inputs}/{args.targets} tokens, "
             "lowered from abstract shapes and compiled for one CPU device, the "
             "variants one after another in one process (the first also pays "
             "one-off tracing warm-up).",
             common.load_note("loaded: compile times are inflated; the ratio "
                              "is indicative"),
             "", table, "", summary]
    common.replace_section(f"{SECTION}, t5_1_1/{args.size}", "\n".join(lines))


if __name__ == "__main__":
  main()
