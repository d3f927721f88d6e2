"""Shared test setup: CPU only, quiet TensorFlow, and the optional real data folder."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# XLA compiles threefry random bits (dropout masks) very slowly on CPU; rbg keys
# compile ~8x faster and are just as deterministic.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
# Compilation is most of the suite's time. Tiny models run in milliseconds, so skip
# LLVM's expensive passes (jax_disable_most_optimizations sets
# xla_backend_optimization_level=0; the HLO passes are unchanged, results can differ
# from fully optimised programs in the last bit), and share
# every compiled executable through the persistent cache, across test modules and
# the subprocesses the suite launches (notebook kernels, the demo, scripts,
# multi-process workers), all of which inherit these variables.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "hyper_tasks_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  """``../shared/data`` beside the project, or skip (integration tests only)."""
  if not SHARED_DATA.exists():
    pytest.skip("../shared/data is absent; integration check skipped")
  return SHARED_DATA


@pytest.fixture
def clean_gin():
  """An empty gin config before and after the test (``pytestmark`` it)."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def restore_embedded_registry():
  """For modules that register tasks with another vocabulary: afterwards the
  registry is empty again, so later tests get the embedded default (bytes)."""
  yield
  from hyper_tasks.data import registry  # pylint: disable=g-import-not-at-top
  registry.unregister_all()


@pytest.fixture(scope="session")
def tiny_sweep_dir(tmp_path_factory):
  """A 2x2 sweep of a tiny HINT (``sweep.TINY_EXAMPLE_ARGS``), run in process."""
  from hyper_tasks import sweep  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("sweep")
  code = sweep.main(list(sweep.TINY_EXAMPLE_ARGS) + [f"--sweep_dir={path}",
                                                      "--in_process"])
  assert code == 0
  return path
