"""Tests for hyper_tasks.train.partitioning.

Rule resolution is tested in-process (it needs no devices). The mesh test needs 8
host devices, which XLA only creates if the flag is set before jax initialises, so it
runs in a subprocess.
"""
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from hyper_tasks.train import partitioning as part

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZES = {"data": 4, "model": 2}


def test_standard_rules():
  r = part.resolve_logical_axes
  assert r(("embed", "mlp")) == P(None, "model")
  assert r(("vocab", "embed")) == P("model", None)
  assert r(("batch", "length", "embed")) == P("data", None, None)
  assert r(("embed", "joined_kv")) == P(None, "model")
  assert r(("heads", "relpos_buckets")) == P("model", None)
  assert r(("batch", "length", "heads", "kv")) == P("data", None, "model", None)
  assert r((None, "mlp")) == P(None, "model")
  # Hypernetwork names.
  assert r(("hyper_embed", "hyper_mlp")) == P(None, "model")
  assert r(("embed", "adapter")) == P(None, None)
  assert r(("lora_rank", "joined_kv")) == P(None, "model")
  assert r(("prefix", "joined_kv")) == P(None, "model")
  assert r(("slots", "hyper_embed")) == P(None, None)


def test_priority_uses_each_mesh_axis_once():
  # Both want 'model': 'mlp' comes first in the table and wins.
  assert part.resolve_logical_axes(("heads", "mlp")) == P(None, "model")
  # FSDP: embed -> data, but a batch axis (earlier rule) claims data first.
  fsdp = part.logical_axis_rules(fsdp=True)
  assert part.resolve_logical_axes(("embed", "mlp"), fsdp) == P("data", "model")
  assert part.resolve_logical_axes(("vocab", "embed"), fsdp) == P("model", "data")
  assert part.resolve_logical_axes(("batch", "length", "embed"), fsdp) == P(
      "data", None, None)
  # Extra rules take priority over the standard ones.
  custom = part.logical_axis_rules(extra_rules=(("mlp", None),))
  assert part.resolve_logical_axes(("embed", "mlp"), custom) == P(None, None)


def test_indivisible_dimension_falls_back_to_replicated(caplog):
  with caplog.at_level(logging.WARNING):
    spec = part.resolve_logical_axes(("embed", "mlp"), shape=(16, 33),
                                     axis_sizes=SIZES, name="wi/kernel")
  assert spec == P(None, None)
  assert "wi/kernel" in caplog.text and "not divisible" in caplog.text
  assert part.resolve_logical_axes(("embed", "mlp"), shape=(16, 34),
                                   axis_sizes=SIZES) == P(None, "model")
  fsdp = part.logical_axis_rules(fsdp=True)
  assert part.resolve_logical_axes(("embed", "mlp"), fsdp, shape=(6, 8),
                                   axis_sizes=SIZES) == P(None, "model")


def test_unknown_and_repeated_names_are_errors():
  with pytest.raises(ValueError, match="'mpl'.*not in the rules table"):
    part.resolve_logical_axes(("embed", "mpl"), name="typo")
  with pytest.raises(ValueError, match="Repeated"):
    part.resolve_logical_axes(("embed", "embed"))
  with pytest.raises(ValueError, match="2 logical axes for shape"):
    part.resolve_logical_axes(("embed", "mlp"), shape=(3,), axis_sizes=SIZES)


def test_single_process_helpers():
  assert part.host_shard_info() == (0, 1)
  assert part.maybe_initialize_distributed() is False


_MESH_SCRIPT = textwrap.dedent("""
    import os
    assert os.environ["XLA_FLAGS"].endswith("=8")
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jax.sharding import PartitionSpec as P
    from hyper_tasks.train import partitioning as part

    class Mlp(nn.Module):
      @nn.compact
      def __call__(self, x):
        wi = self.param("wi", nn.with_logical_partitioning(
            nn.initializers.normal(), ("embed", "mlp")), (16, 32))
        wo = self.param("wo", nn.with_logical_partitioning(
            nn.initializers.normal(), ("mlp", "embed")), (32, 16))
        odd = self.param("odd", nn.with_logical_partitioning(
            nn.initializers.normal(), ("embed", "heads")), (16, 3))
        emb = self.param("emb", nn.with_logical_partitioning(
            nn.initializers.normal(), ("vocab", "embed")), (40, 16))
        return (x @ wi) @ wo + (x @ odd).sum() + emb.sum()

    assert jax.device_count() == 8
    mesh = part.make_mesh(num_partitions=2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}, mesh.shape
    x = jnp.ones((8, 16))
    abstract = jax.eval_shape(Mlp().init, jax.random.key(0), x)
    sh = part.params_shardings(abstract, mesh)["params"]
    assert sh["wi"].spec == P(None, "model"), sh["wi"].spec
    assert sh["wo"].spec == P("model", None), sh["wo"].spec
    assert sh["odd"].spec == P(None, None), sh["odd"].spec   # 3 % 2 != 0
    assert sh["emb"].spec == P("model", None), sh["emb"].spec
    # Initialise directly into the shardings; check the shards.
    init = jax.jit(lambda k: nn.unbox(Mlp().init(k, x)), out_shardings={"params": sh})
    params = init(jax.random.key(0))["params"]
    assert params["wi"].addressable_shards[0].data.shape == (16, 16)
    assert params["wo"].addressable_shards[0].data.shape == (16, 16)
    assert {s.data.shape for s in params["odd"].addressable_shards} == {(16, 3)}
    # FSDP: embed over data too.
    fsdp = part.params_shardings(abstract, mesh, part.logical_axis_rules(fsdp=True))
    assert fsdp["params"]["wi"].spec == P("data", "model")
    wi = jax.device_put(params["wi"], fsdp["params"]["wi"])
    assert wi.addressable_shards[0].data.shape == (4, 16)
    # Batches split over data.
    batch = part.global_batch({"tokens": np.arange(8 * 5).reshape(8, 5)}, mesh)
    assert batch["tokens"].sharding == part.data_sharding(mesh)
    assert batch["tokens"].addressable_shards[0].data.shape == (2, 5)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]),
                                  np.arange(40).reshape(8, 5))
    # A sharded forward pass runs and agrees with the replicated one.
    y = jax.jit(lambda p, x: Mlp().apply({"params": p}, x))(params, x)
    y_ref = Mlp().apply({"params": jax.tree.map(np.asarray, params)}, np.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5)
    assert part.make_mesh((2, 4)).shape["model"] == 4
    try:
      part.make_mesh((3, 2))
      raise AssertionError("expected ValueError")
    except ValueError:
      pass
    print("OK")
""")


def test_mesh_shards_mlp_across_model_on_8_host_devices():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0 and "OK" in proc.stdout, (
      proc.stdout[-2000:] + proc.stderr[-4000:])


_UNREACHABLE_SCRIPT = textwrap.dedent("""
    import socket
    from hyper_tasks.train import partitioning as part
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]  # Nothing listens here once closed.
    try:
      part.maybe_initialize_distributed(f"localhost:{port}", num_processes=2,
                                        process_id=1, initialization_timeout=3)
    except RuntimeError as e:
      print("ERROR", e)
""")


def test_unreachable_coordinator_is_a_clear_error():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-c", _UNREACHABLE_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=120)
  line = [l for l in proc.stdout.splitlines() if l.startswith("ERROR")]
  assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "process 1 of 2" in line[0] and "within 3 s" in line[0], line[0]
  assert "localhost:" in line[0]
