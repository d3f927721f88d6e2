"""Multi-host runs on one machine: 2 processes x 2 CPU devices (``jax.distributed``
on localhost, gloo collectives) against 1 process x 4 devices, same configuration
(tiny HINT, toy tasks through the real pipeline, 2 x 2 data x model mesh):

(a) the training losses and the parameters at the stopping step are equal;
(b) the 2-host run, preempted at step 4 (one host signalled; the hosts agree,
    save and stop), resumes on 1 host and ends at step 6 equal to the straight
    1-host run: the input order does not depend on the number of hosts;
(c) evaluation split across the 2 processes gives the 1-process JSON report.

Three launches in all (one 2-process run, two 1-process runs); the workers are
``tests/train/multiprocess_worker.py``.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

TIMEOUT = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(model_dir, num_processes, devices, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.train.multiprocess_worker",
       "--process_id", str(i), "--num_processes", str(num_processes),
       "--port", str(port), "--devices", str(devices),
       "--model_dir", str(model_dir), *args],
      cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(num_processes)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=TIMEOUT))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  lines = [l for l in outs[0][0].splitlines() if l.startswith("RESULT ")]
  assert lines, outs[0][1][-4000:]
  return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  # 1 x 4: to step 4, evaluate, on to step 6 (a straight run).
  one = _launch(root / "one", 1, 4, "--num_steps", "4,6", "--eval")
  # 2 x 2: preempted after step 3 -> stops and saves at step 4, evaluates.
  two = _launch(root / "two", 2, 2, "--num_steps", "6", "--preempt_at_step", "3",
                "--eval")
  # 1 x 4 resumes the 2-host run's directory and ends at step 6.
  resumed = _launch(root / "two", 1, 4, "--num_steps", "6")
  return one, two, resumed


def _assert_params_close(a, b, what):
  assert len(a) == len(b) > 0, what
  for x, y in zip(a, b):
    assert max(abs(u - v) for u, v in zip(x, y)) <= 1e-5 * (1 + abs(x[0])), what


def test_two_hosts_train_like_one(runs):
  one, two, _ = runs
  straight, = [p for p in one["phases"] if p["step"] == 4]
  preempted = two["phases"][0]
  assert preempted["preempted"] and preempted["step"] == 4
  assert len(preempted["losses"]) == 4
  for a, b in zip(preempted["losses"], straight["losses"]):
    assert abs(a - b) < 1e-5, (preempted["losses"], straight["losses"])
  _assert_params_close(preempted["params"], straight["params"], "step 4")


def test_preempted_on_two_hosts_resumes_on_one_exactly(runs):
  one, _, resumed = runs
  straight = one["phases"][-1]
  end = resumed["phases"][0]
  assert straight["step"] == end["step"] == 6 and not end["preempted"]
  assert len(end["losses"]) == 2  # Steps 5 and 6 only: it resumed at step 4.
  for a, b in zip(end["losses"], straight["losses"]):
    assert abs(a - b) < 1e-5, (end["losses"], straight["losses"])
  _assert_params_close(end["params"], straight["params"], "step 6")


def test_evaluation_across_two_processes_gives_the_same_report(runs):
  one, two, _ = runs
  assert one["eval"]["num_examples"] > 0 and one["eval"]["step"] == 4
  assert two["eval"] == one["eval"]
