"""Statistics of Switchable Normalization, derived from per-sample moments.

Pure tensor math on ``(N, C)`` tensors, used as the ``mix`` of
:func:`mmnorm.ops.moment_norm.moment_norm`. Branch order is always
``[IN, LN, BN]`` (index 0, 1, 2), in weights, state dicts, logs and plots.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

BRANCHES = ('in', 'ln', 'bn')


def _bessel(count: int) -> float:
    """``count / (count - 1)``, or 1 when there is a single element."""
    return count / (count - 1) if count > 1 else 1.0


def switchable_stats(mean_in: Tensor, var_in: Tensor, mean_weight: Tensor,
                     var_weight: Tensor, running_mean: Optional[Tensor] = None,
                     running_var: Optional[Tensor] = None, *,
                     flat_input: bool = False
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix IN, LN and BN statistics the way SN does.

    Args:
        mean_in, var_in: ``(N, C)`` per-sample, per-channel mean and unbiased
            variance (see :func:`mmnorm.ops.moment_norm.instance_moments`).
        mean_weight, var_weight: ``(3,)`` mixing weights over [IN, LN, BN]
            (already normalized, e.g. by softmax).
        running_mean, running_var: ``(C,)`` statistics to use for the BN
            branch instead of the batch's (inference); ``None`` in training.
        flat_input: the input was ``(N, C)`` (one element per slice). LN and
            BN variances are then the unbiased variances over channels and
            over samples, as in the authors' SN1d; with a single sample the
            BN variance is 0 instead of NaN.

    Returns:
        ``(mean, var, batch_mean, batch_var)``: the mixed ``(N, C)``
        statistics, and the ``(C,)`` BN-branch statistics of this batch
        (what running buffers track).
    """
    num_samples, num_channels = mean_in.shape
    # var_ln = mean_c(var_in + mean_in^2) - mean_ln^2 in the paper; written
    # as within- plus between-slice variance, which is the same number
    # without the float32 cancellation when means dwarf the spread.
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = var_in.mean(1, keepdim=True) + \
        (mean_in - mean_ln).square().mean(1, keepdim=True)
    batch_mean = mean_in.mean(0)
    batch_var = var_in.mean(0) + (mean_in - batch_mean).square().mean(0)
    if flat_input:
        var_ln = var_ln * _bessel(num_channels)
        batch_var = batch_var * _bessel(num_samples)

    if running_mean is None:
        mean_bn, var_bn = batch_mean, batch_var
    else:
        mean_bn, var_bn = running_mean, running_var

    mean = (mean_weight[0] * mean_in + mean_weight[1] * mean_ln
            + mean_weight[2] * mean_bn)
    var = (var_weight[0] * var_in + var_weight[1] * var_ln
           + var_weight[2] * var_bn)
    return mean, var, batch_mean, batch_var


def masked_softmax(logits: Tensor, available: Tensor) -> Tensor:
    """Softmax over the available entries; unavailable ones get weight 0.

    Args:
        logits: ``(K,)`` pre-softmax mixing parameters (lambdas).
        available: ``(K,)`` bool, at least one entry true.
    """
    return logits.masked_fill(~available, float('-inf')).softmax(0)
