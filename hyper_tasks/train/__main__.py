"""``python -m hyper_tasks.train --gin_file=experiments/... --gin.MODEL_DIR="'...'"``.

Parses the gin flags (``hyper_tasks.gin_utils``), registers the data sources the
config names (``hyper_tasks.data.register_all``, gin-configurable), and calls
``hyper_tasks.train.trainer.train()`` with everything bound by gin. Exit code 0 on
completion or after a preemption save, non-zero on error.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from hyper_tasks import gin_utils


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  dotted, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(
      prog="python -m hyper_tasks.train",
      description="Train a hyper-tasks model from gin files.")
  gin_utils.add_gin_flags(parser)
  args = gin_utils.gin_args_from(parser.parse_args(rest), dotted)
  gin_utils.parse_from_args(args)
  # pylint: disable=g-import-not-at-top
  from hyper_tasks.data import registry
  from hyper_tasks.train import trainer
  registry.register_all()
  result = trainer.train()
  step = int(result.state.step)
  print(f"train: {'preempted at' if result.preempted else 'finished'} step {step}",
        flush=True)
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter.
  sys.exit(main())
