"""Kalman Normalization (Wang et al., 2018) as an OpenMMLab norm layer.

A KN layer normalizes with a mixture of the batch (or micro-batch group)
statistics it observes and a prediction carried from the KN layer before it
through the operator between them (the layer's own convolution):

    mean = q * mean_obs + p * mean_pred
    var  = q * var_obs + p * var_pred + q * p * (mean_obs - mean_pred)^2

with ``p = prior_weight`` and gain ``q = 1 - p``. When the mean over channels
and groups of ``var_pred / var_obs`` is 100 or more, the layer uses the
observation alone (one decision per layer). In inference it is BN with the
moving averages of the combined statistics. A layer without a predecessor
(the first of a chain) is BN.

Where the prediction comes from is set by wiring, not by the layer:
:mod:`mmnorm.models.kalman_chain` links the layers of a KN ResNet
(``ResNetKN``) and, with ``KalmanChainHook`` or
:func:`~mmnorm.models.kalman_chain.wire_kalman_chains`, the ConvModules of
necks and heads. See docs/kalman_norm.md for every choice.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import dispatch
from ..ops.kalman import (
    group_moments,
    kalman_combine_where,
    linear_moments,
    moments_shape_ok,
    normalize,
    prior_diverges,
    rectified_moments,
    sampled_moments,
)
from ..ops.plain import kalman_norm_plain

#: the paper's prior weight ``p`` for large batches (e.g. 32 images per GPU)
PRIOR_WEIGHT_LARGE_BATCH = 0.05
#: the paper's prior weight ``p`` for micro-batches (2 images per statistic)
PRIOR_WEIGHT_MICRO_BATCH = 0.9
PREDICTORS = ('analytic', 'sampled')

_warned_unwired = False


class KalmanLink(Protocol):
    """What a KN layer needs from its predecessor (set by the wiring)."""

    #: the convolution or linear layer between the two KN layers
    operator: nn.Module
    #: a ReLU sits between the predecessor's statistics and ``operator``
    rectify: bool

    def source_state(self) -> Optional[tuple[Tensor, Tensor]]:
        """The predecessor's combined ``(mean, var)``, each ``(G, C_in)``,
        from the current forward pass, or None."""


class KalmanNorm(_BatchNorm):
    """Kalman Normalization over input of rank 2 to 5.

    Args:
        num_features: channel count ``C``.
        eps: added to the variance. Default: 1e-5.
        momentum: weight of the newest combined statistics in the running
            averages (PyTorch convention; None: cumulative average).
            Default: 0.1.
        affine: learn per-channel ``weight`` and ``bias``. Default: True.
        track_running_stats: keep running averages for inference.
            Default: True.
        prior_weight: the paper's ``p = 1 - q``, the weight of the
            prediction. Default None: 0.9 when ``group_size`` is set (the
            paper's micro-batch setting), else 0.05 (large batches).
        group_size: compute the observed statistics over groups of this many
            samples inside the batch (the paper's micro-batch setting);
            None: the whole batch is one group.
        predictor: ``'analytic'`` (default): propagate the predecessor's
            moments through ReLU and the operator in closed form;
            ``'sampled'``: the authors' way, run the operator on a synthetic
            input drawn from the predecessor's statistics.
        divergence_ratio: use the observation alone when the mean of
            ``var_pred / var_obs`` reaches this. Default: 100.
        sample_count: synthetic samples per group (``'sampled'``).
        sample_size: spatial extent of each synthetic sample
            (``'sampled'``).

    Shape:
        - Input: ``(N, C, *)`` with ``N`` a multiple of ``group_size``.
        - Output: same as the input.

    Attributes set by the wiring (not constructor arguments):
        ``kn_link`` (a :class:`KalmanLink` or None), ``kn_keep_state``
        (remember ``kn_state``, the combined ``(mean, var)`` of the current
        pass, for successors) and ``kn_wired``. ``kn_last_prior`` records
        what the last training forward did: ``'none'``, ``'combined'`` or
        ``'diverged'`` (read from the device when asked for: the forward
        itself decides on the device and never waits for the decision).
    """

    _abbr_ = 'bn'
    # The toolkits' SyncBN converters must leave KN alone (it would lose
    # its prediction); folding into a conv is fine: inference is plain BN.
    sync_bn_convertible = False

    def __init__(self, num_features: int, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True,
                 prior_weight: Optional[float] = None,
                 group_size: Optional[int] = None,
                 predictor: str = 'analytic',
                 divergence_ratio: float = 100.0,
                 sample_count: int = 4, sample_size: int = 8) -> None:
        name = type(self).__name__
        if not isinstance(eps, (int, float)) or not eps > 0 \
                or not math.isfinite(eps):
            raise ValueError(f'{name}: eps must be a finite number > 0, '
                             f'got {eps!r}')
        if group_size is not None and (
                isinstance(group_size, bool) or not isinstance(group_size, int)
                or group_size < 1):
            raise ValueError(f'{name}: group_size must be a positive int or '
                             f'None (whole batch), got {group_size!r}')
        if prior_weight is None:
            prior_weight = (PRIOR_WEIGHT_MICRO_BATCH if group_size
                            else PRIOR_WEIGHT_LARGE_BATCH)
        if not isinstance(prior_weight, (int, float)) \
                or not 0.0 <= prior_weight < 1.0:
            raise ValueError(f'{name}: prior_weight (the paper\'s p) must be '
                             f'in [0, 1), got {prior_weight!r}')
        if predictor not in PREDICTORS:
            raise ValueError(f'{name}: predictor must be one of {PREDICTORS},'
                             f' got {predictor!r}')
        if not isinstance(divergence_ratio, (int, float)) \
                or not divergence_ratio > 0:
            raise ValueError(f'{name}: divergence_ratio must be > 0, '
                             f'got {divergence_ratio!r}')
        for arg, value in (('sample_count', sample_count),
                           ('sample_size', sample_size)):
            if isinstance(value, bool) or not isinstance(value, int) \
                    or value < 1:
                raise ValueError(f'{name}: {arg} must be a positive int, '
                                 f'got {value!r}')
        super().__init__(num_features, eps=float(eps), momentum=momentum,
                         affine=affine,
                         track_running_stats=track_running_stats)
        self.prior_weight = float(prior_weight)
        self.group_size = group_size
        self.predictor = predictor
        self.divergence_ratio = float(divergence_ratio)
        self.sample_count = sample_count
        self.sample_size = sample_size
        #: noise source of the sampled predictor (None: global RNG)
        self.noise_generator: Optional[torch.Generator] = None
        self.kn_link: Optional[KalmanLink] = None
        self.kn_keep_state = False
        self.kn_wired = False
        self.kn_state: Optional[tuple[Tensor, Tensor]] = None
        # None: no prediction in the last training forward; else the 0-dim
        # bool divergence decision on the device
        self._kn_diverged: Optional[Tensor] = None

    @property
    def kn_last_prior(self) -> str:
        """What the last training forward did with the prediction:
        ``'none'``, ``'combined'`` or ``'diverged'`` (a host read)."""
        if self._kn_diverged is None:
            return 'none'
        return 'diverged' if bool(self._kn_diverged) else 'combined'

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, prior_weight={self.prior_weight}, '
                f'group_size={self.group_size}, predictor={self.predictor!r}')

    def _check_input_dim(self, input: Tensor) -> None:
        name = type(self).__name__
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f'{name}: expected input of rank 2-5, got shape '
                             f'{tuple(input.shape)}')
        if input.shape[1] != self.num_features:
            raise ValueError(
                f'{name}: input has {input.shape[1]} channels (dim 1) but the '
                f'layer was built with num_features={self.num_features}')

    def _group_size(self, input: Tensor) -> int:
        n = input.shape[0]
        k = self.group_size or n
        if n % k:
            raise ValueError(
                f'{type(self).__name__}: batch of {n} samples is not a '
                f'multiple of group_size={k}')
        if k * input[0, 0].numel() < 2:
            raise ValueError(
                f'{type(self).__name__}: training needs more than one value '
                f'per channel and group, got input {tuple(input.shape)} with '
                f'group_size={k}')
        return k

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[0] == 0:  # empty: empty output, zero gradients
            out = input.clone()
            return out if self.weight is None else \
                out + 0 * (self.weight.sum() + self.bias.sum())
        if not (self.training or not self.track_running_stats):
            # inference: BN with the moving averages of the combined stats
            return F.batch_norm(input, self.running_mean, self.running_var,
                                self.weight, self.bias, False, 0.0, self.eps)
        if dispatch.is_exporting():
            return self._export_forward(input)
        if self.training and not self.kn_wired:
            _warn_unwired()
        k = self._group_size(input)
        update = self.training and self.track_running_stats
        if update:
            self.num_batches_tracked.add_(1)
        prior_input = self.kn_link.source_state() if self.kn_link else None
        if prior_input is None and k == input.shape[0] \
                and not self.kn_keep_state:
            self._kn_diverged = None
            return self._batch_norm(input, update)
        stats_input = input.float() if input.dtype in (
            torch.float16, torch.bfloat16) else input
        obs_mean, obs_var = group_moments(stats_input, k)
        prediction = self._predict(prior_input, obs_mean.shape[0])
        mean, var = obs_mean, obs_var
        diverged = None
        if prediction is not None:
            # decided and applied on the device, never read back here
            diverged = prior_diverges(prediction[1], obs_var,
                                      self.divergence_ratio, self.eps)
            mean, var = kalman_combine_where(diverged, obs_mean, obs_var,
                                             *prediction, self.prior_weight)
        self._kn_diverged = diverged
        if self.kn_keep_state:
            self.kn_state = (mean, var)
        if update:
            self._update_running(obs_mean, obs_var, prediction, diverged,
                                 k * input[0, 0].numel())
        out = normalize(stats_input, mean, var, self.eps, self.weight,
                        self.bias)
        return out.to(input.dtype)

    def _export_forward(self, input: Tensor) -> Tensor:
        """Batch statistics from plain ops, for ONNX / TorchScript export:
        the eager path's ``F.batch_norm(training=True)`` and reshapes into
        groups do not export with a dynamic batch. A diverged prediction is
        replaced by the observation, which the Kalman combination maps to
        the observation itself (the eager path's decision, branch-free)."""
        prior_input = self.kn_link.source_state() if self.kn_link else None
        k = self.group_size or input.shape[0]
        prediction = self._predict(prior_input, input.shape[0] // k)
        if prediction is not None:
            stats_input = input.float() if input.dtype in (
                torch.float16, torch.bfloat16) else input
            obs_mean, obs_var = group_moments(stats_input, k)
            diverged = prior_diverges(prediction[1], obs_var,
                                      self.divergence_ratio, self.eps)
            prediction = (torch.where(diverged, obs_mean, prediction[0]),
                          torch.where(diverged, obs_var, prediction[1]))
        return kalman_norm_plain(input, self.weight, self.bias, self.eps,
                                 self.group_size, prediction,
                                 self.prior_weight)

    def _average_factor(self) -> Union[float, Tensor]:
        """The weight of the newest statistics in the running averages: a
        0-dim tensor (no host read) for the cumulative average."""
        if self.momentum is None:
            return 1.0 / self.num_batches_tracked.to(self.running_mean.dtype)
        return self.momentum

    def _batch_norm(self, input: Tensor, update: bool) -> Tensor:
        """Plain BN in training mode (a layer without a prediction)."""
        if not update or self.momentum is not None:
            return F.batch_norm(input, self.running_mean, self.running_var,
                                self.weight, self.bias, True,
                                self.momentum if update else 0.0, self.eps)
        # Cumulative average: the batch statistics (unbiased variance, as
        # BN tracks it) go into scratch buffers with momentum 1, then into
        # the running ones with the tensor weight 1 / num_batches_tracked.
        batch_mean = torch.zeros_like(self.running_mean)
        batch_var = torch.zeros_like(self.running_var)
        out = F.batch_norm(input, batch_mean, batch_var, self.weight,
                           self.bias, True, 1.0, self.eps)
        factor = self._average_factor()
        with torch.no_grad():
            self.running_mean.lerp_(batch_mean, factor)
            self.running_var.lerp_(batch_var, factor)
        return out

    def _predict(self, prior_input: Optional[tuple[Tensor, Tensor]],
                 groups: int) -> Optional[tuple[Tensor, Tensor]]:
        """The prediction ``(mean, var)``, each ``(G, C)``, or None when the
        predecessor's statistics are missing or do not fit."""
        link = self.kn_link
        if link is None or prior_input is None:
            return None
        operator = link.operator
        in_channels = operator.weight.shape[1] * getattr(operator, 'groups', 1)
        if not moments_shape_ok(prior_input, groups, in_channels) \
                or operator.weight.shape[0] != self.num_features:
            return None
        mean_in, var_in = prior_input
        if self.predictor == 'sampled':
            return sampled_moments(operator, mean_in, var_in, link.rectify,
                                   self.sample_count, self.sample_size,
                                   self.noise_generator)
        if link.rectify:
            mean_in, var_in = rectified_moments(mean_in, var_in)
        return linear_moments(operator, mean_in, var_in)

    @torch.no_grad()
    def _update_running(self, obs_mean: Tensor, obs_var: Tensor,
                        prediction: Optional[tuple[Tensor, Tensor]],
                        diverged: Optional[Tensor], count: int) -> None:
        """Moving averages of the combined statistics (the observed ones
        where the prediction ``diverged``), with the observed variance made
        unbiased as BN does; averaged over groups."""
        unbiased = obs_var * (count / (count - 1))
        if prediction is None:
            mean, var = obs_mean, unbiased
        else:
            mean, var = kalman_combine_where(diverged, obs_mean, unbiased,
                                             *prediction, self.prior_weight)
        factor = self._average_factor()
        self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype),
                                factor)
        self.running_var.lerp_(var.mean(0).to(self.running_var.dtype),
                               factor)


def _warn_unwired() -> None:
    global _warned_unwired
    if not _warned_unwired:
        _warned_unwired = True
        warnings.warn(
            'KN layers outside a KN backbone have no predecessor unless the '
            "model is wired: add dict(type='KalmanChainHook') to "
            'custom_hooks (or call mmnorm.models.wire_kalman_chains(model)); '
            'until then they behave as BN.', stacklevel=3)
