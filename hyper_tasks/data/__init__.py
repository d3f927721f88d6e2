"""Data: seqio tasks and mixtures for hypernetwork instruction tuning.

Sources (each registers seqio tasks on request, never at import time):
  sni.py / sni_formats.py / sni_tasks.py
                          Super-NaturalInstructions files (reader, formats,
                          seqio tasks) -> ``sni_<format>_<split>``
  p3_*.py / p3_tasks.py   promptsource templates over local datasets -> ``t0_*``
                          (p3_templates: templates; p3_instructions and
                          p3_placeholders: template instructions; p3_rows:
                          datasets and rows; p3: records; p3_tasks: seqio tasks)
  c4.py                   C4 (TFDS or local files) cut for hypernetwork pretraining
  toy.py                  generated list/word operations -> ``toy_*``
  embedded/               shipped SNI-format tasks (``esni_*``) and pretraining text

Shared pieces: vocab.py (T5 SentencePiece / bytes), features.py (names, record
schema), preprocessors.py (batched tokenization), converters.py (the
records-to-features contract: truncation, shift-right, loss weights; the feature
converter), sources.py (seqio data sources), registry.py (idempotent
registration bookkeeping), register.py (``register_all``: every source),
pipeline.py (the API below), cli.py (list tasks, show examples).

Typical use::

  from hyper_tasks import data
  data.register_all(sni_dir=..., vocabulary="/path/to/spiece.model")
  batches = data.get_dataset("sni_def_train", "train",
                             {"hyper_inputs": 512, "inputs": 512, "targets": 128},
                             batch_size=32, seed=0)
  examples = data.load_examples("sni_def_test", "test")
"""
# TensorFlow only runs the input pipelines: keep it off GPUs (and TPUs) so it
# cannot take the accelerator memory JAX needs. Before anything imports the
# pipelines; a TensorFlow that already initialised its devices is left alone.
import tensorflow as _tf

try:
  _tf.config.set_visible_devices([], "GPU")
  _tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):  # devices already initialised / no such type
  pass

from hyper_tasks.data import features  # pylint: disable=g-import-not-at-top
from hyper_tasks.data.converters import HyperEncDecFeatureConverter
from hyper_tasks.data.converters import TruncationCounter
from hyper_tasks.data.pipeline import BatchIterator
from hyper_tasks.data.pipeline import detokenize
from hyper_tasks.data.pipeline import get_dataset
from hyper_tasks.data.pipeline import get_provider
from hyper_tasks.data.pipeline import get_tf_dataset
from hyper_tasks.data.pipeline import list_names
from hyper_tasks.data.pipeline import load_examples
from hyper_tasks.data.pipeline import splits
from hyper_tasks.data.pipeline import tokenize
from hyper_tasks.data.register import register_all
from hyper_tasks.data.register import register_embedded
from hyper_tasks.data.registry import unregister_all
from hyper_tasks.data.vocab import get_vocabulary
