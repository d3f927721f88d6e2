"""Sharded training equals one device: 8-way data parallel, 4x2 data x model, FSDP,
for plain T5 and for HINT (adapters, prefixes, instruction fusion); sharded
evaluation on 4x2 data x model gives the one-device report.

Runs in a subprocess because ``--xla_force_host_platform_device_count=8`` must be
set before jax initialises its CPU backend.
"""
import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = r'''
import json, tempfile
import jax, numpy as np
from jax.sharding import Mesh
from tests.train import train_testlib as lib
lib.enable_compilation_cache()
from hyper_tasks.train import optimizers, partitioning, train_config, trainer

assert jax.device_count() == 8, jax.devices()
model = lib.tiny_t5(dropout_rate=0.0)
optimizer = optimizers.adafactor_dual(backbone_lr=1e-2)

def run(mesh, model=model, optimizer=optimizer, **kwargs):
  return trainer.train(
      model=model, model_dir=tempfile.mkdtemp(), mixture_or_task_name="synthetic",
      num_steps=3, batch_size=8, sequence_lengths=lib.LENGTHS, optimizer=optimizer,
      parallelism=train_config.Parallelism(mesh=mesh, **kwargs),
      dataset_fn=lib.synthetic_batches,
      summaries=train_config.Summaries(period=1, progress=False),
      checkpointing=train_config.Checkpointing(period=1000))

def spec(x):
  return [a if a is None or isinstance(a, str) else list(a) for a in x.sharding.spec]

runs = {
    "one": run(Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))),
    "data8": run(partitioning.make_mesh((8, 1))),
    "data4_model2": run(partitioning.make_mesh((4, 2))),
    "fsdp4_model2": run(partitioning.make_mesh((4, 2)), fsdp=True),
}
out = {}
for name, r in runs.items():
  p = r.state.params
  wi = p["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  v = r.state.opt_state.inner_states["backbone"].inner_state.v
  out[name] = {
      "losses": [h["loss"] for h in r.history],
      "wi_spec": spec(wi), "wi_devices": len(wi.sharding.device_set),
      "wi_shard_shape": list(wi.addressable_shards[0].data.shape),
      "embed_spec": spec(p["token_embedder"]["embedding"]),
      "v_wi_spec": spec(v["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]),
      "params": [np.asarray(x).ravel()[:64].tolist() for x in jax.tree.leaves(p)],
  }

# HINT: hypernetwork generating adapters and prefixes, instruction fusion.
hint = lib.tiny_hint(dropout_rate=0.0)
hint_opt = optimizers.adafactor_dual(backbone_lr=1e-2, hypernet_lr=1e-2)
def run_hint(mesh, **kwargs):
  return run(mesh, model=hint, optimizer=hint_opt, **kwargs)
mesh42 = partitioning.make_mesh((4, 2))
hint_runs = {
    "one": run_hint(Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                         ("data", "model"))),
    "data4_model2": run_hint(mesh42),
    "fsdp4_model2": run_hint(mesh42, fsdp=True),
}
for name, r in hint_runs.items():
  p = r.state.params
  out["hint_" + name] = {
      "losses": [h["loss"] for h in r.history],
      "params": [np.asarray(x).ravel()[:64].tolist() for x in jax.tree.leaves(p)],
      "sharded_hypernet_leaves": sum(
          any(a is not None for a in x.sharding.spec)
          for x in jax.tree.leaves(p["hypernet"])),
  }

# Sharded evaluation: the one-device HINT parameters placed as the 4x2 run
# places them, batches split over data; the same report as on one device.
from hyper_tasks.data import toy
from hyper_tasks.evaluation import evaluator
toy.register_toy()
one_params = hint_runs["one"].state.params
placed = jax.device_put(one_params, jax.tree.map(
    lambda x: x.sharding, hint_runs["fsdp4_model2"].state.params))
def report(params, mesh):
  rep = evaluator.evaluate_many(
      hint, params, ["toy_test_heldout_op", "toy_test_seen"], batch_size=8,
      max_examples=3, sequence_lengths=lib.TOY_LENGTHS, progress=False,
      mesh=mesh)
  rep.pop("seconds")
  return rep
out["eval_one"] = report(one_params, None)
out["eval_sharded"] = report(placed, mesh42)

# eval.py: our checkpoint read straight onto the FSDP x model shards.
from hyper_tasks import eval as eval_lib
from hyper_tasks.train import checkpoints as ckpt_lib
ckpt_dir = tempfile.mkdtemp()
with ckpt_lib.Checkpointer(ckpt_dir, async_save=False, config_str="") as c:
  c.save(0, {"params": one_params}, {"batches": 0}, force=True)
  c.wait_until_finished()
fsdp = train_config.Parallelism(mesh=mesh42, fsdp=True)
_, shardings = eval_lib.param_placement(hint, lib.TOY_LENGTHS, fsdp)
restored, _ = eval_lib.load_model_params(hint, ckpt_dir, None, lib.TOY_LENGTHS,
                                         shardings=shardings)
out["restored_equal"] = all(
    np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(one_params)))
out["restored_specs_match"] = all(
    a.sharding == b for a, b in zip(
        jax.tree.leaves(restored), jax.tree.leaves(shardings)))
out["restored_split"] = sum(len(x.sharding.device_set) == 8 and
                            x.addressable_shards[0].data.size < x.size
                            for x in jax.tree.leaves(restored))
rep, = eval_lib.evaluate(
    model=hint, model_dir=ckpt_dir,
    mixture_or_task_names=["toy_test_heldout_op", "toy_test_seen"],
    sequence_lengths=lib.TOY_LENGTHS, batch_size=8, max_examples=3,
    progress=False, parallelism=fsdp)
for key in ("seconds", "checkpoint", "config"):
  rep.pop(key, None)
out["eval_py"] = rep
print("RESULT " + json.dumps(out))
'''


def test_sharded_runs_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=str(REPO), env=env,
                        capture_output=True, text=True, timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  out = json.loads(lines[-1][len("RESULT "):])
  ref = out["one"]["losses"]
  assert len(ref) == 3 and ref[-1] < ref[0]
  for name in ("data8", "data4_model2", "fsdp4_model2"):
    diffs = [abs(a - b) for a, b in zip(out[name]["losses"], ref)]
    assert len(diffs) == 3 and max(diffs) < 1e-5, (name, diffs)
    for a, b in zip(out[name]["params"], out["one"]["params"]):
      assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, name
  # Parameters (and their optimizer statistics) really are split.
  assert out["one"]["wi_shard_shape"] == [32, 64]
  assert out["data8"]["wi_shard_shape"] == [32, 64]  # Data parallel: replicated.
  assert out["data8"]["wi_devices"] == 8
  assert out["data4_model2"]["wi_spec"] == [None, "model"]
  assert out["data4_model2"]["wi_shard_shape"] == [32, 32]  # [32, 64] over 2.
  assert out["data4_model2"]["v_wi_spec"] == [None, "model"]
  assert out["data4_model2"]["embed_spec"] == ["model", None]
  assert out["fsdp4_model2"]["wi_spec"] == ["data", "model"]
  assert out["fsdp4_model2"]["wi_shard_shape"] == [8, 32]
  assert out["fsdp4_model2"]["wi_devices"] == 8
  # HINT under data x model and FSDP equals one device.
  ref = out["hint_one"]["losses"]
  assert len(ref) == 3 and all(0 < x < 10 for x in ref)
  for name in ("hint_data4_model2", "hint_fsdp4_model2"):
    diffs = [abs(a - b) for a, b in zip(out[name]["losses"], ref)]
    assert len(diffs) == 3 and max(diffs) < 1e-5, (name, diffs)
    for a, b in zip(out[name]["params"], out["hint_one"]["params"]):
      assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, name
    assert out[name]["sharded_hypernet_leaves"] > 0, name  # Really split.
  # Sharded evaluation gives the one-device report.
  one, sharded = out["eval_one"], out["eval_sharded"]
  assert one["num_examples"] > 0 and one["hypernet_calls"] > 0
  assert sharded == one
  # eval.py restores our checkpoint straight onto the shards; same report.
  assert out["restored_equal"] and out["restored_specs_match"]
  assert out["restored_split"] > 0
  one = {k: v for k, v in one.items() if k not in ("checkpoint", "config")}
  assert out["eval_py"] == one
