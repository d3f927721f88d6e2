"""Shared test setup: CPU only, quiet TensorFlow, and the optional real data folder."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

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
