"""The embedded default, end to end on CPU: does a hypernetwork read the instruction?

``python -m hyper_tasks.demo`` (what ``scripts/local.sh`` runs) uses only data the
package ships (byte vocabulary, no download):

1. **Stage 1, hypernetwork pretraining** of a tiny HINT on the shipped text
   (``embedded_pretrain``: each document cut into ``hyper_inputs`` / ``inputs`` /
   ``targets``, the C4 recipe of the HINT paper).
2. **Stage 2, multi-task finetuning** from the stage-1 checkpoint on the toy
   instruction tasks (list and word operations, several phrasings each) plus the
   shipped SNI-format tasks, each instance with its instruction alone (k=0), with
   ``shots`` positive examples after it (Tk-Instruct's ``def_pos_K``), or with the
   examples alone (``pos_K``: the operation must be read off the examples). Three
   models train on the *same instances* (HINT and
   the control in batches of ``GROUP_SIZE`` examples per instruction, so their
   hypernetwork runs once per group):
     * ``hint``: instruction -> hypernetwork -> adapters + prefixes (+ fusion);
     * ``concat``: plain T5 with the instruction concatenated into the input
       (Tk-Instruct; restores the stage-1 backbone, its hypernetwork is dropped);
     * ``no-instr``: HINT whose hypernetwork always sees a fixed instruction (the
       control: what the generated parameters are worth without the instruction).
3. **Evaluation** on seen instructions and on instructions never seen in training
   (held-out phrasings of seen operations, held-out operations), exact match, with
   the hypernetwork run once per distinct instruction. HINT and the baseline are
   evaluated zero-shot (k=0) and with ``shots`` examples (k=2: in the
   hypernetwork's input for HINT, in every instance's input for the baseline); a
   held-out operation is what examples can teach (the definition names an
   operation never trained, the examples show it). Inference FLOPs per instance
   come from XLA's cost analysis of the compiled scoring function at each row's
   sequence lengths (HINT: with the cached adaptation; its once-per-task
   hypernetwork cost is shown separately).

It prints the comparison table (with a reference row that needs no model: the most
common test answer of each operation) and where the TensorBoard logs and JSON
reports are.
Everything is a plain function call (``run(...)``), so a notebook can do the same.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import sni_tasks
from hyper_tasks.data import toy
from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.models import builders
from hyper_tasks.models.hypernets import make_hypernet
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.transformer import Transformer
from hyper_tasks.train import initial_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import train_config
from hyper_tasks.train import trainer

# Byte-level lengths (EOS included): toy instructions are one sentence (<= 70
# bytes; with the instance, <= 90), with 2 examples in Tk-Instruct's format <= 215
# (<= 238); SNI-format definitions up to ~90 bytes (longer few-shot ones are cut).
# The concatenated baseline carries the instruction inside ``inputs``. Training
# uses the few-shot lengths (its mixture holds both); each evaluation row runs at
# its own k's lengths.
HINT_LENGTHS = {"hyper_inputs": 96, "inputs": 24, "targets": 16}
CONCAT_LENGTHS = {"hyper_inputs": 4, "inputs": 96, "targets": 16}
HINT_FEW_LENGTHS = {"hyper_inputs": 216, "inputs": 24, "targets": 16}
CONCAT_FEW_LENGTHS = {"hyper_inputs": 4, "inputs": 240, "targets": 16}
PRETRAIN_LENGTHS = {"hyper_inputs": 96, "inputs": 32, "targets": 16}
# Positive examples per instruction in the few-shot rows (toy.MAX_SHOTS at most).
SHOTS = 2
# Stage-2 mixture: (task pattern, rate); "{f}" is "" (HINT) or "concat_", "{k}" SHOTS.
# Zero-shot and few-shot instructions share the instances; the examples-only share
# is what makes reading the examples pay off in training.
TRAIN_PARTS = (("toy_{f}train", 0.3), ("toy_{f}def_pos_{k}_train", 0.3),
               ("toy_{f}pos_{k}_train", 0.2), ("esni_{f}def_train", 0.1),
               ("esni_{f}def_pos_{k}_train", 0.1))
# (column, toy subset)
EVAL_SETS = (("seen instr. EM", "test_seen"),
             ("held-out phrasing EM", "test_heldout_phrasing"),
             ("held-out op EM", "test_heldout_op"))
MODELS = ("hint", "concat", "no-instr")
# Stage-2 examples per instruction in a batch
# (``train_config.Batching.instruction_group_size``).
GROUP_SIZE = 2


def backbone_config(size: str = "tiny", **overrides):
  """The demo's backbone: T5.1.1 layout, byte vocabulary, a little wider than tiny."""
  base = dict(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_encoder_layers=2,
              num_decoder_layers=2, vocab_size=384, dropout_rate=0.0)
  base.update(overrides)
  return builders.make_t5_config("t5_1_1", size, **base)


def build_model(kind: str, cfg, adapter_size: int = 16,
                num_prefix_tokens: int = 8,
                fusion: bool = True) -> EncoderDecoderModel:
  """``hint``, ``concat`` (no hypernetwork) or ``no-instr`` (fixed instruction);
  ``fusion``: HINT's instruction fusion (the decoder also attends to the encoded
  instruction, so each instance pays for the instruction's length a little)."""
  if kind == "concat":
    return EncoderDecoderModel(Transformer(cfg))
  spec = builders.make_peft_spec(adapter_size=adapter_size,
                                 num_prefix_tokens=num_prefix_tokens)
  net = make_hypernet("hint", cfg, spec, dropout_rate=0.0)
  return EncoderDecoderModel(Transformer(cfg, spec, net, instruction_fusion=fusion,
                                         no_instruction=kind == "no-instr"))


def mixture_name(kind: str, shots: int = SHOTS) -> str:
  return f"demo_{_fmt(kind)}_train_k{shots}"


def register_data(shots: int = SHOTS) -> None:
  """The embedded tasks plus the demo's two training mixtures (same instances).

  Raises:
    ValueError: ``shots`` above the toy tasks' examples (``toy.MAX_SHOTS``), or
      with no SNI-format task of that many examples registered.
  """
  if not 1 <= shots <= toy.MAX_SHOTS:
    raise ValueError(f"demo: shots={shots} positive examples asked; the toy tasks "
                     f"have 1 to {toy.MAX_SHOTS} per instruction (toy.MAX_SHOTS).")
  register.register_embedded()
  few = (f"def_pos_{shots}", f"pos_{shots}")
  toy.register_toy(shot_formats=few)
  sni_tasks.register_embedded_sni(formats=("def", f"def_pos_{shots}",
                                           "concat_def", f"concat_def_pos_{shots}"))
  for kind in ("hint", "concat"):
    f = "concat_" if kind == "concat" else ""
    # Toy tasks hold 4500 instances, the SNI-format ones 160: mix 80/20 so the
    # small set is seen a few times, not hundreds.
    parts = [(p.format(f=f, k=shots), rate) for p, rate in TRAIN_PARTS]
    registry.add_mixture(mixture_name(kind, shots), ("demo", tuple(parts)), parts)


def _fmt(kind: str) -> str:
  return "concat" if kind == "concat" else "hint"


def _lengths(kind: str, shots: int = 0) -> dict[str, int]:
  if kind == "concat":
    return CONCAT_FEW_LENGTHS if shots else CONCAT_LENGTHS
  return HINT_FEW_LENGTHS if shots else HINT_LENGTHS


def eval_task(kind: str, subset: str, shots: int) -> str:
  """The toy task a row evaluates: the control reads HINT's format (and ignores
  its instruction)."""
  return toy.task_name("concat" if kind == "concat" else "", subset,
                       f"def_pos_{shots}" if shots else "")


def fixed_answer_row(num_test_per_op: int = 40) -> dict[str, Any]:
  """A reference row without a model: per operation, always the test set's most
  common answer (the best fixed answer; e.g. a word's length is 3 or 4 in 30%).

  A model above it on a column has learned more than the operations' answer ranges.
  """
  row: dict[str, Any] = {"model": "fixed answer per op"}
  for column, subset in EVAL_SETS:
    answers: dict[str, collections.Counter] = {}
    for inst in toy.instances(subset, "test", num_test_per_op=num_test_per_op):
      answers.setdefault(inst["op"].name, collections.Counter())[inst["target"]] += 1
    hits = sum(c.most_common(1)[0][1] for c in answers.values())
    row[column] = 100.0 * hits / sum(sum(c.values()) for c in answers.values())
  return row


def instance_flops(model: EncoderDecoderModel, params, kind: str,
                   batch_size: int = 8, shots: int = 0) -> dict[str, float]:
  """XLA-counted inference FLOPs per instance (teacher-forced scoring pass), at the
  sequence lengths of the ``shots``-example row.

  HINT: ``per_instance`` runs the backbone with a cached adaptation (no
  hypernetwork; with instruction fusion its cross-attention has one key per
  instruction token, so longer instructions cost every instance a little);
  ``per_task`` is one ``encode_instruction`` call.
  """
  lengths = _lengths(kind, shots)
  batch = {
      "encoder_input_tokens": jnp.ones((batch_size, lengths["inputs"]), jnp.int32),
      "decoder_input_tokens": jnp.ones((batch_size, lengths["targets"]), jnp.int32),
      "decoder_target_tokens": jnp.ones((batch_size, lengths["targets"]), jnp.int32),
  }
  hyper = jnp.ones((1, lengths["hyper_inputs"]), jnp.int32)

  def cost(fn, *args) -> float:
    # The lowered (pre-optimisation) HLO's count: no compilation needed.
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis.get("flops", 0.0))

  if not model.uses_instruction:
    return {"per_instance": cost(model.score_batch, params, batch) / batch_size,
            "per_task": 0.0}
  adaptation = model.encode_instruction(params, hyper).index(0)
  per_instance = cost(lambda p, b, a: model.score_batch(p, b, a), params, batch,
                      adaptation) / batch_size
  per_task = cost(model.encode_instruction, params, hyper)
  return {"per_instance": per_instance, "per_task": per_task}


def _train(kind: str, model, model_dir: str, mixture: str, steps: int,
           batch_size: int, lengths, restore: Optional[initial_restore.InitialRestore],
           lr: float, log_every: int, compiler_options=None, group_size: int = 1,
           seed: int = 0):
  print(f"\n== {kind}: training {steps} steps on {mixture} -> {model_dir}", flush=True)
  optimizer = optimizers.adafactor_dual(backbone_lr=lr, hypernet_lr=lr)
  result = trainer.train(
      model=model, model_dir=model_dir, mixture_or_task_name=mixture,
      num_steps=steps, batch_size=batch_size, sequence_lengths=lengths,
      optimizer=optimizer, initial_restore=restore,
      checkpointing=train_config.Checkpointing(period=max(steps, 1), keep=1,
                                               async_save=False),
      summaries=train_config.Summaries(period=log_every, progress=True),
      batching=train_config.Batching(instruction_group_size=group_size),
      compiler_options=compiler_options, seed=seed, data_seed=seed)
  losses = [h["loss"] for h in result.history if "loss" in h]
  return result.state.params, losses


def run(out_dir: str, pretrain_steps: int = 60, finetune_steps: int = 600,
        batch_size: int = 24, lr: float = 1e-2, log_every: int = 100,
        models: Sequence[str] = MODELS, size_overrides: Optional[dict] = None,
        progress: bool = False, max_eval_examples: Optional[int] = None,
        compiler_options: Optional[dict] = None, seed: int = 0,
        shots: int = SHOTS, fusion: bool = True) -> dict[str, Any]:
  """Runs the whole demo; returns ``{"rows": [...], "report_path": ...}``.

  ``seed`` sets parameter initialisation and the training data order of every stage
  (the three stage-2 models share it, so they see the same batches). ``shots``: the
  positive examples per instruction of the few-shot rows (and of training);
  ``fusion``: HINT's (and the control's) instruction fusion, in both stages.
  """
  start = time.time()
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  register_data(shots)
  cfg = backbone_config(**(size_overrides or {}))

  # Stage 1: hypernetwork pretraining (HINT architecture, from scratch here; with a
  # real T5 this stage restores the HF backbone, see gin/restore/restore_pretrained).
  pre_dir = os.path.join(out_dir, "stage1_pretrain")
  hint = build_model("hint", cfg, fusion=fusion)
  _, pre_losses = _train("hint (stage 1)", hint, pre_dir, "embedded_pretrain",
                         pretrain_steps, batch_size, PRETRAIN_LENGTHS, None, lr,
                         log_every, compiler_options, seed=seed)

  rows, reports = [], {}
  for kind in models:
    model = build_model(kind, cfg, fusion=fusion)
    restore = initial_restore.InitialRestore(
        path=pre_dir, format="ours",
        # The baseline has no hypernetwork: its stage-1 parameters are left unused.
        assignment_map=((r"^hypernet/.*", None),) if kind == "concat" else (),
        optimizer_state="full_restore" if kind != "concat" else "fresh")
    model_dir = os.path.join(out_dir, f"stage2_{kind}")
    # HINT and the control read instructions: batches of GROUP_SIZE examples per
    # instruction, so the hypernetwork runs batch_size / GROUP_SIZE times a step.
    group = GROUP_SIZE if kind != "concat" and batch_size % GROUP_SIZE == 0 else 1
    params, losses = _train(kind, model, model_dir, mixture_name(kind, shots),
                            finetune_steps, batch_size, _lengths(kind, shots),
                            restore, lr, log_every, compiler_options, group,
                            seed=seed)
    reports[kind] = {}
    # The control ignores its instruction: one row. HINT and the baseline: zero-shot
    # and with ``shots`` examples, the same trained model.
    for k in ((0,) if kind == "no-instr" else (0, shots)):
      row = {"model": kind if kind == "no-instr" else f"{kind} k={k}", "k": k,
             "train loss": (losses[0], losses[-1]) if losses else None}
      # One report per evaluation set: records carry their operation as task name,
      # so a merged report would mix seen and held-out phrasings of one operation.
      for column, subset in EVAL_SETS:
        task = eval_task(kind, subset, k)
        report = evaluator.evaluate(
            model, params, task, split="test", sequence_lengths=_lengths(kind, k),
            batch_size=64, step=finetune_steps, progress=progress,
            max_examples=max_eval_examples)
        reports[kind][task] = report
        _write_json(os.path.join(model_dir, "demo_eval", f"{task}.json"), report)
        report_lib.write_scalars(os.path.join(model_dir, "eval", task),
                                 finetune_steps, report_lib.flatten_metrics(report))
        row[column] = report["generation"]["overall"]["exact_match"]
        row["hypernet runs"] = row.get("hypernet runs", 0) + report["hypernet_calls"]
        row["instances"] = row.get("instances", 0) + report["num_examples"]
      flops = instance_flops(model, params, kind, shots=k)
      row["FLOPs/instance"] = flops["per_instance"]
      row["hypernet FLOPs/task"] = flops["per_task"]
      rows.append(row)
  rows.append(fixed_answer_row())

  summary = {"rows": rows, "stage1_losses": pre_losses,
             "seconds": time.time() - start, "out_dir": out_dir,
             "config": {"pretrain_steps": pretrain_steps,
                        "finetune_steps": finetune_steps, "batch_size": batch_size,
                        "lr": lr, "seed": seed, "shots": shots,
                        "fusion": fusion,
                        "train_mixture": [(p.format(f="", k=shots), r)
                                          for p, r in TRAIN_PARTS],
                        "backbone": {k: str(v) for k, v in vars(cfg).items()}}}
  path = os.path.join(out_dir, "demo_report.json")
  _write_json(path, {**summary, "reports": reports})
  summary["report_path"] = path
  return summary


def _write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, default=_json)


def _json(value):
  if isinstance(value, (np.generic,)):
    return value.item()
  return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """The comparison table; FLOPs relative to the zero-shot baseline's."""
  cols = ["model", "seen instr. EM", "held-out phrasing EM", "held-out op EM",
          "FLOPs/instance", "hypernet FLOPs/task", "hypernet runs", "instances"]
  base = next((r["FLOPs/instance"] for r in rows
               if r["model"].startswith("concat") and not r.get("k")), None)

  def cell(row, col):
    v = row.get(col)
    if v is None:
      return "-"
    if col.startswith("FLOPs"):
      rel = f" ({v / base:.2f}x)" if base else ""
      return f"{v / 1e6:.2f}M{rel}"
    if col.startswith("hypernet FLOPs"):
      return f"{v / 1e6:.2f}M" if v else "-"
    if isinstance(v, float):
      return f"{v:.1f}"
    return str(v)

  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def verdict(rows: Sequence[dict[str, Any]]) -> str:
  """Plain-words summary: zero-shot HINT vs the control, then few-shot gains."""
  by = {r["model"]: r for r in rows}
  few = sorted({r["k"] for r in rows if r.get("k")})
  lines = []
  h0, n = by.get("hint k=0"), by.get("no-instr")
  key = "held-out phrasing EM"
  if h0 and n:
    text = (f"HINT (k=0) vs no-instruction control on held-out phrasings: "
            f"{h0[key]:.1f} vs {n[key]:.1f} exact match "
            f"({h0[key] - n[key]:+.1f}).")
    c0 = by.get("concat k=0")
    if c0 and c0["FLOPs/instance"]:
      text += (f" Per-instance inference FLOPs: "
               f"{h0['FLOPs/instance'] / c0['FLOPs/instance']:.2f}x the "
               "concatenated-instruction baseline's.")
    lines.append(text)
  key = "held-out op EM"
  fixed = by.get("fixed answer per op")
  for kind, name in (("hint", "HINT"), ("concat", "Concatenated baseline")):
    zero = by.get(f"{kind} k=0")
    for k in few:
      shot = by.get(f"{kind} k={k}")
      if not (zero and shot):
        continue
      growth = shot["FLOPs/instance"] / zero["FLOPs/instance"] - 1
      lines.append(
          f"{name} with {k} examples vs zero-shot on held-out operations: "
          f"{shot[key]:.1f} vs {zero[key]:.1f} exact match "
          f"({shot[key] - zero[key]:+.1f}"
          + (f"; a fixed answer per operation: {fixed[key]:.1f}" if fixed else "")
          + f"); per-instance FLOPs {growth:+.1%}.")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hyper_tasks.demo",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", default=os.path.join("runs", "demo"))
  parser.add_argument("--pretrain_steps", type=int, default=60)
  parser.add_argument("--finetune_steps", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=24)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--log_every", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0,
                      help="initialisation and data-order seed (all stages)")
  parser.add_argument("--models", default=",".join(MODELS),
                      help="comma-separated subset of " + ",".join(MODELS))
  parser.add_argument("--shots", type=int, default=SHOTS,
                      help="positive examples per instruction in the few-shot "
                      f"rows and in training (1 to {toy.MAX_SHOTS})")
  parser.add_argument("--no_fusion", action="store_true",
                      help="HINT without instruction fusion: the examples reach "
                      "only the hypernetwork (per-instance cost independent of k)")
  parser.add_argument("--quick", action="store_true",
                      help="a few steps only: checks the pipeline, not learning")
  args = parser.parse_args(argv)
  # Train steps compile in ~2/3 of the time at XLA -O1 and run as fast here.
  max_eval, options = None, {"xla_backend_optimization_level": 1}
  if args.quick:
    args.pretrain_steps, args.finetune_steps, args.log_every = 2, 3, 1
    # A few steps: compile fast rather than run fast.
    max_eval, options = 2, {"xla_backend_optimization_level": 0,
                            "xla_llvm_disable_expensive_passes": True}
  models = [m for m in args.models.split(",") if m]
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f"unknown --models {unknown}; choose from {MODELS}")
  summary = run(args.out_dir, args.pretrain_steps, args.finetune_steps,
                args.batch_size, args.lr, args.log_every, models,
                max_eval_examples=max_eval, compiler_options=options,
                seed=args.seed, shots=args.shots,
                fusion=not args.no_fusion)
  print("\n" + format_table(summary["rows"]))
  text = verdict(summary["rows"])
  if text:
    print("\n" + text)
  print(f"\nFinished in {summary['seconds'] / 60:.1f} min.")
  print(f"TensorBoard: tensorboard --logdir {summary['out_dir']}")
  print(f"JSON report: {summary['report_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
