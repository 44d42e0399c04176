"""Switchable Normalization (Luo et al., 2019) as an OpenMMLab norm layer.

SN normalizes with a learned mixture of instance, layer and batch
statistics. mmnorm's layer:

* serves ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, T, H, W)``
  input with one class, so ``norm_cfg=dict(type='SN')`` works in 2D and 3D
  convolutions and in fully connected heads;
* subclasses :class:`torch.nn.modules.batchnorm._BatchNorm` with ``(C,)``
  ``weight``/``bias``/``running_mean``/``running_var``, so ``norm_eval``,
  ``frozen_stages``, default init, ``norm_decay_mult``, ``zero_init_residual``
  and BN-pretrained checkpoints treat it like BN;
* computes its output with the fused kernel of
  :mod:`mmnorm.ops.moment_norm` (one pass for statistics, one for the
  output; backward saves only the input).

Semantics follow the authors' code: unbiased IN variance, LN and BN
statistics derived from the IN ones, separate softmax weights for means and
variances in the order [IN, LN, BN], running BN statistics at inference while
IN and LN stay per sample. ``momentum`` follows PyTorch's convention.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import BRANCHES, SwitchableMix, dispatch, masked_softmax
from ..ops.moment_norm import switchable_norm

_SUPPORTED_RANKS = (2, 3, 4, 5)

#: Attribute set on every mixing-weight parameter (the lambdas), so that
#: optimizer code can find them without parameter names.
MIXING_WEIGHT_FLAG = '_mmnorm_mixing_weight'


@torch.no_grad()
def update_running_stats(module: _BatchNorm, batch_mean: Tensor,
                         batch_var: Tensor,
                         valid: Optional[Tensor] = None) -> None:
    """``running = (1 - f) running + f batch`` on the device, with ``f`` the
    module's momentum or, for ``momentum=None``, ``1 / num_batches_tracked``
    (a cumulative average); nothing changes where the 0-dim bool ``valid``
    is false."""
    mean = batch_mean.to(module.running_mean)
    var = batch_var.to(module.running_var)
    if valid is None:
        module.num_batches_tracked.add_(1)
    else:
        # NaN statistics of an empty batch must not reach the lerp
        mean = torch.where(valid, mean, module.running_mean)
        var = torch.where(valid, var, module.running_var)
        module.num_batches_tracked.add_(valid.long())
    if module.momentum is None:
        factor = module.num_batches_tracked.clamp(min=1).to(
            module.running_mean).reciprocal()
    else:
        factor = module.momentum
    module.running_mean.lerp_(mean, factor)
    module.running_var.lerp_(var, factor)


class SwitchableNorm(_BatchNorm):
    """Switchable Normalization over any input rank from 2 to 5.

    Args:
        num_features: channel count ``C``.
        eps: added to the mixed variance. Default: 1e-5.
        momentum: weight of the newest batch in the running statistics
            (PyTorch convention; ``None`` means a cumulative average).
            Default 0.1 equals the authors' SN2d keep factor 0.9; their
            detection, segmentation and video code keeps 0.997, i.e.
            ``momentum=0.003`` here.
        affine: learn a per-channel ``weight`` and ``bias``. Default: True.
        using_bn: include the BN branch. Without it the layer mixes IN and
            LN only, has no running buffers and behaves the same in training
            and inference (the authors' choice for batch size 1).
        using_moving_average: track running BN statistics by exponential
            moving average while training. When False, training leaves the
            buffers alone and they must be recomputed from the training data
            afterwards with :func:`mmnorm.engine.recompute_population_stats`
            (or the ``PopulationStatsHook``).

    Shape:
        - Input: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or
          ``(N, C, T, H, W)``.
        - Output: same as the input.

    Edge cases (never NaN for finite input):
        - ``(N, C)`` input has no IN branch (a single element per slice);
          the mixture is over [LN, BN] like the authors' SN1d.
        - A ``1 x 1`` map (PSP/ASPP pooling branches) has IN variance 0, so
          the IN part of the variance is 0 rather than NaN.
        - Batch size 1 in training: the BN statistics equal the IN ones
          (``(N, C)`` input: the BN variance is 0).
        - Constant input: every variance is 0 and the output is ``bias``.
    """

    # OpenMMLab names the attribute of a norm layer from ``_abbr_``: 'bn'
    # keeps state-dict keys (``bn1.weight``, ...) identical to a BN model's,
    # so BN-pretrained checkpoints load into SN models.
    _abbr_ = 'bn'
    # Not an affine map in eval mode: must never be folded into a conv.
    folds_into_conv = False

    mean_weight: torch.nn.Parameter
    var_weight: torch.nn.Parameter

    def __init__(self, num_features: int, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 using_bn: bool = True, using_moving_average: bool = True,
                 **unknown) -> None:
        name = type(self).__name__
        if unknown:
            raise TypeError(
                f'{name}: unknown argument(s) {sorted(unknown)}; allowed are '
                "num_features, eps, momentum, affine, using_bn, "
                'using_moving_average')
        if (isinstance(num_features, bool)
                or not isinstance(num_features, int) or num_features < 1):
            raise ValueError(f'{name}: num_features must be a positive int, '
                             f'got {num_features!r}')
        if not isinstance(eps, (int, float)) or not eps > 0 or \
                not math.isfinite(eps):
            raise ValueError(f'{name}: eps must be a finite number > 0 '
                             f'(0 would divide by zero on constant input), '
                             f'got {eps!r}')
        if momentum is not None and (not isinstance(momentum, (int, float))
                                     or not 0.0 <= momentum <= 1.0):
            raise ValueError(f'{name}: momentum must be in [0, 1] or None, '
                             f'got {momentum!r}')
        for flag, value in (('affine', affine), ('using_bn', using_bn),
                            ('using_moving_average', using_moving_average)):
            if not isinstance(value, bool):
                raise TypeError(f'{name}: {flag} must be a bool, '
                                f'got {value!r}')
        super().__init__(num_features, eps=float(eps), momentum=momentum,
                         affine=affine, track_running_stats=using_bn)
        self.using_bn = using_bn
        self.using_moving_average = using_moving_average
        self.mean_weight = torch.nn.Parameter(torch.ones(len(BRANCHES)))
        self.var_weight = torch.nn.Parameter(torch.ones(len(BRANCHES)))
        for lam in (self.mean_weight, self.var_weight):
            setattr(lam, MIXING_WEIGHT_FLAG, True)
        # Which of [IN, LN, BN] exist, for spatial and for (N, C) input.
        self.register_buffer('_branches_spatial',
                             torch.tensor([True, True, using_bn]),
                             persistent=False)
        self.register_buffer('_branches_flat',
                             torch.tensor([False, True, using_bn]),
                             persistent=False)
        self._last_rank = 4
        self._population: Optional[list] = None
        self._mix_spatial = SwitchableMix(flat_input=False)
        self._mix_flat = SwitchableMix(flat_input=True)
        dispatch.prepare()  # load the kernels now, never inside a trace

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, 'mean_weight'):
            with torch.no_grad():
                self.mean_weight.fill_(1.0)
                self.var_weight.fill_(1.0)

    def _check_input_dim(self, input: Tensor) -> None:
        name = type(self).__name__
        if input.dim() not in _SUPPORTED_RANKS:
            raise ValueError(
                f'{name}: expected input of rank 2-5 ((N, C), (N, C, L), '
                f'(N, C, H, W) or (N, C, T, H, W)), got shape '
                f'{tuple(input.shape)}')
        if input.shape[1] != self.num_features:
            raise ValueError(
                f'{name}: input has {input.shape[1]} channels (dim 1) but the '
                f'layer was built with num_features={self.num_features}')
        if input.shape[0] > 0 and 0 in input.shape[2:]:
            raise ValueError(f'{name}: got an input without elements per '
                             f'channel, shape {tuple(input.shape)}')
        if not input.is_floating_point():
            raise TypeError(f'{name}: input must be a floating point tensor, '
                            f'got {input.dtype}')

    def _available(self, flat: bool) -> Tensor:
        return self._branches_flat if flat else self._branches_spatial

    def mixing_weights(self, flat: bool = False) -> tuple[Tensor, Tensor]:
        """Current ``(3,)`` weights over [IN, LN, BN] for means and variances.

        Args:
            flat: weights for ``(N, C)`` input (no IN branch).
        """
        available = self._available(flat)
        return (masked_softmax(self.mean_weight, available),
                masked_softmax(self.var_weight, available))

    def _mix(self, flat: bool) -> SwitchableMix:
        """How the statistics are mixed (SyncSN shares the BN branch)."""
        return self._mix_flat if flat else self._mix_spatial

    def _op_weights(self, flat: bool) -> tuple[Tensor, Tensor,
                                               Optional[Tensor],
                                               Optional[Tensor]]:
        """What a training/inference forward hands the op:
        ``(mean_param, var_param, available, choices)`` (see
        :func:`mmnorm.ops.switchable_norm`). SN gives its lambdas and the
        available branches, so the op takes their softmax itself;
        subclasses may update state here (SSN recording a choice)."""
        return self.mean_weight, self.var_weight, self._available(flat), None

    def ratios(self) -> dict[str, dict[str, float]]:
        """Mixing ratios by name for the input rank last seen, e.g.
        ``{'mean': {'in': .2, 'ln': .3, 'bn': .5}, 'var': {...}}``."""
        with torch.no_grad():
            mean_w, var_w = self.mixing_weights(self._last_rank == 2)
        return {kind: dict(zip(BRANCHES, w.tolist()))
                for kind, w in (('mean', mean_w), ('var', var_w))}

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        rank = input.dim()
        flat = rank == 2
        # for ratios(); skipped under torch.compile, where a Python
        # attribute changed in forward would be a guard and a recompile
        if not torch.compiler.is_compiling() and rank != self._last_rank:
            self._last_rank = rank
        use_batch = self._uses_batch_stats()
        # Copies: a later training forward updates the buffers in place,
        # which must not invalidate this forward's graph.
        running = ((None, None) if use_batch
                   else (self.running_mean.clone(), self.running_var.clone()))
        mean_param, var_param, available, choices = self._op_weights(flat)
        if input.numel() == 0:
            return self._empty_output(input, mean_param, var_param)
        y, batch_mean, batch_var = switchable_norm(
            input, self.weight, self.bias, self.eps, self._mix(flat),
            mean_param, var_param, *running, available=available,
            choices=choices)
        if use_batch and self.training and self.track_running_stats:
            self._track(batch_mean, batch_var)
        return y

    def _empty_output(self, input: Tensor, *weights: Tensor) -> Tensor:
        """An empty batch (e.g. a mask head without positives) gives an
        empty output like BatchNorm; every parameter stays in the graph
        with zero gradient so DDP sees none unused (``weights``: the
        mixing params in the graph)."""
        used = sum(w.sum() for w in weights)
        if self.affine:
            used = used + self.weight.sum() + self.bias.sum()
        return input * 0 + used * 0

    @torch.no_grad()
    def _track(self, batch_mean: Tensor, batch_var: Tensor,
               valid: Optional[Tensor] = None) -> None:
        """Fold one training batch's BN statistics into the buffers, on the
        device (no host synchronisation).

        Args:
            batch_mean, batch_var: ``(C,)`` statistics of the batch.
            valid: optional 0-dim bool tensor; where false (e.g. every
                rank's batch was empty) the buffers and
                ``num_batches_tracked`` stay as they are.
        """
        if self._population is not None:
            # recompute_population_stats pools the valid batches afterwards
            if valid is None:
                valid = torch.ones((), dtype=torch.bool,
                                   device=batch_mean.device)
            self._population.append((batch_mean.float(), batch_var.float(),
                                     valid))
            return
        if not self.using_moving_average:
            return
        update_running_stats(self, batch_mean, batch_var, valid)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, using_bn={self.using_bn}, '
                f'using_moving_average={self.using_moving_average}')
