"""hyper-tasks: hypernetwork instruction tuning (HINT-style) on JAX/Flax."""
import os

import setuptools
from setuptools.command.build_py import build_py as _build_py

ROOT = os.path.dirname(os.path.abspath(__file__))

INSTALL_REQUIRES = [
    # jax.set_mesh (the trainer's mesh context) is new in 0.7.1.
    "jax>=0.7.1,<0.13",
    "jaxlib>=0.7.1,<0.13",
    "flax>=0.10.0,<0.13",
    "optax>=0.2.3,<0.3",
    "orbax-checkpoint>=0.10.0,<0.13",
    "numpy>=1.26,<3",
    "seqio>=0.0.19,<0.1",
    "tensorflow>=2.16,<2.22",
    "tensorflow-text>=2.16,<2.22",
    "gin-config>=0.5.0,<0.6",
    "transformers>=4.44,<6",
    "safetensors>=0.4,<1",
    "sentencepiece>=0.2,<0.3",
    "tensorboard>=2.16,<2.22",
    "rouge-score>=0.1.2,<0.2",
    "jinja2>=3.1,<4",
    "pyyaml>=6,<7",
    "msgpack>=1.0,<2",
    "tqdm>=4.60,<5",
]

TEST_REQUIRES = [
    "pytest>=8,<10",
    "torch==2.13.0",
    "peft>=0.13,<0.22",
    "nbclient>=0.10,<0.12",
    "nbformat>=5.9,<6",
    "ipykernel>=6.29,<8",
    "matplotlib>=3.8,<4",
]

# Accelerators: `pip install -e ".[gpu]"` (CUDA 12 wheels) or `".[tpu]"` (libtpu).
GPU_REQUIRES = ["jax[cuda12]>=0.7.1,<0.13"]
TPU_REQUIRES = ["jax[tpu]>=0.7.1,<0.13"]

# Running the notebooks by hand (the test extra covers them too).
NOTEBOOK_REQUIRES = ["jupyter>=1.0,<2", "matplotlib>=3.8,<4"]


class build_py(_build_py):
  """Ships the repository's ``gin/`` inside wheels as ``hyper_tasks/gin``.

  The configs live at the top level (one folder per concern, as in t5x), so a wheel
  would otherwise lack them; ``gin_utils.default_search_paths`` looks in both places.
  Editable installs find ``gin/`` beside the package and need no copy.
  """

  def run(self):
    super().run()
    if getattr(self, "editable_mode", False):
      return
    src = os.path.join(ROOT, "gin")
    for dirpath, _, filenames in os.walk(src):
      for name in sorted(filenames):
        if not name.endswith(".gin"):
          continue
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        dst = os.path.join(self.build_lib, "hyper_tasks", "gin", rel)
        self.mkpath(os.path.dirname(dst))
        self.copy_file(os.path.join(dirpath, name), dst)


# The embedded data folders hold no Python; listing them as (namespace) packages keeps
# setuptools from warning that package data sits outside any package.
PACKAGES = setuptools.find_namespace_packages(
    include=["hyper_tasks", "hyper_tasks.*"], exclude=["*.__pycache__"])

setuptools.setup(
    name="hyper-tasks",
    version="0.1.0",
    description="Hypernetwork instruction tuning (HINT-style) for T5 on JAX/Flax",
    packages=PACKAGES,
    package_data={"hyper_tasks": ["data/embedded/**/*", "data/embedded/*"]},
    cmdclass={"build_py": build_py},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "notebooks": NOTEBOOK_REQUIRES,
                    "gpu": GPU_REQUIRES, "tpu": TPU_REQUIRES},
    entry_points={"console_scripts": ["hyper-tasks=hyper_tasks.cli:main"]},
)
