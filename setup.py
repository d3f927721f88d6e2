"""hyper-tasks: hypernetwork instruction tuning (HINT-style) on JAX/Flax."""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.35,<0.13",
    "jaxlib>=0.4.35,<0.13",
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

# Running the notebooks by hand (the test extra covers them too).
NOTEBOOK_REQUIRES = ["jupyter>=1.0,<2", "matplotlib>=3.8,<4"]

setuptools.setup(
    name="hyper-tasks",
    version="0.1.0",
    description="Hypernetwork instruction tuning (HINT-style) for T5 on JAX/Flax",
    packages=setuptools.find_packages(include=["hyper_tasks", "hyper_tasks.*"]),
    package_data={"hyper_tasks": ["data/embedded/**/*", "data/embedded/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "notebooks": NOTEBOOK_REQUIRES},
    entry_points={"console_scripts": ["hyper-tasks=hyper_tasks.cli:main"]},
)
