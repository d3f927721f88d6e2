"""Stage 2's full restore of one of our checkpoints reads straight onto the mesh
(no random initialisation, no unsharded host copy) and equals the general path."""
import jax
import numpy as np
import pytest

from tests.train import train_testlib as lib
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import partitioning
from hyper_tasks.train import train_state as ts_lib

LENGTHS = {"hyper_inputs": 8, "inputs": 8, "targets": 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = lib.tiny_hint()
  optimizer = optimizers.adafactor_dual()
  mesh = partitioning.make_mesh()
  shapes = ts_lib.init_input_shapes(LENGTHS)
  layout = ts_lib.make_layout(model, optimizer, mesh, shapes)
  init = ts_lib.make_init_fn(model, optimizer, layout, shapes)
  saved = init(jax.random.PRNGKey(11))
  # A trained-looking state: every parameter moved, counters advanced.
  saved = saved.replace(
      step=saved.step + 7,
      params=jax.tree.map(lambda p: p + 0.5, saved.params),
      opt_state=jax.tree.map(lambda x: x + 1 if x.dtype.kind in "iu" else x * 0 + 0.25,
                             saved.opt_state))
  path = tmp_path_factory.mktemp("stage1")
  with checkpoints.Checkpointer(str(path), async_save=False, config_str="") as c:
    c.save(7, saved, {"batches": 7}, force=True)
  return model, optimizer, layout, init, str(path)


def test_direct_restore_equals_the_general_path(setup):
  model, optimizer, layout, init, path = setup
  del model
  cfg = initial_restore.InitialRestore(path=path, optimizer_state="full_restore")
  slow, slow_report, _ = initial_restore.restore_initial(
      cfg, optimizer, layout, init(jax.random.PRNGKey(3)))
  direct = initial_restore.restore_direct(cfg, optimizer, layout, seed=3)
  assert direct is not None
  fast, report, notes = direct
  assert "directly onto the mesh" in notes[0]
  assert sorted(report.loaded) == sorted(slow_report.loaded)
  assert jax.tree.structure(fast) == jax.tree.structure(slow)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, s in zip(jax.tree.leaves(fast.params),
                  jax.tree.leaves(layout.shardings.params)):
    assert a.sharding == s
  assert int(fast.step) == 0


def test_general_path_where_the_restore_changes_anything(setup, tmp_path):
  _, optimizer, layout, _, path = setup
  for cfg in (initial_restore.InitialRestore(path=path),  # fresh optimizer state
              initial_restore.InitialRestore(path=path, optimizer_state="full_restore",
                                             reinit_patterns=["^hypernet/"]),
              initial_restore.InitialRestore(path=path, optimizer_state="full_restore",
                                             assignment_map=[("x", None)])):
    assert initial_restore.restore_direct(cfg, optimizer, layout, seed=0) is None
  # Another architecture: the saved tree does not match.
  other = lib.tiny_t5()
  shapes = ts_lib.init_input_shapes(LENGTHS)
  other_layout = ts_lib.make_layout(other, optimizer, layout.mesh, shapes)
  cfg = initial_restore.InitialRestore(path=path, optimizer_state="full_restore")
  assert initial_restore.restore_direct(cfg, optimizer, other_layout, seed=0) is None
