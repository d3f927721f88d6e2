"""The ``hyper-tasks`` console script.

  hyper-tasks train   --gin_file=experiments/hint_finetune_sni.gin --gin.MODEL_DIR=...
  hyper-tasks eval    --gin_file=... --gin_file=runs/eval_sni.gin --gin.MODEL_DIR=...
  hyper-tasks infer   --gin_file=... --gin_file=runs/infer.gin ...
  hyper-tasks diagnose --model_dir=DIR --tasks=T1,T2 [-k 8] [--gin_file=...]
                      (adapter diagnostics: KL from the backbone, norms, gaps; JSON)
  hyper-tasks cache   --tasks=REGEX --output_dir=DIR [--workers N] [--lengths 1024,256,128]
                      [--sni_dir ... --p3_templates ... --p3_data ... --c4_path ... --vocab ...]
                      (the preprocessing cache; read when CACHE_DIRS names DIR)
  hyper-tasks list    [pattern] [--sni_dir ...]          (tasks and mixtures)
  hyper-tasks show    NAME [--num 3]                     (a few examples)
  hyper-tasks convert hf-to-ours  HF_DIR OUT_DIR         (params-only checkpoint)
  hyper-tasks convert t5x-to-ours T5X_PATH OUT_DIR [--step N]
  hyper-tasks convert ours-to-hf  MODEL_DIR HF_DIR [--step N]   (backbone only)

``train``/``eval``/``infer`` take exactly the flags of ``python -m hyper_tasks.train``
etc. ``convert`` writes our checkpoints as ``OUT_DIR/checkpoints/0/`` holding only
``params`` (use ``OUT_DIR`` as ``INITIAL_CHECKPOINT_PATH``, not as a ``MODEL_DIR`` to
resume); ``ours-to-hf`` infers the T5 architecture from the parameter shapes and
drops ``hypernet/`` and ``peft/``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from hyper_tasks import diagnose
from hyper_tasks import eval as eval_lib
from hyper_tasks import infer as infer_lib
from hyper_tasks import tree_utils
from hyper_tasks.convert import hf
from hyper_tasks.convert import t5x_checkpoint
from hyper_tasks.data import cache as cache_lib
from hyper_tasks.data import cache_writer
from hyper_tasks.data import cli as data_cli
from hyper_tasks.data import register
from hyper_tasks.models.config import T5Config
from hyper_tasks.train import __main__ as train_main
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import checkpoints as train_checkpoints

COMMANDS = ("train", "eval", "infer", "diagnose", "cache", "list", "show",
            "convert")


def _params_only_checkpoint(params: Any, out_dir: str) -> str:
  """Writes ``{"params": params}`` as step 0 of ``out_dir/checkpoints``."""
  with train_checkpoints.Checkpointer(out_dir, async_save=False, config_str="") as ckpt:
    if ckpt.latest_step() is not None:
      raise FileExistsError(f"{ckpt.directory} already holds checkpoints "
                            f"{ckpt.all_steps()}; choose an empty directory.")
    ckpt.save(0, {"params": params}, {"batches": 0}, force=True)
    ckpt.wait_until_finished()
    return ckpt.directory


def config_from_params(flat: Mapping[str, Any], **overrides):
  """The ``T5Config`` whose parameter shapes are ``flat`` (backbone keys).

  Architecture details that leave no trace in the shapes (relative-attention max
  distance, layer-norm epsilon, activation of a non-gated MLP) take T5's defaults
  unless given in ``overrides``.
  """
  shape = lambda k: tuple(np.shape(flat[k]))
  vocab, d_model = shape("token_embedder/embedding")
  heads, buckets = shape("encoder/relpos_bias/rel_embedding")
  inner = shape("encoder/layers_0/attention/query/kernel")[1]
  gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
  d_ff = shape("encoder/layers_0/mlp/" + ("wi_0" if gated else "wi")
               + "/kernel")[1]

  def layers(stack):
    return len({k.split("/")[1] for k in flat
                if k.startswith(f"{stack}/layers_")})

  kwargs = dict(vocab_size=vocab, d_model=d_model, num_heads=heads,
                d_kv=inner // heads, d_ff=d_ff,
                num_encoder_layers=layers("encoder"),
                num_decoder_layers=layers("decoder"),
                feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings="decoder/logits_dense/kernel" not in flat,
                relative_attention_num_buckets=buckets)
  kwargs.update(overrides)
  return T5Config(**kwargs)


def convert(argv: Sequence[str]) -> int:
  """``hyper-tasks convert ...`` (see the module docstring)."""
  parser = argparse.ArgumentParser(prog="hyper-tasks convert",
                                   description="Convert T5 checkpoints.")
  sub = parser.add_subparsers(dest="direction", required=True)
  p = sub.add_parser("hf-to-ours", help="HF T5 directory -> our checkpoint.")
  p.add_argument("hf_dir")
  p.add_argument("out_dir")
  p = sub.add_parser("t5x-to-ours", help="t5x checkpoint -> our checkpoint.")
  p.add_argument("t5x_path")
  p.add_argument("out_dir")
  p.add_argument("--step", type=int, default=None)
  p = sub.add_parser("ours-to-hf", help="our checkpoint -> HF T5 directory.")
  p.add_argument("model_dir")
  p.add_argument("hf_dir")
  p.add_argument("--step", type=int, default=None)
  args = parser.parse_args(argv)
  if args.direction == "hf-to-ours":
    _, params = hf.load_t5(args.hf_dir)
    out = _params_only_checkpoint(params, args.out_dir)
  elif args.direction == "t5x-to-ours":
    flat, _, _ = t5x_checkpoint.load_t5x_checkpoint(args.t5x_path, args.step)
    out = _params_only_checkpoint(tree_utils.unflatten(flat), args.out_dir)
  else:
    ckpt = checkpoint_formats.read_checkpoint(args.model_dir, "ours", args.step)
    flat, step = ckpt.params, ckpt.step
    backbone = {k: np.asarray(v) for k, v in flat.items()
                if not k.startswith(("hypernet/", "peft/"))}
    hf.save_t5(tree_utils.unflatten(backbone), config_from_params(backbone),
               args.hf_dir)
    out = args.hf_dir
    print(f"step {step}", end=": ")
  print(f"converted -> {out}", flush=True)
  return 0


def cache(argv: Sequence[str]) -> int:
  """``hyper-tasks cache ...``: writes the preprocessing cache (cache_writer.py)."""
  p = argparse.ArgumentParser(prog="hyper-tasks cache",
                              description="Render, tokenize and cache tasks.")
  p.add_argument("--tasks", required=True,
                 help="Regular expression over task and mixture names (whole "
                 "name); a mixture brings its member tasks.")
  p.add_argument("--output_dir", required=True, help="Cache root (CACHE_DIRS).")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="Worker processes (0: in this process).")
  p.add_argument("--lengths", default="1024,256,128",
                 help="hyper_inputs,inputs,targets lengths training will use.")
  p.add_argument("--splits", default=None, help="Comma-separated splits "
                 "(default: every split of each task).")
  p.add_argument("--num_shards", type=int, default=None,
                 help="Shards per task split (default: 1 when at least --workers "
                 "task splits are cached, else --workers).")
  data_cli.add_source_flags(p)
  p.add_argument("--sni_max_instances_per_task", type=int, default=100)
  p.add_argument("--p3_instruction", default="template",
                 help='"template" or "prompt" (register_all.p3_instruction).')
  args = p.parse_args(argv)
  try:
    lengths = dict(zip(("hyper_inputs", "inputs", "targets"),
                       [int(v) for v in args.lengths.split(",")]))
  except ValueError:
    lengths = {}
  if len(lengths) != 3:
    raise SystemExit(f"--lengths wants three integers, got {args.lengths!r}.")
  register_kwargs = dict(
      sni_dir=args.sni_dir, p3_templates_dir=args.p3_templates,
      p3_data_dir=args.p3_data, c4_path=args.c4_path, vocabulary=args.vocab,
      sni_allow_missing_tasks=args.sni_allow_missing_tasks,
      sni_skip_bad_files=args.sni_skip_bad_files,
      sni_max_instances_per_task=args.sni_max_instances_per_task,
      p3_instruction=args.p3_instruction)
  register.register_all(**register_kwargs)
  try:
    built = cache_writer.build_cache(
        args.tasks, args.output_dir, lengths, workers=args.workers,
        register_kwargs=register_kwargs,
        splits=args.splits.split(",") if args.splits else None,
        num_shards=args.num_shards)
  except (cache_lib.CacheError, cache_writer.CacheWorkerError, ValueError) as e:
    print(f"hyper-tasks cache: {e}", file=sys.stderr)
    return 1
  for name, splits in sorted(built.items()):
    print(f"{name}: " + ", ".join(f"{s} {n}" for s, n in sorted(splits.items())))
  print(f"cached {len(built)} tasks -> {args.output_dir}", flush=True)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in (
        "-h", "--help") else sys.stdout)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  command, rest = argv[0], argv[1:]
  if command == "train":
    return train_main.main(rest)
  if command == "eval":
    return eval_lib.main(rest)
  if command == "infer":
    return infer_lib.main(rest)
  if command == "diagnose":
    return diagnose.main(rest)
  if command == "cache":
    return cache(rest)
  if command in ("list", "show"):
    return data_cli.main([command] + rest)
  return convert(rest)


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  sys.exit(main())
