"""Evaluation throughput on one device vs a sharded mesh of fake CPU devices.

    python benchmarks/eval_sharded.py                # 1 device vs 8 (4 data x 2 model)
    python benchmarks/eval_sharded.py --record

The shared Super-NaturalInstructions test tasks (``../shared/data/sni``, the real
T5 vocabulary) are evaluated by a tiny HINT (adapters, instruction fusion, random
parameters), greedy decoding, twice in separate processes (the fake device count
must be set before jax starts): on one CPU device, and on ``--devices`` fake CPU
devices as a ``--mesh`` data x model mesh (parameters placed by the training
rules, batches split over data; ``EvalOptions.mesh``). Reported: examples/s of
each (a second, timed pass after a warmup pass that compiles) and whether the
two reports are equal. On a 2-core CPU the fake devices share the same cores:
this measures the cost of sharding's bookkeeping, not a speedup.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "Evaluation throughput: one device vs a sharded mesh"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"hyper_inputs": 256, "inputs": 128, "targets": 32}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared",
                                                "data"))
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--mesh", default="4,2", help="data,model")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--max_examples", type=int, default=16, help="per task")
  p.add_argument("--max_decode_length", type=int, default=16)
  p.add_argument("--record", action="store_true")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def worker(args) -> dict:
  """One configuration in this process (``XLA_FLAGS`` set by the parent)."""
  import jax  # pylint: disable=g-import-not-at-top
  from hyper_tasks.data import register  # pylint: disable=g-import-not-at-top
  from hyper_tasks.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from hyper_tasks.models import builders  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import partitioning  # pylint: disable=g-import-not-at-top

  register.register_all(
      sni_dir=os.path.join(args.data, "sni"),
      vocabulary=os.path.join(args.data, "t5_vocab", "spiece.model"),
      sni_allow_missing_tasks=True)
  model = builders.make_model(
      hypernet="hint", size="tiny", vocab_size=32128, dropout_rate=0.0,
      peft_spec=builders.make_peft_spec(adapter_size=16), instruction_fusion=True)
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8),
            "hyper_encoder_input_tokens": (1, 8)}
  boxed = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes)["params"],
                         jax.random.PRNGKey(0))
  params = jax.jit(lambda k: model.get_initial_variables(k, shapes, boxed=False)
                   ["params"])(jax.random.PRNGKey(0))
  mesh = None
  if jax.device_count() > 1:
    mesh = partitioning.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
    params = jax.device_put(params, partitioning.params_shardings(boxed, mesh))

  def run():
    start = time.perf_counter()
    rep = evaluator.evaluate(
        model, params, "sni_def_test", split="test", sequence_lengths=LENGTHS,
        batch_size=args.batch, max_examples=args.max_examples,
        max_decode_length=args.max_decode_length, progress=False, mesh=mesh)
    return rep, time.perf_counter() - start

  run()  # Compiles.
  rep, seconds = run()
  rep.pop("seconds")
  return {"devices": jax.device_count(), "examples": rep["num_examples"],
          "seconds": seconds, "report": rep}


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  if not os.path.isdir(os.path.join(args.data, "sni")):
    sys.exit(f"No SNI data under {args.data}.")
  machine = common.machine_description()
  print(f"machine: {machine}")
  results = []
  for devices in (1, args.devices):
    args_list = [a for a in (argv if argv is not None else sys.argv[1:])
                 if a != "--record"]
    results.append(common.run_worker(__file__, ["--worker", *args_list], dict(
        JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")))
  one, sharded = results
  same = one["report"] == sharded["report"]
  rows = [[f"{r['devices']} device{'s' if r['devices'] > 1 else ''}"
           + (f" ({args.mesh.replace(',', ' data x ')} model)"
              if r["devices"] > 1 else ""),
           r["examples"], f"{r['seconds']:.2f}",
           f"{r['examples'] / r['seconds']:.1f}"] for r in results]
  table = common.markdown_table(["mesh", "examples", "seconds", "examples/s"], rows)
  ratio = ((sharded["examples"] / sharded["seconds"])
           / (one["examples"] / one["seconds"]))
  summary = (f"sharded / one device: {ratio:.2f}x; reports equal: "
             f"{'yes' if same else 'NO'}")
  print(table)
  print(summary)
  if args.record:
    lines = [f"`python benchmarks/eval_sharded.py {' '.join(argv or sys.argv[1:])}`",
             "", f"- Machine: {machine}.",
             f"- Tiny HINT (adapters 16, instruction fusion, random parameters, "
             f"real T5 vocabulary), the shared SNI test tasks (`sni_def_test`, "
             f"at most {args.max_examples} examples per task), lengths "
             f"{LENGTHS['hyper_inputs']}/{LENGTHS['inputs']}/{LENGTHS['targets']}, "
             f"greedy to {args.max_decode_length} tokens, batch {args.batch}; "
             "the second of two passes (the first compiles).",
             common.load_note(),
             "- The fake devices share the same 2 cores: the sharded run measures "
             "the overhead of splitting batches and gathering outputs, not a "
             "speedup; on real devices each holds its shard.",
             "", table, "", summary]
    common.replace_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
  main()
