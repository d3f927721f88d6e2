"""``python -m hyper_tasks.train --gin_file=experiments/... --gin.MODEL_DIR="'...'"``.

Parses the gin flags (``hyper_tasks.gin_utils``), registers the data sources the
config names (``hyper_tasks.data.register_all``, gin-configurable), and calls
``hyper_tasks.train.trainer.train()`` with everything bound by gin. Exit code 0 on
completion or after a preemption save, non-zero on error. ``--check`` resolves
and checks the configuration without training (``hyper_tasks/train/preflight.py``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from hyper_tasks import gin_utils


# The report of the last ``--check`` in this process (tests, notebooks).
LAST_CHECK = None


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  dotted, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(
      prog="python -m hyper_tasks.train",
      description="Train a hyper-tasks model from gin files.")
  gin_utils.add_gin_flags(parser)
  gin_utils.add_check_flags(parser)
  namespace = parser.parse_args(rest)
  gin_utils.prepare_check(namespace)
  args = gin_utils.gin_args_from(namespace, dotted)
  gin_utils.parse_from_args(args)
  # pylint: disable=g-import-not-at-top
  from hyper_tasks.data import register
  from hyper_tasks.train import preflight
  from hyper_tasks.train import trainer
  if namespace.check:
    try:
      register.register_all()
      preflight.verify_devices(namespace.check_devices)
      report = trainer.train(check=preflight.CheckOptions(
          compile=namespace.compile))
    except Exception as e:  # pylint: disable=broad-except
      return preflight.print_failure(e)
    global LAST_CHECK
    LAST_CHECK = report
    print(report.format(), flush=True)
    return 0
  register.register_all()
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
