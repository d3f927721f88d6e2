"""``python -m hyper_tasks.sweep``: see :mod:`hyper_tasks.sweep`."""
import sys

from hyper_tasks.sweep.runner import main

if __name__ == "__main__":
  sys.exit(main())
