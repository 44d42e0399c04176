"""Fused normalization whose statistics are derived from per-sample moments.

Every switchable normalizer in mmnorm (SN, SSN, SyncSN, ...) follows one
pattern: compute the mean and the unbiased variance of each (sample, channel)
slice of the input (the "IN moments"), derive every other statistic (LN, BN,
running or synchronized BN) from those small ``(N, C)`` tensors, mix them, and
apply one per-(sample, channel) affine map to the input.

Only two steps touch the big tensor, and they use PyTorch's fused kernels:

* forward: one pass for the moments (``native_group_norm`` with one group
  per row), one in-place pass that turns its output into
  ``y = x * scale + shift``;
* backward: one reduction pass for ``sum(dy)`` and ``sum(dy * x)``
  (``native_group_norm_backward``) and one pass that writes ``dx``
  (``batch_norm`` in inference mode as a per-row affine map).

Everything between the moments and ``(scale, shift)`` lives on ``(N, C)``
tensors, with a hand-written backward (the ``mix`` object's) so that a few
dozen small operations, not an autograd graph, run per call. The only large
tensor saved for backward is the input itself.

Statistics are always computed in float32 (or float64), also under autocast;
the output has the input's dtype.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# A ``mix`` turns the (N, C) IN moments into the statistics to normalize
# with, and back-propagates through that map by hand (see SwitchableMix):
#   mix.forward(mean_in, var_in, *params) -> (mean, var, *aux)
#       mean, var broadcastable to (N, C); aux: extra tensors returned to the
#       caller without gradient (e.g. batch statistics for running buffers)
#   mix.backward(mean_in, var_in, params, aux, grad_mean, grad_var)
#       -> (grad_mean_in, grad_var_in, *grad_params)
MixFn = Any

_EXACT_DTYPES = (torch.float32, torch.float64)


def _stat_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in _EXACT_DTYPES else torch.float32


# Added to the variance inside the row-moments kernel only so that a
# constant row gives a finite rstd; far below any real variance.
_TINY = 1e-30


def _row_moments(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row moments of ``rows`` ``(R, M)``, and the rows standardized.

    Uses ``torch.native_group_norm`` with one group per row: PyTorch's
    fused, vectorized, numerically stable row-moments kernel (one pass over
    the input, on every device). Returns ``(mean, var, rstd, standardized)``
    with the biased variance and ``standardized = (rows - mean) * rstd``
    of shape ``(1, R, M)``, a fresh buffer the caller may overwrite.
    """
    num_rows, num_elems = rows.shape
    standardized, mean, rstd = torch.native_group_norm(
        rows.contiguous().view(1, num_rows, num_elems), None, None, 1,
        num_rows, num_elems, num_rows, _TINY)
    mean, rstd = mean.view(num_rows), rstd.view(num_rows)
    var = (rstd.reciprocal().square() - _TINY).clamp(min=0)
    return mean, var, rstd, standardized


def _row_affine(rows: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``rows * scale[:, None] + shift[:, None]`` in one fused pass.

    ``batch_norm`` in inference mode with zero mean and unit variance is
    exactly a per-channel affine map; viewing the ``R`` rows as channels
    makes it per row.
    """
    num_rows = rows.shape[0]
    zeros = rows.new_zeros(num_rows)
    ones = rows.new_ones(num_rows)
    return F.batch_norm(rows.unsqueeze(0), zeros, ones, scale, shift,
                        False, 0.0, 0.0).squeeze(0)


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of every (sample, channel) slice.

    Args:
        x: ``(N, C, M)``.

    Returns:
        ``(mean, var)``, each ``(N, C)``. The variance is unbiased (divides by
        ``M - 1``) as in the authors' SN; a slice of one element has
        variance 0 instead of NaN.
    """
    n, c, m = x.shape
    mean, var, _, _ = _row_moments(x.reshape(n * c, m))
    return mean.view(n, c), var.view(n, c) * _bessel(m)


def _bessel(count: int) -> float:
    return count / (count - 1) if count > 1 else 1.0


def _scale_shift(mean: Tensor, var: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Per-(n, c) affine map ``y = x * scale + shift`` of a normalizer."""
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


class _MomentNorm(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float, mix: MixFn,
                *params: Optional[Tensor]):
        n, c, m = x.shape
        with torch.autocast(x.device.type, enabled=False):
            rows = x.to(_stat_dtype(x)).reshape(n * c, m).contiguous()
            mean_r, var_r, rstd_r, standardized = _row_moments(rows)
            mean_in = mean_r.view(n, c)
            var_in = var_r.view(n, c) * _bessel(m)
            mean, var, *aux = mix.forward(mean_in, var_in, *params)
            scale, shift = _scale_shift(mean, var, weight, bias, eps)
            # y = x * scale + shift = standardized * scale / rstd
            #     + (shift + mean * scale), written in place. y stays the
            # (1, N*C, M) base tensor: a view made here would forbid
            # in-place ops (e.g. ReLU(inplace=True)) on the output.
            scale = scale.expand(n, c).reshape(-1, 1)
            shift = shift.expand(n, c).reshape(-1, 1)
            y = standardized.mul_(scale / rstd_r.unsqueeze(1))
            y = y.add_(shift + mean_r.unsqueeze(1) * scale).to(x.dtype)
        aux = [a.detach() for a in aux]
        ctx.save_for_backward(x, mean_in, var_in, rstd_r, mean.detach(),
                              var.detach(), weight, bias, *aux, *params)
        ctx.num_aux = len(aux)
        ctx.eps = eps
        ctx.mix = mix
        ctx.mark_non_differentiable(*aux)
        return (y, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused_aux_grads):
        (x, mean_in, var_in, rstd_r, mean, var, weight, bias,
         *rest) = ctx.saved_tensors
        aux, params = rest[:ctx.num_aux], rest[ctx.num_aux:]
        n, c, m = x.shape
        with torch.autocast(x.device.type, enabled=False):
            rows = x.to(_stat_dtype(x)).reshape(n * c, m).contiguous()
            # The fused kernels need dense rows; autograd may hand us an
            # expanded (stride-0) gradient, e.g. from y.sum().
            dy_rows = grad_y.to(rows.dtype).reshape(n * c, m).contiguous()
            # One fused pass for sum(dy * x_hat) and sum(dy) per row.
            _, dy_xhat, dy_sum = torch.ops.aten.native_group_norm_backward(
                dy_rows.unsqueeze(0), rows.unsqueeze(0), mean_in.view(1, -1),
                rstd_r.view(1, -1), rows.new_ones(n * c), 1, n * c, m, n * c,
                [False, True, True])
            grad_shift = dy_sum.view(n, c)
            # sum(dy * x) = sum(dy * x_hat) / rstd + mean_in * sum(dy)
            grad_scale = (dy_xhat / rstd_r).view(n, c) + mean_in * grad_shift

            # y = x * scale + shift, scale = weight * rstd,
            # shift = bias - mean * scale, rstd = (var + eps)^-1/2
            rstd = (var + ctx.eps).rsqrt()
            scale = rstd if weight is None else rstd * weight
            grad_mean = -scale * grad_shift
            grad_scale_total = grad_scale - mean * grad_shift
            grad_weight = grad_bias = None
            if weight is not None:
                grad_weight = (grad_scale_total * rstd).sum(0)
                grad_rstd = grad_scale_total * weight
            else:
                grad_rstd = grad_scale_total
            if bias is not None:
                grad_bias = grad_shift.sum(0)
            grad_var = grad_rstd * (-0.5) * rstd.pow(3)

            grad_mean_in, grad_var_in, *grad_params = ctx.mix.backward(
                mean_in, var_in, tuple(params), tuple(aux),
                grad_mean.expand(n, c), grad_var.expand(n, c))

            grad_x = None
            if ctx.needs_input_grad[0]:
                # d var_in / dx = 2 (x - mean_in) / (M - 1) (0 if M == 1);
                # d mean_in / dx = 1 / M.
                k1 = grad_var_in * (2.0 / max(m - 1, 1))
                k0 = grad_mean_in / m - k1 * mean_in
                # dx = dy * scale + k0 + x * k1
                grad_x = _row_affine(dy_rows, scale.expand(n, c).reshape(-1),
                                     k0.reshape(-1))
                grad_x.addcmul_(rows, k1.reshape(-1, 1))
                grad_x = grad_x.view(n, c, m).to(x.dtype)
        return (grad_x, grad_weight, grad_bias, None, None, *grad_params)


def moment_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float, mix: MixFn,
                *params: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Normalize ``x`` with statistics mixed from its per-sample moments.

    Args:
        x: ``(N, C, M)`` input, ``M`` the flattened spatial/temporal size.
        weight, bias: ``(C,)`` affine parameters, or ``None``.
        eps: added to the mixed variance.
        mix: object with ``forward`` and ``backward`` as described at
            :data:`MixFn` (e.g. :class:`mmnorm.ops.SwitchableMix`).
        *params: tensors passed to ``mix``; gradients flow to them.

    Returns:
        ``(y, *aux)`` with ``y`` of shape ``(N, C, M)`` and dtype of ``x``.
    """
    y, *aux = _MomentNorm.apply(x, weight, bias, eps, mix, *params)
    return (y.view(x.shape), *aux)
