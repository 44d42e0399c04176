"""Optimizer wrappers that clip the gradient norm of the mixing weights.

The SSN recipe clips the joint gradient norm of all SN/SSN lambdas at 1.0
and leaves every other gradient alone. mmengine's ``clip_grad`` clips the
joint norm of *all* parameters, which is a different thing, so mmnorm
provides this wrapper. Mixing weights are recognised by the marker that
mmnorm layers put on them (:data:`MIXING_WEIGHT_FLAG`), so the wrapper
works with any param-group layout.

Under mixed precision the gradients that backward leaves are scaled by the
loss scale :math:`s`; a norm bound on them would bound :math:`s\\,g`, not
:math:`g`. :class:`AmpMixingWeightClipOptimWrapper` therefore unscales
once (``GradScaler.unscale_``, which may run only once per step) and then
clips the lambdas and, if configured, all parameters, on the true
gradients. ``tools/train.py --amp`` picks it for configs that use
:class:`MixingWeightClipOptimWrapper` (:func:`amp_optim_wrapper_type`).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from ..layers.sn import MIXING_WEIGHT_FLAG


def mixing_weight_params(optimizer: torch.optim.Optimizer) -> list:
    """The parameters of ``optimizer`` that are mmnorm mixing weights."""
    return [p for group in optimizer.param_groups for p in group['params']
            if getattr(p, MIXING_WEIGHT_FLAG, False)]


class _LambdaClipMixin:
    """The lambda clipping shared by the fp32 and the AMP wrapper."""

    lambda_max_norm: Optional[float]

    def _set_lambda_max_norm(self, value: Optional[float]) -> None:
        if value is not None and not value > 0:
            raise ValueError(f'{type(self).__name__}: lambda_max_norm must '
                             f'be > 0 or None, got {value}')
        self.lambda_max_norm = value

    def _clip_lambdas(self) -> None:
        """Clip the lambdas' joint L2 gradient norm (in place).

        With :math:`g` the concatenated lambda gradients and :math:`c` =
        ``lambda_max_norm``, every lambda gradient is multiplied by
        :math:`\\min(1, c / (\\lVert g\\rVert_2 + 10^{-6}))`, as
        ``torch.nn.utils.clip_grad_norm_`` does.
        """
        if self.lambda_max_norm is None:
            return
        params = [p for p in mixing_weight_params(self.optimizer)
                  if p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params,
                                                  self.lambda_max_norm)
            self.message_hub.update_scalar('train/lambda_grad_norm',
                                           float(norm))


@OPTIM_WRAPPERS.register_module()
class MixingWeightClipOptimWrapper(_LambdaClipMixin, OptimWrapper):
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
        self._set_lambda_max_norm(lambda_max_norm)

    def step(self, **kwargs) -> None:
        self._clip_lambdas()
        super().step(**kwargs)


@OPTIM_WRAPPERS.register_module()
class AmpMixingWeightClipOptimWrapper(_LambdaClipMixin, AmpOptimWrapper):
    """Mixed-precision :class:`MixingWeightClipOptimWrapper`.

    ``step`` unscales the gradients exactly once, clips the lambdas' joint
    norm at ``lambda_max_norm`` on the unscaled gradients, then applies
    ``clip_grad`` (if any) to all parameters, and lets the scaler step
    (skipped when the unscale found an inf/NaN) and update its scale.

    Args:
        lambda_max_norm: as for :class:`MixingWeightClipOptimWrapper`.
        **kwargs: as for mmengine's ``AmpOptimWrapper`` (``loss_scale``,
            ``dtype``, ``optimizer``, ``clip_grad``, ...).

    Config (what ``tools/train.py --amp`` makes of the SSN recipe)::

        optim_wrapper = dict(type='AmpMixingWeightClipOptimWrapper',
                             loss_scale='dynamic', lambda_max_norm=1.0,
                             optimizer=...)
    """

    def __init__(self, *args, lambda_max_norm: Optional[float] = 1.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._set_lambda_max_norm(lambda_max_norm)

    def step(self, **kwargs) -> None:
        if self.lambda_max_norm is not None or self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)  # the one unscale_
            self._clip_lambdas()
            if self.clip_grad_kwargs:
                self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)


#: fp32 wrapper type -> its mixed-precision counterpart
AMP_WRAPPERS = {
    'OptimWrapper': 'AmpOptimWrapper',
    'MixingWeightClipOptimWrapper': 'AmpMixingWeightClipOptimWrapper',
}


def amp_optim_wrapper_type(wrapper_type: Union[str, type, None]) -> str:
    """The AMP wrapper type ``--amp`` should use in place of
    ``wrapper_type`` (a config's ``optim_wrapper.type``; ``None`` means
    mmengine's default ``OptimWrapper``).

    AMP types are kept; :class:`MixingWeightClipOptimWrapper` becomes
    :class:`AmpMixingWeightClipOptimWrapper`, ``OptimWrapper``
    ``AmpOptimWrapper``; any other wrapper raises, since swapping it would
    drop what it does.
    """
    if wrapper_type is None:
        wrapper_type = 'OptimWrapper'
    if isinstance(wrapper_type, type):
        wrapper_type = wrapper_type.__name__
    if wrapper_type in AMP_WRAPPERS.values():
        return wrapper_type
    if wrapper_type not in AMP_WRAPPERS:
        raise ValueError(
            f'--amp: optim_wrapper.type {wrapper_type!r} has no mixed-'
            f'precision counterpart; allowed: '
            f'{sorted(AMP_WRAPPERS) + sorted(AMP_WRAPPERS.values())}')
    return AMP_WRAPPERS[wrapper_type]
