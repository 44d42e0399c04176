"""An optimizer wrapper that clips the gradient norm of the mixing weights.

The SSN recipe clips the joint gradient norm of all SN/SSN lambdas at 1.0
and leaves every other gradient alone. mmengine's ``clip_grad`` clips the
joint norm of *all* parameters, which is a different thing, so mmnorm
provides this wrapper. Mixing weights are recognised by the marker that
mmnorm layers put on them (:data:`MIXING_WEIGHT_FLAG`), so the wrapper
works with any param-group layout.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from ..layers.sn import MIXING_WEIGHT_FLAG


def mixing_weight_params(optimizer: torch.optim.Optimizer) -> list:
    """The parameters of ``optimizer`` that are mmnorm mixing weights."""
    return [p for group in optimizer.param_groups for p in group['params']
            if getattr(p, MIXING_WEIGHT_FLAG, False)]


@OPTIM_WRAPPERS.register_module()
class MixingWeightClipOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that also clips the lambdas' joint gradient norm.

    Args:
        lambda_max_norm: max joint L2 norm of the mixing-weight gradients
            (SSN recipe: 1.0); ``None`` disables it.
        **kwargs: as for ``OptimWrapper`` (``clip_grad`` still clips all
            parameters, after the lambdas were clipped).

    Config::

        optim_wrapper = dict(type='MixingWeightClipOptimWrapper',
                             lambda_max_norm=1.0, optimizer=...)
    """

    def __init__(self, *args, lambda_max_norm: Optional[float] = 1.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if lambda_max_norm is not None and lambda_max_norm <= 0:
            raise ValueError('MixingWeightClipOptimWrapper: lambda_max_norm '
                             f'must be > 0 or None, got {lambda_max_norm}')
        self.lambda_max_norm = lambda_max_norm

    def step(self, **kwargs) -> None:
        if self.lambda_max_norm is not None:
            params = [p for p in mixing_weight_params(self.optimizer)
                      if p.grad is not None]
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params,
                                                      self.lambda_max_norm)
                self.message_hub.update_scalar('train/lambda_grad_norm',
                                               float(norm))
        super().step(**kwargs)
