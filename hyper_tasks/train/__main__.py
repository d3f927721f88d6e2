"""``python -m hyper_tasks.train --gin_file=experiments/... --gin.MODEL_DIR="'...'"``.

Parses the gin flags, registers the data sources the config names
(``hyper_tasks.data.register.register_all``, gin-configurable) -- the start-up
shared with eval and infer, ``hyper_tasks.entry.run_gin_main`` -- and calls
``hyper_tasks.train.trainer.train()`` with everything bound by gin. Exit code 0 on
completion or after a preemption save, non-zero on error. ``--check`` resolves
and checks the configuration without training (``hyper_tasks/train/preflight.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from hyper_tasks import entry


# The report of the last ``--check`` in this process (tests, notebooks).
LAST_CHECK = None


def main(argv: Optional[Sequence[str]] = None) -> int:
  def keep_check(report):
    global LAST_CHECK
    LAST_CHECK = report

  def print_result(result):
    step = int(result.state.step)
    print(f"train: {'preempted at' if result.preempted else 'finished'} step "
          f"{step}", flush=True)
  return entry.run_gin_main(
      argv, "hyper_tasks.train.trainer", "train",
      prog="python -m hyper_tasks.train",
      description="Train a hyper-tasks model from gin files.",
      on_check=keep_check, on_result=print_result)


if __name__ == "__main__":
  entry.run_as_script("hyper_tasks.train.__main__")
