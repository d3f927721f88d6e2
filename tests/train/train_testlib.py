"""Shared helpers for the trainer tests: tiny models, sequence lengths, fast compiles.

Every trainer test compiles the same few tiny train steps; the persistent XLA
compilation cache (a directory under the system temp dir, or
``$JAX_COMPILATION_CACHE_DIR``) turns the repeats into cache hits.
"""
import os
import tempfile

import jax

from hyper_tasks.models.config import preset
from hyper_tasks.models.hypernets import make_hypernet
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft_spec import AdapterSpec, PeftSpec, PrefixSpec
from hyper_tasks.models.transformer import Transformer

LENGTHS = {"hyper_inputs": 24, "inputs": 24, "targets": 8}
# The toy tasks (hyper_tasks.data.toy) through the real pipeline.
TOY_LENGTHS = {"hyper_inputs": 48, "inputs": 16, "targets": 16}


def enable_compilation_cache() -> None:
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      tempfile.gettempdir(), "hyper_tasks_test_jax_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def tiny_config(**overrides):
  kwargs = dict(num_encoder_layers=1, num_decoder_layers=1, vocab_size=320)
  kwargs.update(overrides)
  return preset("t5_1_1", "tiny", **kwargs)


def tiny_t5(**overrides) -> EncoderDecoderModel:
  """Plain T5 (no hypernetwork), one layer per stack, byte-vocab sized."""
  return EncoderDecoderModel(Transformer(tiny_config(**overrides)))


def tiny_hint(**overrides) -> EncoderDecoderModel:
  """A HINT model: tiny backbone + hypernetwork generating adapters and prefixes."""
  cfg = tiny_config(**overrides)
  spec = PeftSpec(adapter=AdapterSpec(size=4), prefix=PrefixSpec(num_tokens=2))
  net = make_hypernet("hint", cfg, spec, num_heads=2, dropout_rate=0.0)
  return EncoderDecoderModel(Transformer(cfg, spec, net, instruction_fusion=True))


def synthetic_batches(start_batch=0, shard_id=0, num_shards=1, batch_size=4,
                      lengths=None, seed=0):
  """A copy task as an endless batch iterator (a ``train(dataset_fn=...)``).

  Batch ``i`` depends only on ``(seed, i)``, so skipping ``start_batch`` batches
  resumes exactly; ``shard_id``/``num_shards`` select this host's rows.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  lengths = lengths or LENGTHS
  lh, li, lt = lengths["hyper_inputs"], lengths["inputs"], lengths["targets"]
  i = start_batch
  while True:
    rng = np.random.default_rng([seed, i])
    total = batch_size * num_shards
    enc = rng.integers(3, 40, size=(total, li)).astype(np.int32)
    hyper = rng.integers(3, 40, size=(total, lh)).astype(np.int32)
    targets = np.concatenate([enc[:, :lt - 1], np.ones((total, 1), np.int32)], 1)
    dec_in = np.concatenate([np.zeros((total, 1), np.int32), targets[:, :-1]], 1)
    rows = slice(shard_id * batch_size, (shard_id + 1) * batch_size)
    yield {"hyper_encoder_input_tokens": hyper[rows],
           "encoder_input_tokens": enc[rows],
           "decoder_input_tokens": dec_in[rows],
           "decoder_target_tokens": targets[rows],
           "decoder_loss_weights": np.ones_like(targets[rows])}
    i += 1
