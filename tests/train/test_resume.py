"""Resume is exact: 20 straight steps == 10 steps, a SIGTERM, 10 resumed steps."""
import os
import signal

import jax
import numpy as np
import pytest

from tests.train import train_testlib as lib
from hyper_tasks.train import checkpoints
from hyper_tasks.train import optimizers
from hyper_tasks.train import trainer
from hyper_tasks.train.train_config import Checkpointing, Summaries

lib.enable_compilation_cache()

# One model and optimizer object for every run: train() reuses their jitted step.
MODEL = lib.tiny_hint(dropout_rate=0.1)  # Dropout on: the key must resume too.
OPTIMIZER = optimizers.adafactor_dual(backbone_lr=1e-2, hypernet_lr=1e-3)


def _run(model_dir, num_steps, hooks=()):
  return trainer.train(
      model=MODEL, model_dir=str(model_dir), mixture_or_task_name="toy_train",
      num_steps=num_steps, batch_size=4, sequence_lengths=lib.LENGTHS,
      optimizer=OPTIMIZER, checkpointing=Checkpointing(period=8, async_save=True),
      summaries=Summaries(period=5, progress=False), hooks=hooks)


def _sigterm_at(step):
  def hook(s, state, metrics):
    del state, metrics
    if s == step:
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.opt_state, state.step, state.rng)))]


def test_kill_and_resume_is_bitwise_identical(tmp_path):
  straight = _run(tmp_path / "straight", 20)
  assert int(straight.state.step) == 20
  assert not straight.preempted

  killed = _run(tmp_path / "killed", 20, hooks=[_sigterm_at(10)])
  assert killed.preempted and int(killed.state.step) == 10
  # The SIGTERM save is the latest checkpoint (10 is not on the period of 8).
  ckpt = checkpoints.Checkpointer(str(tmp_path / "killed"), async_save=False)
  assert ckpt.latest_step() == 10
  assert ckpt.metadata(10)["data_position"]["batches"] == 10
  ckpt.close()

  resumed = _run(tmp_path / "killed", 20)
  assert int(resumed.state.step) == 20 and not resumed.preempted
  a, b = _leaves(straight.state), _leaves(resumed.state)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # The loss history after the resume matches the straight run's.
  tail = {h["step"]: h["loss"] for h in straight.history}
  assert [tail[h["step"]] for h in resumed.history] == [
      h["loss"] for h in resumed.history]

  # Training a MODEL_DIR that is already at num_steps changes nothing.
  again = _run(tmp_path / "killed", 20)
  assert int(again.state.step) == 20 and again.history == []
  for x, y in zip(b, _leaves(again.state)):
    np.testing.assert_array_equal(x, y)
