"""The grouped optimizers the trainer uses, and the public optimizer API.

* :func:`make_optimizer` builds ``optax.multi_transform`` over ordered regex
  :class:`ParamGroup` s, one t5x-style :func:`adafactor` per trainable group
  (``train/adafactor.py``: the update rule and the learning-rate schedules);
  groups, labels and the grouped state live in ``train/param_groups.py``.
* HINT's setups, bound by ``gin/optim/*.gin``: :func:`adafactor_dual`,
  :func:`frozen_backbone`, :func:`hypernet_only`.

This module is the facade: it re-exports the names of ``adafactor`` and
``param_groups`` that callers use (``optimizers.ParamGroup``,
``optimizers.rsqrt_decay``, ...), and every gin configurable of the three modules is
registered under the gin module ``hyper_tasks.train.optimizers``. Restoring a
group's state from a checkpoint is ``train/opt_state_restore.py``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Optional

import gin
import jax
import optax

from hyper_tasks.train.adafactor import (AdafactorState, LearningRate, Schedule,
                                         adafactor, as_schedule, constant,
                                         decay_rate_at, factored_dims,
                                         linear_warmup_rsqrt_decay, rsqrt_decay,
                                         warmup_cosine_decay)
from hyper_tasks.train.param_groups import (GroupLike, ParamGroup, group_counts,
                                            group_of, learning_rates,
                                            map_group_states, state_partition_specs)
from hyper_tasks.train import param_groups

__all__ = [
    "AdafactorState", "GroupLike", "GroupedOptimizer", "LearningRate", "ParamGroup",
    "Schedule", "adafactor", "adafactor_dual", "as_schedule", "constant",
    "decay_rate_at", "factored_dims", "frozen_backbone", "group_counts", "group_of",
    "hypernet_only", "learning_rates", "linear_warmup_rsqrt_decay",
    "make_optimizer", "map_group_states", "rsqrt_decay", "state_partition_specs",
    "warmup_cosine_decay",
]

_GIN_MODULE = "hyper_tasks.train"

@dataclasses.dataclass(frozen=True)
class GroupedOptimizer:
  """An optax transformation plus the groups it was built from.

  It quacks like ``optax.GradientTransformation`` (``init``/``update``) and adds the
  group-aware helpers the trainer needs.
  """
  tx: optax.GradientTransformation
  groups: tuple[ParamGroup, ...]

  def init(self, params):
    return self.tx.init(params)

  def update(self, updates, state, params=None, **extra_args):
    return self.tx.update(updates, state, params, **extra_args)

  def group_of(self, params) -> dict[str, str]:
    return group_of(params, self.groups)

  def learning_rates(self, state_or_step) -> dict[str, jax.Array]:
    return learning_rates(self.groups, state_or_step)

  @property
  def group_names(self) -> tuple[str, ...]:
    return tuple(g.name for g in self.groups)


@gin.configurable(module=_GIN_MODULE)
def make_optimizer(groups: Iterable[GroupLike],
                   default_group: Optional[GroupLike] = None,
                   **adafactor_kwargs) -> GroupedOptimizer:
  """Builds ``optax.multi_transform`` over ordered regex groups.

  Args:
    groups: ordered :class:`ParamGroup` (or dicts of its fields); the first group
      whose pattern is found in a parameter path owns the parameter.
    default_group: optional group for every path no pattern matches (its pattern is
      ignored). Without it an unmatched path is an error naming the path.
    **adafactor_kwargs: shared :func:`adafactor` settings (``beta1``,
      ``decay_rate``, ``clipping_threshold``, ...). Per-group learning rate, step
      offset and weight decay come from the groups.

  Returns:
    A :class:`GroupedOptimizer`.
  """
  groups = param_groups.as_groups(groups, default_group)
  for key in ("learning_rate", "step_offset", "weight_decay"):
    if key in adafactor_kwargs:
      raise ValueError(f"{key!r} is set per ParamGroup, not in adafactor_kwargs.")
  transforms = {}
  for g in groups:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
    else:
      transforms[g.name] = adafactor(g.learning_rate, step_offset=g.step_offset,
                                     weight_decay=g.weight_decay, **adafactor_kwargs)
  tx = optax.multi_transform(
      transforms, lambda tree: param_groups.group_labels(tree, groups))
  return GroupedOptimizer(tx=tx, groups=groups)


# --------------------------------------------------------------------------------------
# HINT's setups (gin: gin/optim/*.gin).
# --------------------------------------------------------------------------------------

HYPERNET_PATTERN = r"^hypernet/"
PEFT_PATTERN = r"^peft/"


@gin.configurable(module=_GIN_MODULE)
def adafactor_dual(backbone_lr: LearningRate = 1e-3,
                   hypernet_lr: LearningRate = 1e-4,
                   hypernet_step_offset: int = 0,
                   backbone_step_offset: int = 0,
                   weight_decay: float = 0.0,
                   **adafactor_kwargs) -> GroupedOptimizer:
  """Two Adafactors: ``hypernet/`` at ``hypernet_lr``, the rest at ``backbone_lr``."""
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr,
                 step_offset=hypernet_step_offset, weight_decay=weight_decay),
      ParamGroup("backbone", "", backbone_lr, step_offset=backbone_step_offset,
                 weight_decay=weight_decay),
  ], **adafactor_kwargs)


@gin.configurable(module=_GIN_MODULE)
def frozen_backbone(hypernet_lr: LearningRate = 1e-4,
                    peft_lr: Optional[LearningRate] = None,
                    weight_decay: float = 0.0,
                    **adafactor_kwargs) -> GroupedOptimizer:
  """Backbone frozen (no state); ``hypernet/`` and ``peft/`` trained.

  ``peft_lr`` defaults to ``hypernet_lr``.
  """
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr, weight_decay=weight_decay),
      ParamGroup("peft", PEFT_PATTERN,
                 hypernet_lr if peft_lr is None else peft_lr,
                 weight_decay=weight_decay),
      ParamGroup("backbone", "", frozen=True),
  ], **adafactor_kwargs)


@gin.configurable(module=_GIN_MODULE)
def hypernet_only(hypernet_lr: LearningRate = 1e-4,
                  weight_decay: float = 0.0,
                  **adafactor_kwargs) -> GroupedOptimizer:
  """Only ``hypernet/`` is trained; backbone and ``peft/`` are frozen."""
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr, weight_decay=weight_decay),
      ParamGroup("frozen", "", frozen=True),
  ], **adafactor_kwargs)
