"""Tests for hyper_tasks.train.checkpoints (orbax train-state checkpoints)."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
import pytest

from hyper_tasks.train import checkpoints
from hyper_tasks.train import optimizers
from hyper_tasks import tree_utils

REPO = pathlib.Path(__file__).resolve().parents[2]


def _train_state(seed=0):
  rng = np.random.default_rng(seed)
  params = tree_utils.unflatten({
      "encoder/layers_0/mlp/wi_0/kernel": jnp.asarray(rng.normal(size=(8, 16)),
                                                      jnp.float32),
      "token_embedder/embedding": jnp.asarray(rng.normal(size=(32, 8)), jnp.bfloat16),
      "hypernet/out/kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
  })
  opt = optimizers.adafactor_dual()
  opt_state = opt.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  _, opt_state = opt.update(grads, opt_state, params)  # Non-zero statistics.
  return {"params": params, "opt_state": opt_state,
          "step": jnp.asarray(7 + seed, jnp.int32),
          "rng": jax.random.key(seed),
          "counts": jnp.asarray(rng.integers(-5, 5, size=(3,)), jnp.int32)}


def _bits(x):
  x = np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}")) if x.dtype.itemsize > 0 else x


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype, tree_utils.path_str(path)
    np.testing.assert_array_equal(_bits(x), _bits(y), err_msg=tree_utils.path_str(path))


def test_bitwise_round_trip_with_metadata(tmp_path):
  state = _train_state()
  with checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1,
                                config_str="x.y = 1\n") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state, data_position=123)
    ckpt.wait_until_finished()
    assert (tmp_path / "checkpoints" / "7").is_dir()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    for target in (state, abstract):
      restored, meta = ckpt.restore(target=target)
      _assert_bitwise_equal(state, restored)
      assert restored["params"]["token_embedder"]["embedding"].dtype == jnp.bfloat16
      assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    assert meta["data_position"] == 123
    assert meta["step"] == 7
    assert meta["gin_config"] == "x.y = 1\n"
    assert ckpt.metadata(7)["data_position"] == 123
    # The restored optimizer state still drives the optimizer.
    opt = optimizers.adafactor_dual()
    opt.update(jax.tree.map(jnp.ones_like, restored["params"]), restored["opt_state"],
               restored["params"])


def test_interval_keep_and_force(tmp_path):
  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  with checkpoints.Checkpointer(str(tmp_path), save_interval_steps=3, max_to_keep=2,
                                async_save=False) as ckpt:
    saved = [s for s in range(1, 8) if ckpt.save(s, state, data_position=s)]
    assert 3 in saved and 6 in saved and 4 not in saved and 5 not in saved
    assert ckpt.save(7, state, data_position=7, force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [6, 7]
    assert ckpt.latest_step() == 7
    with pytest.raises(FileNotFoundError, match="step 3"):
      ckpt.restore(3, target=state)


def test_mismatched_target_names_every_key(tmp_path):
  state = {"params": {"a": jnp.zeros((2, 3)), "b": jnp.zeros((4,)),
                      "c": jnp.zeros((1,))}}
  with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state, data_position=0, force=True)
    target = {"params": {"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,)),
                         "d": jnp.zeros((1,))}}
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
      ckpt.restore(1, target=target)
    msg = str(e.value)
    assert "params/a: checkpoint (2, 3) vs target (3, 2)" in msg
    assert "missing from the checkpoint: ['params/d']" in msg
    assert "not in the target: ['params/c']" in msg


def test_unfinalised_checkpoint_is_ignored(tmp_path):
  # A process killed in the middle of saving step 2 (inside the metadata writer).
  script = textwrap.dedent("""
      import os, signal, sys
      import jax.numpy as jnp
      import orbax.checkpoint as ocp
      from hyper_tasks.train import checkpoints
      ckpt = checkpoints.Checkpointer(sys.argv[1], save_interval_steps=1,
                                      async_save=False)
      ckpt.save(1, {"w": jnp.arange(4.0)}, data_position=1)
      ckpt.wait_until_finished()
      def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
      ocp.JsonCheckpointHandler.save = die
      ocp.JsonCheckpointHandler.async_save = die
      ckpt.save(2, {"w": jnp.arange(4.0) + 1}, data_position=2)
      ckpt.wait_until_finished()
      print("survived")
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert "survived" not in proc.stdout
  names = os.listdir(tmp_path / "checkpoints")
  assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names
  assert "2" not in names
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.all_steps() == [1]
  state, meta = ckpt.restore(target={"w": jnp.zeros(4)})
  np.testing.assert_array_equal(state["w"], np.arange(4.0))
  assert meta["data_position"] == 1
  ckpt.close()


def test_restore_lands_sharded_on_a_mesh(tmp_path):
  script = textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from hyper_tasks.train import checkpoints
      mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
      w = jax.device_put(jnp.arange(32.0).reshape(4, 8),
                         NamedSharding(mesh, P("data", "model")))
      ckpt = checkpoints.Checkpointer(sys.argv[1], async_save=False)
      ckpt.save(5, {"w": w}, data_position=0, force=True)
      ckpt.wait_until_finished()
      want = NamedSharding(mesh, P(None, "model"))
      target = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=want)}
      state, _ = ckpt.restore(target=target)
      assert state["w"].sharding == want, state["w"].sharding
      assert len(state["w"].addressable_shards) == 4
      assert state["w"].addressable_shards[0].data.shape == (4, 4)
      np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32.0).reshape(4, 8))
      ckpt.close()
      print("OK")
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_sigterm_sets_the_preemption_flag():
  checkpoints.clear_preemption()
  before = signal.getsignal(signal.SIGTERM)
  uninstall = checkpoints.install_preemption_handler()
  try:
    assert not checkpoints.preemption_requested()
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.time() + 5
    while not checkpoints.preemption_requested() and time.time() < deadline:
      time.sleep(0.01)
    assert checkpoints.preemption_requested()
    assert checkpoints.preemption_requested(sync_hosts=True)  # One process: local.
  finally:
    uninstall()
    checkpoints.clear_preemption()
  assert signal.getsignal(signal.SIGTERM) == before


def test_multi_host_preemption_check_gathers_only_every_sync_period(monkeypatch):
  gathers = []

  def fake_allgather(x):
    gathers.append(int(x))
    return np.asarray([int(x), 0])  # this host's flag and another host's

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  checkpoints.clear_preemption()
  try:
    seen = [checkpoints.preemption_requested(sync_hosts=True, step=s, sync_period=10)
            for s in range(1, 21)]
    assert gathers == [0, 0] and not any(seen)  # steps 10 and 20 only
    checkpoints._PREEMPTED.set()  # pylint: disable=protected-access
    assert not checkpoints.preemption_requested(sync_hosts=True, step=21,
                                                sync_period=10)
    assert checkpoints.preemption_requested(sync_hosts=True, step=30,
                                            sync_period=10)
    assert gathers == [0, 0, 1]
    # Without a step (or period 1), every call gathers, as before.
    assert checkpoints.preemption_requested(sync_hosts=True)
    assert len(gathers) == 4
  finally:
    checkpoints.clear_preemption()
