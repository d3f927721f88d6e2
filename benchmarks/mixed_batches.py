"""Mixed-task batches vs task-by-task batches at inference, same model, same stream.

    python benchmarks/mixed_batches.py                     # t5_1_1/tiny, score + greedy
    python benchmarks/mixed_batches.py --size small --examples 64 --record

A stream of ``--examples`` instances drawn from ``--tasks`` tasks (one instruction
each) in random order runs through a HINT (adapters + LoRA q/v, instruction fusion)
two ways (:mod:`hyper_tasks.evaluation.mixed_batches`):

  * mixed: batches in stream order, per-example adaptations gathered from the
    per-task ``AdaptationCache``;
  * task by task: the stream regrouped by task, one broadcast per-task adaptation
    per batch (the last batch of every task padded).

Reported: examples/s of each (best of ``--repeats`` passes after a warmup pass that
compiles and fills the cache), and whether the outputs are identical.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "Mixed-task batches vs task-by-task batches (inference)"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="t5_1_1")
  p.add_argument("--size", default="tiny")
  p.add_argument("--examples", type=int, default=96)
  p.add_argument("--tasks", type=int, default=12)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--hyper", type=int, default=64, help="instruction length")
  p.add_argument("--inputs", type=int, default=32)
  p.add_argument("--targets", type=int, default=8)
  p.add_argument("--methods", default="score,greedy")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--record", action="store_true")
  p.add_argument("--note", default="")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  import jax
  from hyper_tasks.evaluation import mixed_batches
  from hyper_tasks.models.builders import make_model
  from hyper_tasks.models.peft_spec import AdapterSpec, LoraSpec, PeftSpec

  machine = common.machine_description()
  print(f"machine: {machine}")
  spec = PeftSpec(adapter=AdapterSpec(size=16), lora=LoraSpec(ranks=(("q", 4),
                                                                     ("v", 4))))
  model = make_model(args.variant, args.size, hypernet="hint", peft_spec=spec,
                     instruction_fusion=True, dropout_rate=0.0,
                     hypernet_kwargs={"small_init": 1.0})
  cfg = model.config
  shapes = {"encoder_input_tokens": (1, args.inputs),
            "decoder_input_tokens": (1, args.targets),
            "hyper_encoder_input_tokens": (1, args.hyper)}
  params = jax.jit(lambda k: model.get_initial_variables(k, shapes, boxed=False)
                   ["params"])(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  vocab = cfg.vocab_size

  def tokens(n, length):
    out = rng.integers(2, vocab, (n, length)).astype(np.int32)
    lens = rng.integers(length // 2, length + 1, n)
    out[np.arange(length)[None, :] >= lens[:, None]] = 0
    return out

  instructions = tokens(args.tasks, args.hyper)
  task_of = rng.integers(0, args.tasks, args.examples)
  targets = tokens(args.examples, args.targets)
  dec_in = np.zeros_like(targets)
  dec_in[:, 1:] = targets[:, :-1]
  arrays = {"hyper_encoder_input_tokens": instructions[task_of],
            "encoder_input_tokens": tokens(args.examples, args.inputs),
            "decoder_input_tokens": dec_in, "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.int32)}
  rows = []
  for method in args.methods.split(","):
    out = mixed_batches.benchmark(model, params, arrays, args.batch, method,
                                  max_decode_length=args.targets,
                                  repeats=args.repeats)
    print(out, flush=True)
    rows.append([method, out["examples"], out["instructions"], out["batch_size"],
                 f"{out['mixed_examples_per_s']:.1f}",
                 f"{out['task_by_task_examples_per_s']:.1f}",
                 f"{out['mixed_examples_per_s'] / out['task_by_task_examples_per_s']:.2f}x",
                 ("yes" if out["outputs_equal"] else "NO")
                 + f" (max diff {out['max_abs_diff']:.2g})"])
  table = common.markdown_table(
      ["method", "examples", "tasks", "batch", "mixed ex/s", "task-by-task ex/s",
       "mixed / task-by-task",
       "same outputs (tokens exact, scores 1e-5)"], rows)
  print(table)
  if args.record:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [f"`python benchmarks/mixed_batches.py {' '.join(argv or sys.argv[1:])}`",
             "", f"- Machine: {machine}.",
             f"- Model {args.variant}/{args.size}, HINT (adapters 16, LoRA q/v rank 4,"
             f" instruction fusion), random parameters; lengths {args.hyper}/"
             f"{args.inputs}/{args.targets}; a stream of {args.examples} examples of "
             f"{args.tasks} tasks in random order. Best of {args.repeats} passes "
             "after a warmup pass (compilation and the hypernetwork, which both "
             "ways share through the cache, are not timed).",
             "" if load is None else
             f"- Load average at the end: {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
             f" on {common.usable_cores()} usable cores"
             + (" (loaded: other jobs shared the machine, wall rates are noisy)."
                if load[0] > common.usable_cores() else "."),
             "", table]
    if args.note:
      lines += ["", args.note]
    common.replace_section(f"{SECTION}, {args.variant}/{args.size}",
                           "\n".join(lines))


if __name__ == "__main__":
  main()
