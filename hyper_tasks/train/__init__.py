"""Training: optimizers and parameter groups, restore rules, checkpoints, sharding.

Submodules are imported explicitly (``from hyper_tasks.train import optimizers``);
nothing heavy is imported here.
"""
