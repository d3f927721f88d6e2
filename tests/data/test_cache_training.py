"""Training through ``trainer.train`` on the preprocessing cache equals training
uncached in the same (seekable) order, and a resume on the cache ends equal."""
import gin
import jax
import numpy as np
import pytest

from tests.train import train_testlib as lib
from hyper_tasks import gin_utils
from hyper_tasks.data import cache_writer
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.train import optimizers
from hyper_tasks.train import trainer
from hyper_tasks.train.train_config import Checkpointing, Summaries

lib.enable_compilation_cache()

TASK = "esni_def_pos_2_train"
MODEL = lib.tiny_hint()
OPTIMIZER = optimizers.adafactor_dual(backbone_lr=1e-2, hypernet_lr=1e-3)
pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  register.register_embedded()
  root = str(tmp_path_factory.mktemp("train_cache"))
  cache_writer.build_cache(TASK, root, lib.LENGTHS, workers=0,
                           splits=("train",), num_shards=2)
  yield root
  registry.unregister_all()


def _train(model_dir, num_steps, **input_cache):
  gin.clear_config()
  for key, value in input_cache.items():
    gin.bind_parameter(f"hyper_tasks.data.input_cache.{key}", value)
  losses = []
  result = trainer.train(
      model=MODEL, model_dir=str(model_dir), mixture_or_task_name=TASK,
      num_steps=num_steps, batch_size=4, sequence_lengths=lib.LENGTHS,
      optimizer=OPTIMIZER, data_seed=5,
      checkpointing=Checkpointing(period=3, async_save=False),
      summaries=Summaries(period=1, progress=False),
      hooks=[lambda s, state, m: losses.append(float(m["loss"]))])
  return result, losses


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def test_training_on_the_cache_equals_training_uncached(cache_dir, tmp_path):
  cached, cached_losses = _train(tmp_path / "cached", 4, cache_dirs=[cache_dir])
  uncached, uncached_losses = _train(tmp_path / "uncached", 4,
                                     seekable_order=True)
  assert cached_losses == uncached_losses and len(cached_losses) == 4
  for x, y in zip(_leaves(cached.state), _leaves(uncached.state)):
    np.testing.assert_array_equal(x, y)
  # Resumed from the step-3 checkpoint on the cache (a seek): the same end.
  _train(tmp_path / "resumed", 3, cache_dirs=[cache_dir])
  resumed, _ = _train(tmp_path / "resumed", 4, cache_dirs=[cache_dir])
  for x, y in zip(_leaves(resumed.state), _leaves(cached.state)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("files", [
    ["experiments/hint_finetune_sni.gin", "tiny.gin"],
    ["experiments/hint_finetune_t0.gin", "runs/eval_t0.gin", "tiny.gin"]])
def test_the_cache_dirs_macro_reaches_the_pipeline(files):
  gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'"])
  assert pipeline.input_cache() == ((), False)
  gin.clear_config()
  gin_utils.parse(files, ["MODEL_DIR = '/tmp/unused'", "CACHE_DIRS = ['/c']"])
  assert pipeline.input_cache() == (("/c",), False)
