"""Train-step throughput: our jitted T5 (+ Adafactor) against transformers' PyTorch T5.

One full training step -- forward, backward, optimizer update, dropout on -- of the
same architecture in both frameworks, in the same process, on the same random batch:

    python benchmarks/train_step.py                       # T5.1.1-base, batch 8, 512/128
    python benchmarks/train_step.py --size small --batch 2 --inputs 128 --targets 32
    python benchmarks/train_step.py --hint                # + the full HINT train step

Prints tokens/s (``batch * (inputs + targets)`` per second) for both, their ratio, and
achieved FLOP/s as a fraction of this machine's dense matmul FLOP/s (in the compute
dtype) measured in the same run (``benchmarks.common.matmul_peak_flops``) and, on a
known accelerator in bfloat16, model FLOPs utilisation against its data-sheet peak
(``benchmarks.common.nominal_peak_flops``). Training FLOPs are 3x the
analytic forward count of :mod:`hyper_tasks.models.flops` (backward ~= 2x forward).
``--hint`` adds our HINT step (hypernetwork reading a ``--instruction-len`` instruction
per example, adapters + prefixes, instruction fusion; everything trained with the dual
Adafactor) and reports its overhead over the plain T5 step.

Issue 18 measurements (plain T5 / HINT; no PyTorch):

    python benchmarks/train_step.py --size small --remat-memory   # per remat policy
    python benchmarks/train_step.py --size small --frozen         # frozen groups

``--remat-memory`` compiles the plain T5 train step (loss gradient + Adafactor) under
each ``remat_policy`` and prints XLA's ``memory_analysis()`` (temporary bytes) and
the step time; ``--frozen`` times the HINT step (``step_fn.make_train_step``) with
everything trained, the backbone frozen and only the hypernetwork trained, side by
side in one process.

Step times are medians over ``--steps`` after ``--warmup`` (compilation excluded).
``--record`` rewrites this benchmark's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SECTION = "Train step: ours (JAX) vs transformers (PyTorch)"


def section_title(args, platform: str = "cpu") -> str:
  """One RESULTS.md section per configuration, so a quick run keeps the full one
  (and a GPU or bfloat16 run keeps the CPU float32 one)."""
  title = (f"{SECTION}, {args.variant}/{args.size}, batch {args.batch}, "
           f"{args.inputs}/{args.targets}")
  compute = args.compute_dtype or "float32"
  if platform != "cpu" or compute != "float32":
    title += f", {platform} {compute}"
  return title


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="t5_1_1", help="config preset family")
  p.add_argument("--size", default="base", help="tiny|small|base|large|...")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512, help="encoder length")
  p.add_argument("--targets", type=int, default=128, help="decoder length")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--torch-optimizer", choices=("adafactor", "adamw"),
                 default="adafactor")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--concat", action="store_true",
                 help="with --hint: also the concatenated-instruction baseline (plain "
                 "T5 reading instruction + inputs as one sequence) and HINT / "
                 "concat time ratios")
  p.add_argument("--hint", action="store_true",
                 help="also time the full HINT train step")
  p.add_argument("--instruction-len", type=int, default=256,
                 help="instruction tokens per example for --hint")
  p.add_argument("--instruction-groups", default="1",
                 help="for --hint: comma-separated examples per instruction "
                      "(Batching.instruction_group_size); 1 = one per example")
  p.add_argument("--compute-dtype", default=None,
                 help="e.g. bfloat16 (both of our steps; parameters stay f32)")
  p.add_argument("--record", action="store_true",
                 help="write the results into benchmarks/RESULTS.md")
  p.add_argument("--note", default="", help="extra line for RESULTS.md")
  p.add_argument("--remat-memory", action="store_true",
                 help="only: compiled temp memory and step time per remat policy")
  p.add_argument("--frozen", action="store_true",
                 help="only: HINT step time, all trained vs frozen groups")
  return p.parse_args(argv)


def _batch(args, vocab: int, rng: np.random.RandomState, instruction: int = 0,
           group: int = 1):
  b, li, lt = args.batch, args.inputs, args.targets
  tgt = rng.randint(2, vocab, size=(b, lt)).astype(np.int32)
  out = {"encoder_input_tokens": rng.randint(2, vocab, size=(b, li)).astype(np.int32),
         "decoder_target_tokens": tgt,
         "decoder_input_tokens": np.concatenate(
             [np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1),
         "decoder_loss_weights": np.ones((b, lt), np.float32)}
  if instruction:
    # One instruction row per group of ``group`` consecutive examples.
    out["hyper_encoder_input_tokens"] = rng.randint(
        2, vocab, size=(b // group, instruction)).astype(np.int32)
  return out


# -- ours ----------------------------------------------------------------------------------
def jax_step_seconds(model, batch: dict, warmup: int, steps: int) -> dict:
  """Median seconds of a jitted Adafactor train step of ``model`` on ``batch``."""
  import jax
  import optax
  from hyper_tasks.train.optimizers import adafactor_dual

  shapes = {k: v.shape for k, v in batch.items()}
  # "rbg" keys: XLA's RngBitGenerator; threefry is unrolled at every dropout site and
  # is slow to compile and to run on CPU.
  key = jax.random.key(0, impl="rbg")
  t0 = time.perf_counter()
  params = jax.jit(lambda k: model.get_initial_variables(k, shapes, boxed=False)
                   ["params"])(key)
  opt = adafactor_dual(backbone_lr=1e-3, hypernet_lr=1e-4)
  opt_state = jax.jit(opt.init)(params)

  def train_step(params, opt_state, batch, rng):
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(params, batch, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1))
  batch = jax.device_put(batch)
  state = {"params": params, "opt": opt_state, "i": 0, "loss": None}

  def one():
    rng = jax.random.fold_in(key, state["i"])
    state["params"], state["opt"], state["loss"] = step(state["params"], state["opt"],
                                                        batch, rng)
    state["i"] += 1
    return state["loss"]

  jax.block_until_ready(one())  # compile + first step
  compile_s = time.perf_counter() - t0
  times = common.time_calls(one, max(warmup - 1, 0), steps, jax.block_until_ready)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  loss = float(state["loss"])
  del state, params, opt_state
  gc.collect()
  return {"seconds": common.summary(times), "all": times, "compile_s": compile_s,
          "params": n_params, "loss": loss}


# -- transformers ------------------------------------------------------------------------------
def torch_step_seconds(cfg, batch: dict, warmup: int, steps: int,
                       optimizer: str) -> dict:
  import torch
  import transformers
  from hyper_tasks.convert import hf

  torch.manual_seed(0)
  torch.set_num_threads(common.usable_cores())
  hf_cfg = hf.config_to_hf(cfg)
  hf_cfg.pop("architectures", None)
  config = transformers.T5Config(**hf_cfg)
  model = transformers.T5ForConditionalGeneration(config)
  if not cfg.tie_word_embeddings and model.lm_head.weight is model.shared.weight:
    # transformers 5 ties T5's output layer to the embedding whatever the config
    # says; untie it so both frameworks train the same parameters.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    model.config.tie_word_embeddings = False
  model.train()
  if optimizer == "adafactor":
    from transformers.optimization import Adafactor
    opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False,
                    scale_parameter=True, warmup_init=False)
  else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  t = {k: torch.from_numpy(v).long() for k, v in batch.items()
       if k != "decoder_loss_weights"}
  kwargs = dict(input_ids=t["encoder_input_tokens"],
                attention_mask=(t["encoder_input_tokens"] > 0).long(),
                decoder_input_ids=t["decoder_input_tokens"],
                labels=t["decoder_target_tokens"])
  last = {}

  def one():
    out = model(**kwargs)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    last["loss"] = out.loss.item()

  times = common.time_calls(one, warmup, steps)
  n_params = sum(p.numel() for p in model.parameters())
  del model, opt
  gc.collect()
  return {"seconds": common.summary(times), "all": times, "params": n_params,
          "loss": last["loss"]}


def _command(argv) -> str:
  """The command line as recorded: without the free-text ``--note``."""
  args, out, skip = list(argv if argv is not None else sys.argv[1:]), [], False
  for a in args:
    if skip:
      skip = False
    elif a == "--note":
      skip = True
    elif not a.startswith("--note="):
      out.append(a)
  return " ".join(out)


# -- issue 18 ----------------------------------------------------------------------------------
def _median_seconds(fn, warmup: int, steps: int) -> float:
  import jax
  for _ in range(max(warmup, 1)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def remat_memory(args) -> list:
  """Temporary bytes of the compiled plain-T5 step and its time, per remat policy."""
  import jax
  from hyper_tasks.models.builders import make_model
  from hyper_tasks.train.optimizers import adafactor_dual
  batch = _batch(args, 32128, np.random.RandomState(0))
  shapes = {k: v.shape for k, v in batch.items()}
  rows = []
  for policy in ("none", "minimal", "full"):
    model = make_model(args.variant, args.size, hypernet="none",
                       dropout_rate=args.dropout, remat_policy=policy)
    key = jax.random.key(0, impl="rbg")
    params = jax.jit(lambda k: model.get_initial_variables(
        k, shapes, boxed=False)["params"])(key)
    opt = adafactor_dual()
    opt_state = jax.jit(opt.init)(params)

    def step(params, opt_state, batch, rng):
      grads = jax.grad(lambda p: model.loss_fn(p, batch, rng)[0])(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    secs = _median_seconds(lambda: compiled(params, opt_state, batch, key),
                           args.warmup, args.steps)
    rows.append((policy, mem.temp_size_in_bytes, secs, compile_s))
    print(f"remat {policy}: temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, "
          f"{secs:.2f} s/step (compile {compile_s:.0f} s)", flush=True)
  return rows


def frozen_step_times(args) -> list:
  """HINT step time with everything trained vs frozen groups (one process)."""
  import jax
  import jax.numpy as jnp
  from hyper_tasks.models.builders import make_model, make_peft_spec
  from hyper_tasks.train import optimizers, step_fn
  from hyper_tasks.train.train_state import TrainState
  spec = make_peft_spec(adapter_size=64, num_prefix_tokens=30)
  model = make_model(args.variant, args.size, hypernet="hint", peft_spec=spec,
                     instruction_fusion=True, dropout_rate=args.dropout,
                     hypernet_kwargs={"num_heads": 8})
  batch = _batch(args, model.module.config.vocab_size, np.random.RandomState(0),
                 instruction=args.instruction_len)
  shapes = {k: v.shape for k, v in batch.items()}
  key = jax.random.key(0, impl="rbg")
  params = jax.jit(lambda k: model.get_initial_variables(
      k, shapes, boxed=False)["params"])(key)
  rows = []
  for name, opt in (("adafactor_dual (all trained)", optimizers.adafactor_dual()),
                    ("frozen_backbone", optimizers.frozen_backbone()),
                    ("hypernet_only", optimizers.hypernet_only())):
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                       opt_state=jax.jit(opt.init)(params), rng=key)
    step = jax.jit(step_fn.make_train_step(model, opt, opt.group_of(params)))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    secs = _median_seconds(lambda: compiled(state, batch), args.warmup, args.steps)
    rows.append((name, secs, compile_s))
    print(f"{name}: {secs:.3f} s/step (compile {compile_s:.0f} s)", flush=True)
  # The step before issue 18 with the backbone frozen: every gradient computed,
  # set_to_zero drops the frozen ones, the finiteness check reads them all.
  opt = optimizers.frozen_backbone()
  opt_state = jax.jit(opt.init)(params)

  def old_step(params, opt_state, batch, rng):
    (_, m), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, batch, rng)
    updates, new_opt = opt.update(grads, opt_state, params)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves((grads, updates))]))
    new = jax.tree.map(lambda p, u: jnp.where(finite, p + u, p), params, updates)
    return new, new_opt, m["loss"]

  t0 = time.perf_counter()
  compiled = jax.jit(old_step).lower(params, opt_state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  secs = _median_seconds(lambda: compiled(params, opt_state, batch, key),
                         args.warmup, args.steps)
  name = "frozen_backbone, previous step (all gradients)"
  rows.append((name, secs, compile_s))
  print(f"{name}: {secs:.3f} s/step (compile {compile_s:.0f} s)", flush=True)
  return rows


# -- main ------------------------------------------------------------------------------------
def main(argv=None):
  args = parse_args(argv)
  if args.remat_memory or args.frozen:
    print(f"machine: {common.machine_description()}")
    print(f"config: {args.variant}/{args.size}, batch {args.batch}, inputs "
          f"{args.inputs}, targets {args.targets}, instruction "
          f"{args.instruction_len}, dropout {args.dropout}")
    out = {}
    if args.remat_memory:
      out["remat"] = remat_memory(args)
    if args.frozen:
      out["frozen"] = frozen_step_times(args)
    return out
  import jax
  from hyper_tasks.models import flops
  from hyper_tasks.models.config import preset
  from hyper_tasks.models.model_api import EncoderDecoderModel
  from hyper_tasks.models.transformer import Transformer

  cfg = preset(args.variant, args.size, dropout_rate=args.dropout)
  machine = common.machine_description()
  print(f"machine: {machine}")
  compute = args.compute_dtype or "float32"
  device = jax.devices()[0]
  # Accelerators need a bigger matmul than 2048^2 to approach their peak.
  n = 2048 if device.platform == "cpu" else 8192
  peak = common.matmul_peak_flops(n=n, dtype=compute)
  nominal = common.nominal_peak_flops(device.device_kind, compute)
  torch_peak = None if args.skip_torch else common.torch_matmul_peak_flops()
  print(f"dense {compute} matmul {n}^2: jax {common.fmt_flops(peak)}/s"
        + (f", torch f32 {common.fmt_flops(torch_peak)}/s" if torch_peak else "")
        + (f"; nominal {compute} peak of {device.device_kind}: "
           f"{common.fmt_flops(nominal)}/s" if nominal else ""))
  rng = np.random.RandomState(0)
  batch = _batch(args, cfg.vocab_size, rng)
  tokens = args.batch * (args.inputs + args.targets)
  train_flops = 3 * args.batch * flops.backbone(cfg, args.inputs,
                                                args.targets).per_instance
  print(f"config: {args.variant}/{args.size}, batch {args.batch}, inputs "
        f"{args.inputs}, targets {args.targets}, dropout {args.dropout}; "
        f"{common.fmt_flops(train_flops)} per step (3x analytic forward)")

  rows, results, overhead = [], {}, {}
  hint_runs, versus_concat = {}, {}

  def report(name, r, step_flops):
    tps = tokens / r["seconds"]
    achieved = step_flops / r["seconds"]
    results[name] = dict(r, tps=tps, achieved=achieved)
    print(f"{name}: {r['seconds']:.2f} s/step (steps {[round(x, 2) for x in r['all']]}"
          f"), {tps:,.0f} tokens/s, {common.fmt_flops(achieved)}/s = "
          f"{achieved / peak:.1%} of measured matmul peak"
          + (f", MFU {achieved / nominal:.1%} of nominal peak" if nominal else "")
          + f"; loss {r['loss']:.3f}, {r['params'] / 1e6:.1f}M params")
    rows.append([name, f"{r['seconds']:.2f}", f"{tps:,.0f}",
                 f"{common.fmt_flops(achieved)}/s", f"{achieved / peak:.1%}"]
                + ([f"{achieved / nominal:.1%}"] if nominal else []))

  # The model computes in its config's dtype (models.make_model.dtype in gin).
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  compute_cfg = (cfg.replace(dtype=jnp.dtype(args.compute_dtype))
                 if args.compute_dtype else cfg)
  ours = jax_step_seconds(EncoderDecoderModel(Transformer(compute_cfg)), batch,
                          args.warmup, args.steps)
  print(f"ours: compile + first step {ours['compile_s']:.1f} s")
  report("ours (JAX, Adafactor)", ours, train_flops)

  if not args.skip_torch:
    theirs = torch_step_seconds(cfg, batch, args.warmup, args.steps,
                                args.torch_optimizer)
    report(f"transformers (PyTorch, {args.torch_optimizer})", theirs, train_flops)
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"throughput ratio ours / PyTorch: {ratio:.2f}x")

  if args.hint:
    from hyper_tasks.models.builders import make_model, make_peft_spec
    spec = make_peft_spec(adapter_size=64, num_prefix_tokens=30)
    model = make_model(args.variant, args.size, hypernet="hint", peft_spec=spec,
                       instruction_fusion=True, dropout_rate=args.dropout,
                       hypernet_kwargs={"num_heads": 8},
                       dtype=args.compute_dtype or "float32")
    f = flops.model_flops(model, args.inputs, args.targets, args.instruction_len)
    for group in (int(g) for g in args.instruction_groups.split(",")):
      if args.batch % group:
        raise SystemExit(f"--instruction-groups {group} must divide --batch")
      hbatch = _batch(args, cfg.vocab_size, np.random.RandomState(0),
                      instruction=args.instruction_len, group=group)
      # Per example: the backbone with the adaptation; per group: the instruction
      # encoder + hypernetwork (+ fused instruction keys/values).
      hint_flops = 3 * args.batch * f.amortized(group)
      r = jax_step_seconds(model, hbatch, args.warmup, args.steps)
      print(f"hint (group {group}): compile + first step {r['compile_s']:.1f} s")
      name = f"HINT (JAX; instruction {args.instruction_len}"
      name += f", {group} examples per instruction)" if group > 1 else ")"
      report(name, r, hint_flops)
      overhead[name] = (r["seconds"] / ours["seconds"], hint_flops / train_flops)
      hint_runs[name] = (r, hint_flops)
      print(f"{name} overhead over plain T5: {overhead[name][0]:.2f}x time, "
            f"{overhead[name][1]:.2f}x FLOPs")
    if args.concat:
      # The baseline reads instruction + instance as one sequence per example.
      import argparse as _argparse  # pylint: disable=g-import-not-at-top
      cargs = _argparse.Namespace(**dict(vars(args), inputs=args.inputs
                                         + args.instruction_len))
      cbatch = _batch(cargs, cfg.vocab_size, np.random.RandomState(0))
      concat_flops = 3 * args.batch * flops.backbone(
          cfg, cargs.inputs, args.targets).per_instance
      concat = jax_step_seconds(EncoderDecoderModel(Transformer(compute_cfg)),
                                cbatch, args.warmup, args.steps)
      cname = (f"concatenated instruction (plain T5, inputs {args.instruction_len}"
               f" + {args.inputs})")
      report(cname, concat, concat_flops)
      for name, (r, hint_flops) in hint_runs.items():
        versus_concat[name] = (r["seconds"] / concat["seconds"],
                               hint_flops / concat_flops)
        print(f"{name} / concatenated baseline: {versus_concat[name][0]:.2f}x "
              f"time, {versus_concat[name][1]:.2f}x FLOPs")

  if args.record:
    lines = [
        f"`python benchmarks/train_step.py {_command(argv)}`",
        "", f"- Machine: {machine}.",
        f"- Dense {compute} matmul ({n}^2, measured in the same run): jax "
        f"{common.fmt_flops(peak)}/s" + (f", torch f32 {common.fmt_flops(torch_peak)}/s"
                                         if torch_peak else "") + "."
        + (f" MFU is against the nominal {compute} peak of {device.device_kind}, "
           f"{common.fmt_flops(nominal)}/s." if nominal else ""),
        f"- {args.variant}/{args.size}, batch {args.batch}, inputs {args.inputs}, "
        f"targets {args.targets}, dropout {args.dropout}, compute "
        f"{args.compute_dtype or 'float32'}; tokens = batch x (inputs + "
        f"targets); FLOPs = 3 x analytic forward = {common.fmt_flops(train_flops)} "
        "per step (HINT: its own count with the hypernetwork per example).",
        f"- Median of {args.steps} steps after {args.warmup} warmup step(s); "
        "compilation excluded.", ""]
    lines.append(common.markdown_table(
        ["step", "s/step", "tokens/s", "achieved", "of matmul peak"]
        + (["MFU (nominal peak)"] if nominal else []), rows))
    if "transformers" in " ".join(results):
      name = next(k for k in results if k.startswith("transformers"))
      lines.append(f"\nOurs / PyTorch throughput: "
                   f"**{results[name]['seconds'] / ours['seconds']:.2f}x**.")
    for name, (t, fl) in overhead.items():
      lines.append(f"\n{name}: **{t:.2f}x** the plain T5 step's time for "
                   f"{fl:.2f}x its FLOPs (overhead of the hypernetwork).")
    for name, (t, fl) in versus_concat.items():
      lines.append(f"\n{name} / concatenated-instruction baseline: **{t:.2f}x** "
                   f"the time for {fl:.2f}x the FLOPs.")
    load = os.getloadavg()
    cores = common.usable_cores()
    lines.append(f"\nLoad average at the end: {load[0]:.1f}/{load[1]:.1f}/"
                 f"{load[2]:.1f} on {cores} usable cores"
                 + (" (loaded: other jobs shared the machine; ratios are "
                    "indicative only, not a met target)." if load[0] > 1 else "."))
    if args.note:
      lines.append("\n" + args.note)
    title = section_title(args, device.platform)
    if args.concat:
      title += f", HINT vs concatenated (instruction {args.instruction_len})"
    common.replace_section(title, "\n".join(lines))
  return results


if __name__ == "__main__":
  main()
