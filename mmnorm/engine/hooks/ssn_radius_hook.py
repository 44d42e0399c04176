"""Hook that sets the SparsestMax radius of every SSN layer.

The authors grow the radius linearly from 0 to 1 over training, set before
every iteration: ``r = iteration / total_iterations``. With three branches
every layer is one-hot (and frozen) once ``r >= sqrt(2/3)``, about 82% into
training. The radius is read from ``runner.iter``, so it follows
iteration- and epoch-based loops alike and continues correctly after
``--resume``; it is also kept in each layer's ``radius`` buffer, hence in
checkpoints.
"""
from __future__ import annotations

from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...layers.ssn import SparseSwitchableNorm


@HOOKS.register_module()
class SSNRadiusHook(Hook):
    """Linear SparsestMax radius schedule.

    Args:
        ramp: fraction of training over which the radius grows from 0 to
            ``max_radius`` (1.0: the authors' schedule over all iterations).
        max_radius: final radius.

    Config::

        custom_hooks = [dict(type='SSNRadiusHook')]
    """

    priority = 'NORMAL'

    def __init__(self, ramp: float = 1.0, max_radius: float = 1.0) -> None:
        if not 0 < ramp <= 1 or max_radius < 0:
            raise ValueError('SSNRadiusHook: ramp must be in (0, 1] and '
                             f'max_radius >= 0, got {ramp}, {max_radius}')
        self.ramp = ramp
        self.max_radius = max_radius

    def radius_at(self, iteration: int, max_iters: int) -> float:
        progress = iteration / max(max_iters * self.ramp, 1)
        return self.max_radius * min(progress, 1.0)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[Any] = None) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        radius = self.radius_at(runner.iter, runner.max_iters)
        for module in model.modules():
            if isinstance(module, SparseSwitchableNorm):
                module.set_radius(radius)
