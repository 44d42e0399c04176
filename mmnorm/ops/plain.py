"""Switchable Normalization in plain tensor operations, for model export.

The compiled op and the composed path of :mod:`mmnorm.ops.moment_norm` are
built for speed: a custom ``torch.ops.mmnorm`` kernel, or
``native_group_norm`` on ``(N * C, M)`` rows reshaped with sizes read from
the input. Neither survives an export: ONNX knows no ``mmnorm::`` op, and a
reshape by Python sizes bakes the export shape into a traced graph. This
module computes the same statistics with reductions over the input's own
dimensions (``ReduceMean`` in ONNX) and elementwise operations only, so
that the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
what mmdeploy uses) and the ``dynamo=True`` exporter both turn it into
standard ONNX operators (opset 11 or later) with the batch and spatial
sizes left dynamic.

The layers call :func:`switchable_norm_plain` whenever the model is being
exported or traced. It is a forward-only path (inference, and the training
math for completeness); training uses the kernels.

Statistics, as in :mod:`mmnorm.ops.switchable`, for ``x`` of shape
``(N, C, *S)`` with ``M = prod(S)`` elements per (sample, channel) slice
and ``d = x - mean_in``::

    mean_in = mean_S(x)                           (N, C, 1, ...)
    var_in  = mean_S(d^2) * M / max(M - 1, 1)     unbiased; 0 when M = 1
    mean_ln = mean_C(mean_in)
    var_ln  = mean_C(var_in) + mean_C((mean_in - mean_ln)^2)
    mean_bn = mean_N(mean_in)                      or running_mean
    var_bn  = mean_N(var_in) + mean_N((mean_in - mean_bn)^2)  or running_var
    mean    = w0 mean_in + w1 mean_ln + w2 mean_bn
    var     = v0 var_in  + v1 var_ln  + v2 var_bn
    y       = d * s + ((mean_in - mean) * s + bias),  s = weight / sqrt(var
              + eps)

``M`` is the sum of a ``(1, 1, *S)`` tensor of ones rather than a Python
number, so it stays a function of the input shape in the exported graph,
and the Bessel factor needs no branch. For ``(N, C)`` input (``flat``)
every slice has one element: ``mean_in = x``, ``var_in = 0``, and the LN
and BN variances carry the Bessel factors ``C / (C - 1)`` and
``N / max(N - 1, 1)`` of the authors' SN1d. The output is centred on each
slice's own mean like the kernels', so a large common offset cancels
before rounding.

Running statistics enter only as ``w2 * running_mean`` and
``v2 * running_var``: products of parameters and buffers, which the
exporters' constant folding turns into one ``(1, C, 1, ...)`` constant
each (exact: nothing depends on the input). With one-hot weights the
unused branches are multiplied by 0; every branch is finite for finite
input (1x1 maps, batch 1), so this never produces ``0 * inf``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_SUPPORTED_RANKS = (2, 3, 4, 5)
_EXACT_DTYPES = (torch.float32, torch.float64)


def _count(ones: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Number of elements over ``dims`` as a tensor (keeps dims)."""
    return ones.sum(dims, keepdim=True)


def _unbias(count: Tensor) -> Tensor:
    """Bessel factor ``count / max(count - 1, 1)``: 1 for a single
    element (whose biased variance is 0), without a branch on the count."""
    return count / ((count - 2).relu() + 1)   # max(count - 1, 1)


def _channel_view(t: Tensor, rank: int) -> Tensor:
    """``(C,)`` to ``(1, C, 1, ...)`` broadcastable against rank ``rank``."""
    return t.reshape((1, -1) + (1,) * (rank - 2))


def _check(x: Tensor, mean_weight: Tensor, var_weight: Tensor,
           running_mean: Optional[Tensor], running_var: Optional[Tensor],
           flat: bool) -> None:
    if torch.jit.is_tracing():  # shapes are traced values, not checks
        return
    name = 'switchable_norm_plain'
    if x.dim() not in _SUPPORTED_RANKS:
        raise ValueError(f'{name}: x must have rank 2-5 ((N, C, *)), got '
                         f'shape {tuple(x.shape)}')
    if flat != (x.dim() == 2):
        raise ValueError(f'{name}: flat must be True exactly for (N, C) '
                         f'input, got flat={flat} for shape '
                         f'{tuple(x.shape)}')
    for arg, w in (('mean_weight', mean_weight), ('var_weight', var_weight)):
        if tuple(w.shape) != (3,):
            raise ValueError(f'{name}: {arg} must have shape (3,) (weights '
                             f'over [IN, LN, BN]), got {tuple(w.shape)}')
    if (running_mean is None) != (running_var is None):
        raise ValueError(f'{name}: running_mean and running_var must both '
                         'be tensors or both be None')


def switchable_norm_plain(x: Tensor, weight: Optional[Tensor],
                          bias: Optional[Tensor], mean_weight: Tensor,
                          var_weight: Tensor,
                          running_mean: Optional[Tensor],
                          running_var: Optional[Tensor], eps: float,
                          flat: bool) -> tuple[Tensor, Tensor, Tensor]:
    """SN forward from plain ops; same contract as the kernels.

    Args:
        x: ``(N, C, *)`` input of rank 2 to 5.
        weight, bias: ``(C,)`` affine parameters or None.
        mean_weight, var_weight: ``(3,)`` mixing weights over
            [IN, LN, BN], already normalized (0 for an absent branch; for
            ``(N, C)`` input the IN weight must be 0).
        running_mean, running_var: ``(C,)`` running BN statistics (the
            inference branch), or both None for this batch's statistics.
        eps: added to the mixed variance.
        flat: the input is ``(N, C)`` (one element per slice).

    Returns:
        ``(y, batch_mean, batch_var)``: the output, shaped and typed like
        ``x``, and the ``(C,)`` BN statistics used (the running ones when
        given, else this batch's, in the statistics dtype: float32 for
        half-precision input).
    """
    _check(x, mean_weight, var_weight, running_mean, running_var, flat)
    rank = x.dim()
    stat_dtype = x.dtype if x.dtype in _EXACT_DTYPES else torch.float32
    xs = x.to(stat_dtype)
    mean_weight = mean_weight.to(stat_dtype)
    var_weight = var_weight.to(stat_dtype)

    if flat:
        mean_in = xs
        dev = torch.zeros_like(xs)
        var_in = dev
        # Bessel factors of the LN (over C) and BN (over N) variances.
        ones = torch.ones_like(xs)
        bessel_ln = _unbias(_count(ones[:1], (1,)))
        bessel_bn = _unbias(_count(ones[:, :1], (0,)))
    else:
        dims = tuple(range(2, rank))
        mean_in = xs.mean(dims, keepdim=True)
        dev = xs - mean_in
        count = _count(torch.ones_like(xs[:1, :1]), dims)
        var_in = dev.square().mean(dims, keepdim=True) * _unbias(count)
        bessel_ln = bessel_bn = None

    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = (var_in.mean(1, keepdim=True)
              + (mean_in - mean_ln).square().mean(1, keepdim=True))
    if bessel_ln is not None:
        var_ln = var_ln * bessel_ln
    # Derived variances can come out a rounding error below zero.
    var_ln = var_ln.relu()

    if running_mean is None:
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = (var_in.mean(0, keepdim=True)
                  + (mean_in - mean_bn).square().mean(0, keepdim=True))
        if bessel_bn is not None:
            var_bn = var_bn * bessel_bn
        var_bn = var_bn.relu()
    else:
        mean_bn = _channel_view(running_mean.to(stat_dtype), rank)
        # where, not relu: the exporters fold it into the constant
        running_var = running_var.to(stat_dtype)
        var_bn = _channel_view(torch.where(
            running_var > 0, running_var, torch.zeros_like(running_var)),
            rank)

    mean = (mean_weight[0] * mean_in + mean_weight[1] * mean_ln
            + mean_weight[2] * mean_bn)
    var = (var_weight[0] * var_in + var_weight[1] * var_ln
           + var_weight[2] * var_bn)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * _channel_view(weight.to(stat_dtype), rank)
    offset = (mean_in - mean) * scale
    if bias is not None:
        offset = offset + _channel_view(bias.to(stat_dtype), rank)
    y = dev * scale + offset
    return y.to(x.dtype), mean_bn.reshape(-1), var_bn.reshape(-1)


def kalman_norm_plain(x: Tensor, weight: Optional[Tensor],
                      bias: Optional[Tensor], eps: float,
                      group_size: Optional[int] = None,
                      prediction: Optional[tuple[Tensor, Tensor]] = None,
                      prior_weight: float = 0.0) -> Tensor:
    """Kalman Normalization with batch statistics, from plain ops.

    What :class:`mmnorm.layers.kn.KalmanNorm` computes when it normalizes
    with the statistics it observes (``track_running_stats=False``, also
    in eval mode), for export: its eval mode with running statistics is
    ``F.batch_norm``, which both exporters take as it is, but the batch
    statistics path (``F.batch_norm(training=True)``, or reshapes into
    groups by Python sizes) does not export with a dynamic batch.

    For groups of ``k`` samples (``G = N / k``; the whole batch when
    ``group_size`` is None), with biased moments over the group's samples
    and positions::

        mean_obs, var_obs = mean_{k, S}(x), mean_{k, S}((x - mean_obs)^2)
        mean = q mean_obs + p mean_pred
        var  = q var_obs + p var_pred + q p (mean_obs - mean_pred)^2
        y    = (x - mean) / sqrt(var + eps) * weight + bias

    with ``p = prior_weight``, ``q = 1 - p``; without a prediction
    ``mean, var = mean_obs, var_obs``.

    Args:
        x: ``(N, C, *)``, rank 2 to 5, ``N`` a multiple of ``group_size``.
        weight, bias: ``(C,)`` or None.
        eps: added to the variance.
        group_size: samples per group ``k``, or None for the whole batch.
        prediction: ``(mean_pred, var_pred)``, each ``(G, C)``, or None
            (the caller has already applied the divergence decision).
        prior_weight: ``p``.

    Returns:
        ``y``, shaped and typed like ``x``.
    """
    if not torch.jit.is_tracing() and x.dim() not in _SUPPORTED_RANKS:
        raise ValueError(f'kalman_norm_plain: x must have rank 2-5, got '
                         f'shape {tuple(x.shape)}')
    rank = x.dim()
    stat_dtype = x.dtype if x.dtype in _EXACT_DTYPES else torch.float32
    xs = x.to(stat_dtype)
    if group_size is None:
        grouped = xs.unsqueeze(0)              # (1, N, C, *)
    else:
        # (G, k, C, *); the tracers record the sizes read here as shape
        # ops, so they stay dynamic (``unflatten`` would need opset 13)
        grouped = xs.reshape((-1, group_size) + tuple(xs.shape[1:]))
    dims = (1,) + tuple(range(3, rank + 1))
    mean = grouped.mean(dims, keepdim=True)
    var = (grouped - mean).square().mean(dims, keepdim=True)
    if prediction is not None:
        # (G, C) -> (G, 1, C, 1, ...) without sizes read from tensors
        pred_mean, pred_var = (p.to(stat_dtype).unsqueeze(1)
                               for p in prediction)
        for _ in range(rank - 2):
            pred_mean, pred_var = pred_mean.unsqueeze(-1), \
                pred_var.unsqueeze(-1)
        q = 1.0 - prior_weight
        gap = mean - pred_mean
        var = (q * var + prior_weight * pred_var
               + q * prior_weight * gap.square())
        mean = q * mean + prior_weight * pred_mean
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * _channel_view(weight.to(stat_dtype),
                                      rank).unsqueeze(0)
    y = (grouped - mean) * scale
    if bias is not None:
        y = y + _channel_view(bias.to(stat_dtype), rank).unsqueeze(0)
    return y.flatten(0, 1).to(x.dtype)


def switchable_whitening_plain(x: Tensor, group_size: int, small,
                               params) -> tuple[Tensor, Tensor, Tensor]:
    """Switchable Whitening's big-tensor passes from plain ops, for export.

    Same contract as :func:`mmnorm.ops.whitening.switchable_whitening`
    (whose passes run in an ``autograd.Function``, which the TorchScript
    exporter can only record as a ``PythonOp``): ``x`` ``(N, C, *S)`` is
    viewed as ``(N, G, c, M)`` groups of ``c = group_size`` channels, and
    with ``d = x - mu_i``::

        mu_i    = mean_M(x)                 (N, G, c, 1)
        Sigma_i = d d^T / M                 (N, G, c, c)
        A, s, mu_b, Sigma_b = small(mu_i, Sigma_i, *params)
        y       = A d + s

    ``M`` is a count tensor, and the view takes ``N`` and ``M`` from the
    traced shape, so both stay dynamic in the exported graph (``MatMul``,
    ``ReduceMean`` and elementwise operators).

    Returns:
        ``y`` (shape and dtype of ``x``) and ``small``'s BW statistics
        ``(G, c, 1)``, ``(G, c, c)``, detached.
    """
    dtype = x.dtype if x.dtype in _EXACT_DTYPES else torch.float32
    rows = x.to(dtype).flatten(2)                      # (N, C, M)
    groups = rows.shape[1] // group_size
    xs = rows.reshape((-1, groups, group_size, rows.shape[2]))
    mu_i = xs.mean(-1, keepdim=True)
    xc = xs - mu_i
    count = torch.ones_like(xs[:1, :1, :1]).sum(-1, keepdim=True)
    sigma_i = torch.matmul(xc, xc.transpose(-1, -2)) / count
    a, shift, mu_b, sigma_b = small(mu_i, sigma_i, *params)
    y = torch.matmul(a, xc) + shift
    return (y.reshape(x.shape).to(x.dtype), mu_b.detach(),
            sigma_b.detach())
