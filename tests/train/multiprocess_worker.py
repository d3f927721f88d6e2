"""One process of a multi-process (``jax.distributed`` on localhost) test run.

``python -m tests.train.multiprocess_worker --process_id I --num_processes N
--port P --devices D --model_dir DIR --num_steps S1[,S2] [--preempt_at_step K]
[--eval]``: joins the cluster (when N > 1) with ``D`` fake CPU devices in this
process, and trains the tiny HINT on the toy tasks (the real seqio pipeline,
instruction groups of 2) on a 2 x 2 ``data x model`` mesh up to step ``S1``
(resuming whatever ``DIR`` holds); with ``--eval`` evaluates the state it
reached on two toy tasks (sharded: batches over the data axis); then, with
``S2``, trains on to ``S2`` in the same process. ``--preempt_at_step K``: the
last process sends itself SIGTERM after step K (a preempted host); the hosts
agree to stop at the next sync step (``preemption_sync_period=2``), save and
return. Process 0 prints ``RESULT {json}``: per phase the losses, step and a
digest of the parameters; the report.
"""
import argparse
import json
import os
import signal
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--num_steps", default="6")
  parser.add_argument("--preempt_at_step", type=int, default=0)
  parser.add_argument("--eval", action="store_true")
  args = parser.parse_args(argv)

  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                             f"{args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from tests.train import train_testlib as lib  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import partitioning  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    partitioning.maybe_initialize_distributed(
        f"localhost:{args.port}", args.num_processes, args.process_id,
        initialization_timeout=120)
  lib.enable_compilation_cache()
  from hyper_tasks.data import toy  # pylint: disable=g-import-not-at-top
  from hyper_tasks.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train import optimizers, train_config, trainer  # pylint: disable=g-import-not-at-top

  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.device_count() == 4, jax.devices()
  toy.register_toy()
  model = lib.tiny_hint(dropout_rate=0.0)
  mesh = partitioning.make_mesh((2, 2))

  def preempt(step, state, metrics):
    del state, metrics
    if step == args.preempt_at_step and (jax.process_index()
                                         == jax.process_count() - 1):
      os.kill(os.getpid(), signal.SIGTERM)

  def train(num_steps):
    return trainer.train(
        model=model, model_dir=args.model_dir, mixture_or_task_name="toy_train",
        num_steps=num_steps, batch_size=8, sequence_lengths=lib.TOY_LENGTHS,
        optimizer=optimizers.adafactor_dual(backbone_lr=1e-2, hypernet_lr=1e-2),
        batching=train_config.Batching(instruction_group_size=2),
        parallelism=train_config.Parallelism(mesh=mesh),
        checkpointing=train_config.Checkpointing(
            period=2, keep=10, async_save=False, preemption_sync_period=2),
        summaries=train_config.Summaries(period=1, progress=False),
        hooks=[preempt] if args.preempt_at_step else [])

  def digest(params):
    leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True))
              for x in jax.tree.leaves(params)]
    return [[float(np.sum(x, dtype=np.float64))] + x.ravel()[:16].astype(float)
            .tolist() for x in leaves]

  out = {"phases": []}
  for i, num_steps in enumerate(int(n) for n in args.num_steps.split(",")):
    result = train(num_steps)
    out["phases"].append({
        "step": int(result.state.step), "preempted": bool(result.preempted),
        "losses": [float(h["loss"]) for h in result.history],
        "params": digest(result.state.params)})
    if i == 0 and args.eval:
      report = evaluator.evaluate_many(
          model, result.state.params,
          ["toy_test_heldout_op", "toy_test_heldout_phrasing"], batch_size=4,
          max_examples=6, sequence_lengths=lib.TOY_LENGTHS, progress=False,
          mesh=mesh, step=int(result.state.step))
      report.pop("seconds")
      out["eval"] = report
  if jax.process_index() == 0:
    print("RESULT " + json.dumps(out, default=str), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
