"""Benchmark helpers whose numbers end up in RESULTS.md."""
import pytest

from benchmarks import common
from benchmarks import train_step


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v4", "bfloat16", 275e12),
    ("cpu", "bfloat16", None),
    ("NVIDIA H100 80GB HBM3", "float32", None),
])
def test_nominal_peak(kind, dtype, peak):
  assert common.nominal_peak_flops(kind, dtype) == peak


def test_section_titles_keep_cpu_and_gpu_runs_apart():
  cpu = train_step.parse_args(["--size", "base"])
  gpu = train_step.parse_args(["--size", "base", "--compute-dtype", "bfloat16"])
  assert train_step.section_title(cpu) == (
      "Train step: ours (JAX) vs transformers (PyTorch), t5_1_1/base, batch 8, 512/128")
  assert train_step.section_title(gpu, "gpu").endswith(", gpu bfloat16")
  assert train_step.section_title(cpu, "gpu") != train_step.section_title(cpu)


def test_replace_section_rewrites_only_its_own_section(tmp_path):
  path = str(tmp_path / "R.md")
  common.replace_section("A", "one", path)
  common.replace_section("B", "two", path)
  common.replace_section("A", "three", path)
  text = open(path).read()
  assert "## A\n\nthree\n" in text and "## B\n\ntwo\n" in text and "one" not in text
