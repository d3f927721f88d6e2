"""Command line for the data package: list tasks, show examples.

  python -m hyper_tasks.data.cli list [PATTERN] [source flags]
  python -m hyper_tasks.data.cli show NAME [--split S] [--num N] [--vocab PATH]
      [source flags]

Source flags (both subcommands): ``--sni_dir``, ``--p3_templates``,
``--p3_data``, ``--c4_path``, ``--vocab``; the embedded default (toy tasks,
``esni_*``, ``embedded_pretrain``) is always registered. ``show`` prints each
example's ``hyper_inputs`` / ``inputs`` / ``targets`` with their token counts
(EOS included, in the task's vocabulary), so one sees what the hypernetwork and
the backbone each read. The console script ``hyper-tasks list|show`` calls
``main``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence, TextIO

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import vocab as vocab_lib


def add_source_flags(parser: argparse.ArgumentParser) -> None:
  """The data-source flags of ``list``, ``show`` and ``cache``."""
  parser.add_argument("--vocab", default=vocab_lib.BYTE,
                      help='"byte" or a SentencePiece model (or its folder).')
  parser.add_argument("--sni_dir", help="Super-NaturalInstructions checkout.")
  parser.add_argument("--sni_allow_missing_tasks", action="store_true",
                      help="Skip split-listed SNI tasks without a file.")
  parser.add_argument("--sni_skip_bad_files", action="store_true",
                      help="Skip malformed SNI task files (logged).")
  parser.add_argument("--p3_templates", help="promptsource templates folder.")
  parser.add_argument("--p3_data", help="P3 data folder (<dataset>/<subset>/"
                      "<split>.jsonl).")
  parser.add_argument("--c4_path", help='"tfds" or local C4 files.')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="hyper-tasks", description="List data tasks and show examples.")
  sub = parser.add_subparsers(dest="command", required=True)
  list_parser = sub.add_parser("list", help="Registered tasks and mixtures.")
  list_parser.add_argument("pattern", nargs="?", default=None,
                           help="Glob over names, e.g. 'sni_*_test'.")
  add_source_flags(list_parser)
  show = sub.add_parser("show", help="A few examples of a task or mixture.")
  show.add_argument("name")
  show.add_argument("--split", default=None,
                    help="Split (default: the name's first split).")
  show.add_argument("--num", type=int, default=3, help="Examples to show.")
  show.add_argument("--lengths", default="512,512,128",
                    help="hyper_inputs,inputs,targets lengths for token-level "
                    "tasks (C4 cutting).")
  add_source_flags(show)
  return parser


def _register(args: argparse.Namespace) -> list[str]:
  return register.register_all(
      sni_dir=args.sni_dir, p3_templates_dir=args.p3_templates,
      p3_data_dir=args.p3_data, c4_path=args.c4_path, vocabulary=args.vocab,
      sni_skip_bad_files=args.sni_skip_bad_files,
      sni_allow_missing_tasks=args.sni_allow_missing_tasks)


def _lengths(text: str) -> dict[str, int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) != 3:
    raise SystemExit(f"--lengths wants three integers, got {text!r}.")
  return dict(zip(F.TOKEN_FEATURES, values))


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
  _register(args)
  names = pipeline.list_names(args.pattern)
  for kind in ("tasks", "mixtures"):
    print(f"{kind} ({len(names[kind])}):", file=out)
    for name in names[kind]:
      print(f"  {name}", file=out)
  return 0


def format_example(example: dict, vocabulary, index: int, total: int) -> str:
  """One example as text: header, the three token features, metadata."""
  lines = [f"== example {index + 1}/{total}  task={example[F.TASK_NAMES]}  "
           f"id={example[F.EXAMPLE_ID]}"]
  for key in (F.HYPER_INPUTS, F.INPUTS, F.TARGETS):
    text = example[key]
    count = len(pipeline.tokenize([text], vocabulary)[0])
    lines.append(f"--- {key} ({count} tokens with EOS) ---")
    lines.append(text if text else "(empty)")
  extra = []
  if example.get(F.CATEGORY):
    extra.append(f"category={example[F.CATEGORY]}")
  if example.get(F.TEMPLATE):
    extra.append(f"template={example[F.TEMPLATE]}")
  if example.get(F.NUM_CHOICES, 1) > 1:
    extra.append(f"choice={example[F.CHOICE_INDEX]}/"
                 f"{example[F.NUM_CHOICES]} correct={example[F.IS_CORRECT]}")
  references = json.loads(example.get(F.REFERENCES) or "[]")
  if references and references != [example[F.TARGETS]]:
    extra.append(f"references={json.dumps(references, ensure_ascii=False)}")
  if extra:
    lines.append("--- " + "  ".join(extra))
  return "\n".join(lines)


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
  _register(args)
  try:
    provider = pipeline.get_provider(args.name)
  except KeyError as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  split = args.split or pipeline.splits(args.name)[0]
  vocabulary = provider.output_features[F.TARGETS].vocabulary
  examples = pipeline.load_examples(args.name, split, args.num,
                                    _lengths(args.lengths))
  print(f"{args.name} [{split}], vocabulary "
        f"{vocab_lib.vocabulary_key(vocabulary)}: {len(examples)} examples",
        file=out)
  for i, example in enumerate(examples):
    print(format_example(example, vocabulary, i, len(examples)), file=out)
  return 0


def main(argv: Optional[Sequence[str]] = None, out: TextIO = None) -> int:
  """Runs ``list`` or ``show``; returns the exit status."""
  args = build_parser().parse_args(argv)
  out = out or sys.stdout
  if args.command == "list":
    return cmd_list(args, out)
  return cmd_show(args, out)


if __name__ == "__main__":
  sys.exit(main())
