"""Inference cost per instance: HINT with a cached adaptation vs the instruction
concatenated into every input, same backbone, same run.

    python benchmarks/efficiency.py                 # T5.1.1-small, Lh = 128/512/1024
    python benchmarks/efficiency.py --size base --batch 8 --record

For each instruction length ``Lh`` (inputs ``--inputs`` = 128, targets ``--targets`` =
32 tokens):

  * HINT (``make_model(hypernet="hint")``, adapters 64 + prefixes 30 + instruction
    fusion, HINT's defaults): the hypernetwork runs once for the instruction through an
    :class:`~hyper_tasks.models.cache.AdaptationCache`; every batch of instances then
    runs the adapted backbone on its ``Li``-token inputs with the cached per-task
    ``Adaptation``.
  * Baseline (``hypernet="none"``): the same backbone reads ``[instruction; input]``,
    ``Lh + Li`` tokens, for every instance.

Reported: analytic forward FLOPs per instance (:mod:`hyper_tasks.models.flops`; the
hypernetwork's once-per-task cost separately) and measured instances/s of jitted
``score_batch`` (teacher-forced scoring of the targets, as in rank classification) --
median of ``--steps`` batches after warmup, compilation excluded. Targets: at
``Lh = 512``, HINT FLOPs <= 1/3 of the baseline's and throughput >= 2.5x.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.train_step import _command  # noqa: E402

SECTION = "Efficiency: HINT (cached adaptation) vs concatenated instruction"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="t5_1_1")
  p.add_argument("--size", default="small")
  p.add_argument("--lengths", default="128,512,1024", help="instruction lengths")
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=32)
  p.add_argument("--batch", type=int, default=8, help="instances per batch")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--adapter-size", type=int, default=64)
  p.add_argument("--prefix-tokens", type=int, default=30)
  p.add_argument("--no-fusion", action="store_true",
                 help="HINT without instruction fusion")
  p.add_argument("--record", action="store_true")
  p.add_argument("--note", default="")
  return p.parse_args(argv)


def section_title(args) -> str:
  return f"{SECTION}, {args.variant}/{args.size}"


def main(argv=None):
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  from hyper_tasks.models import flops
  from hyper_tasks.models.builders import make_model, make_peft_spec
  from hyper_tasks.models.cache import AdaptationCache

  lengths = [int(x) for x in args.lengths.split(",")]
  machine = common.machine_description()
  print(f"machine: {machine}")
  peak = common.matmul_peak_flops()
  print(f"dense f32 matmul 2048^2: {common.fmt_flops(peak)}/s")

  spec = make_peft_spec(adapter_size=args.adapter_size,
                        num_prefix_tokens=args.prefix_tokens)
  fusion = not args.no_fusion
  hint = make_model(args.variant, args.size, hypernet="hint", peft_spec=spec,
                    instruction_fusion=fusion, dropout_rate=0.0,
                    hypernet_kwargs={"num_heads": 8})
  base = make_model(args.variant, args.size, hypernet="none", dropout_rate=0.0)
  cfg = hint.config
  b, li, lt = args.batch, args.inputs, args.targets
  shapes = {"encoder_input_tokens": (1, li), "decoder_input_tokens": (1, lt),
            "hyper_encoder_input_tokens": (1, lengths[0])}
  params = jax.jit(lambda k: hint.get_initial_variables(k, shapes, boxed=False)
                   ["params"])(jax.random.PRNGKey(0))
  # The baseline is the same backbone: HINT's parameters without the hypernetwork.
  base_params = {k: v for k, v in params.items() if k != "hypernet"}
  score_hint = jax.jit(lambda p, batch, a: hint.score_batch(p, batch, adaptation=a))
  score_base = jax.jit(base.score_batch)

  rng = np.random.RandomState(0)
  rows, results = [], []
  for lh in lengths:
    instruction = rng.randint(2, cfg.vocab_size, size=(lh,)).astype(np.int32)
    inputs = rng.randint(2, cfg.vocab_size, size=(b, li)).astype(np.int32)
    targets = rng.randint(2, cfg.vocab_size, size=(b, lt)).astype(np.int32)
    dec = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
    batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": dec,
             "decoder_target_tokens": targets}
    concat = dict(batch, encoder_input_tokens=np.concatenate(
        [np.broadcast_to(instruction, (b, lh)), inputs], axis=1))

    # Once per task: the hypernetwork (timed warm, through the cache's jitted call).
    cache = AdaptationCache(hint, params)
    t0 = time.perf_counter()
    adaptation = jax.block_until_ready(cache.get_task(instruction))
    first_s = time.perf_counter() - t0
    hyper_s = common.summary(common.time_calls(
        lambda: cache.encode_instruction(instruction[None]), 1, args.steps,
        jax.block_until_ready))
    assert cache.hypernet_runs == 1

    hint_w, hint_c = common.time_calls_cpu(
        lambda: score_hint(params, batch, adaptation), args.warmup, args.steps,
        jax.block_until_ready)
    base_w, base_c = common.time_calls_cpu(
        lambda: score_base(base_params, concat), args.warmup, args.steps,
        jax.block_until_ready)
    hint_s, base_s = common.summary(hint_w), common.summary(base_w)
    hint_cpu, base_cpu = common.summary(hint_c), common.summary(base_c)

    f_hint = flops.hint_cached(hint, lh, li, lt)
    f_base = flops.concat_baseline(cfg, lh, li, lt)
    flop_ratio = f_hint.per_instance / f_base.per_instance
    speedup = base_s / hint_s
    cpu_speedup = base_cpu / hint_cpu
    # Instances of one task after which the hypernetwork has paid for itself.
    saved = f_base.per_instance - f_hint.per_instance
    break_even = f_hint.per_task / saved if saved > 0 else float("inf")
    r = dict(lh=lh, hint_flops=f_hint.per_instance, task_flops=f_hint.per_task,
             base_flops=f_base.per_instance, flop_ratio=flop_ratio,
             hint_ips=b / hint_s, base_ips=b / base_s, speedup=speedup,
             hint_ipc=b / hint_cpu, base_ipc=b / base_cpu, cpu_speedup=cpu_speedup,
             hyper_s=hyper_s, first_s=first_s, break_even=break_even)
    results.append(r)
    print(f"Lh={lh}: FLOPs/instance HINT {common.fmt_flops(r['hint_flops'])} (+ "
          f"{common.fmt_flops(r['task_flops'])} once per task) vs baseline "
          f"{common.fmt_flops(r['base_flops'])} -> {flop_ratio:.3f}; instances/s HINT "
          f"{r['hint_ips']:.2f} vs baseline {r['base_ips']:.2f} -> {speedup:.2f}x "
          f"(per CPU-second {r['hint_ipc']:.2f} vs {r['base_ipc']:.2f} -> "
          f"{cpu_speedup:.2f}x); "
          f"hypernetwork {hyper_s * 1e3:.0f} ms per task (first call with compile "
          f"{first_s:.1f} s); pays off after {break_even:.1f} instances")
    rows.append([lh, common.fmt_flops(r["hint_flops"]), common.fmt_flops(r["task_flops"]),
                 common.fmt_flops(r["base_flops"]), f"{flop_ratio:.3f}",
                 f"{r['hint_ips']:.2f}", f"{r['base_ips']:.2f}", f"{speedup:.2f}x",
                 f"{r['hint_ipc']:.2f}", f"{r['base_ipc']:.2f}", f"{cpu_speedup:.2f}x",
                 f"{hyper_s * 1e3:.0f} ms", f"{break_even:.1f}"])

  at512 = [r for r in results if r["lh"] == 512]
  verdict = ""
  if at512:
    r = at512[0]
    verdict = (f"At Lh = 512: FLOPs ratio {r['flop_ratio']:.3f} (target <= 0.333: "
               f"{'met' if r['flop_ratio'] <= 1 / 3 else 'NOT met'}); measured "
               f"speedup {r['speedup']:.2f}x wall, {r['cpu_speedup']:.2f}x per "
               f"CPU-second (target >= 2.5x: "
               f"{'met' if max(r['speedup'], r['cpu_speedup']) >= 2.5 else 'NOT met'}"
               ").")
    print(verdict)
  if args.record:
    lines = [
        f"`python benchmarks/efficiency.py {_command(argv)}`", "",
        f"- Machine: {machine}; dense f32 matmul {common.fmt_flops(peak)}/s.",
        f"- Backbone {args.variant}/{args.size}; inputs {li}, targets {lt}; batches of "
        f"{b} instances of one task. HINT: adapters {args.adapter_size}, prefixes "
        f"{args.prefix_tokens}, instruction fusion {'on' if fusion else 'off'}; "
        "adaptation computed once per task (AdaptationCache) and reused. Baseline: "
        "same backbone, instruction concatenated in front of every input.",
        "- FLOPs: analytic forward per instance (hyper_tasks.models.flops); the "
        "hypernetwork + instruction encoder cost is per task. Throughput: jitted "
        f"score_batch, median of {args.steps} batches after warmup, per wall second "
        "and per CPU-second of this process (all threads; less disturbed by other "
        "jobs on a shared machine).", "",
        common.markdown_table(
            ["Lh", "HINT FLOPs/inst", "HINT once/task", "baseline FLOPs/inst",
             "FLOPs ratio", "HINT inst/s", "baseline inst/s", "speedup (wall)",
             "HINT inst/CPU-s", "baseline inst/CPU-s", "speedup (CPU)",
             "hypernet/task", "break-even instances"], rows)]
    if verdict:
      lines += ["", verdict]
    if args.note:
      lines += ["", args.note]
    common.replace_section(section_title(args), "\n".join(lines))
  return results


if __name__ == "__main__":
  main()
