"""A normalizer with one fixed statistics source for means and one for
variances: what a frozen SSN layer (or a hardened SN layer) computes.

Sources are indices into [IN, LN, BN]. The statistics follow SN exactly
(unbiased IN variance, LN/BN derived from the IN moments), so replacing a
fixed SSN layer by this module changes nothing, but only the chosen
statistics are computed. When both sources are BN, use plain ``BatchNorm``
in eval mode instead (see :mod:`mmnorm.deploy`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import BRANCHES, dispatch, moment_norm
from ..ops.switchable import KERNEL_MIXES, SwitchableMix
from .sn import update_running_stats


class FixedSourceMix(SwitchableMix):
    """:class:`SwitchableMix` with constant one-hot weights that skips the
    branches it does not use."""

    def __init__(self, mean_source: int, var_source: int,
                 flat_input: bool = False) -> None:
        super().__init__(flat_input)
        self.mean_source = mean_source
        self.var_source = var_source

    def forward(self, mean_in, var_in, mean_weight, var_weight,
                running_mean=None, running_var=None):
        sources = (self.mean_source, self.var_source)
        mean_bn = var_bn = None
        if 2 in sources:
            if running_mean is None:
                mean_bn, var_bn = self.batch_stats(mean_in, var_in)
            else:
                mean_bn, var_bn = running_mean, running_var
            var_bn = var_bn.clamp(min=0)
        if 1 in sources:
            mean_ln, var_ln, _, _ = self._ln_stats(mean_in, var_in)
            var_ln = var_ln.clamp(min=0)
        pick_mean = (mean_in, None if 1 not in sources else mean_ln, mean_bn)
        pick_var = (var_in, None if 1 not in sources else var_ln, var_bn)
        mean = pick_mean[self.mean_source]
        var = pick_var[self.var_source]
        if mean_bn is None:  # aux outputs: the BN statistics, if any
            mean_bn = var_bn = mean_in.new_zeros(mean_in.shape[1])
        return mean, var, mean_bn, var_bn


# One-hot weights give the same statistics through the compiled mix (which
# computes the unused branches too, at no cost worth skipping).
KERNEL_MIXES.add(FixedSourceMix)


class FixedSourceNorm(_BatchNorm):
    """Normalize with IN, LN or BN means and IN, LN or BN variances.

    Args:
        num_features: channels ``C``.
        mean_source, var_source: index into [IN, LN, BN].
        eps, momentum, affine: as for :class:`SwitchableNorm`.

    Shape: ``(N, C, *)`` in and out. Has BN running buffers (and updates
    them in training) only if a source is BN.
    """

    _abbr_ = 'bn'
    folds_into_conv = False

    def __init__(self, num_features: int, mean_source: int, var_source: int,
                 eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True) -> None:
        for name, source in (('mean_source', mean_source),
                             ('var_source', var_source)):
            if source not in (0, 1, 2):
                raise ValueError(f'FixedSourceNorm: {name} must be 0 (IN), '
                                 f'1 (LN) or 2 (BN), got {source!r}')
        uses_bn = 2 in (mean_source, var_source)
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats=uses_bn)
        self.mean_source = mean_source
        self.var_source = var_source
        self._mixes = {flat: FixedSourceMix(mean_source, var_source, flat)
                       for flat in (False, True)}
        dispatch.prepare()  # load the kernels now, never inside a trace

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 2 and 0 in (self.mean_source, self.var_source):
            raise ValueError('FixedSourceNorm: (N, C) input has no IN '
                             'statistics')
        use_batch = self.training or not self.track_running_stats
        running = ((None, None) if use_batch
                   else (self.running_mean.clone(), self.running_var.clone()))
        mean_w = input.new_zeros(3, dtype=torch.float32)
        var_w = torch.zeros_like(mean_w)
        mean_w[self.mean_source] = 1.0
        var_w[self.var_source] = 1.0
        y, batch_mean, batch_var = moment_norm(
            input, self.weight, self.bias, self.eps,
            self._mixes[input.dim() == 2], mean_w, var_w, *running)
        if self.training and self.track_running_stats:
            update_running_stats(self, batch_mean, batch_var)
        return y

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, '
                f'mean={BRANCHES[self.mean_source]}, '
                f'var={BRANCHES[self.var_source]}')
