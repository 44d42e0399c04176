"""Fused normalization whose statistics are derived from per-sample moments.

Every switchable normalizer in mmnorm (SN, SSN, SyncSN, ...) follows one
pattern: compute the mean and the unbiased variance of each (sample, channel)
slice of the input (the "IN moments"), derive every other statistic (LN, BN,
running or synchronized BN) from those small ``(N, C)`` tensors, mix them, and
apply one per-(sample, channel) affine map to the input.

Only two steps per direction touch the big tensor:

* forward: one read pass for the moments, one pass that writes
  ``y = (x - mean_in) * scale + offset`` (centred on each slice's own mean,
  so that a large common mean cancels before rounding);
* backward: one read pass for ``sum(dy)`` and ``sum(dy * (x - mean_in))``
  and one pass that writes ``dx = dy * a + (x - mean_in) * b + c``.

On the CPU these run on mmnorm's compiled kernel (``mmnorm/ops/csrc``,
built on first use by ``mmnorm.ops._kernel``): vectorized, multi-threaded
row loops that read the input once per pass. For the plain SN statistics
(the mixes in ``KERNEL_MIXES``: SN, SSN, fixed-source layers) the whole
layer is one compiled op (``torch.ops.mmnorm.switchable_norm``) with a C++
autograd node, so a forward and a backward each cost one call from Python.
Other mixes (e.g. SyncSN's) run their Python ``forward``/``backward``
between the row passes. Without the
kernel (no compiler, another device, or ``MMNORM_NO_KERNEL=1``) the same
passes are composed from PyTorch's own fused kernels
(``native_group_norm`` with one group per row and its backward, and
``batch_norm`` in inference mode as a per-row affine map), with one extra
pass each way.

Everything between the moments and the per-row coefficients lives on
``(N, C)`` tensors, with a hand-written backward (the ``mix`` object's, or
the kernel's) instead of an autograd graph. The only large tensor saved for
backward is the input itself.

Statistics are always computed in float32 (or float64), also under autocast;
the output has the input's dtype.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _kernel
from .switchable import KERNEL_MIXES

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
    rows = x.reshape(n * c, m).contiguous()
    # The kernels have no autograd formula of their own.
    differentiable = torch.is_grad_enabled() and x.requires_grad
    ops = None if differentiable else kernel_for(rows)
    if ops is not None:
        mean, var = ops.row_moments(rows)
    else:
        mean, var, _, _ = _row_moments(rows)
    return mean.view(n, c), var.view(n, c) * _bessel(m)


def _bessel(count: int) -> float:
    return count / (count - 1) if count > 1 else 1.0


def kernel_for(tensor: Tensor) -> Any:
    """The compiled kernels (``torch.ops.mmnorm``) for a CPU tensor, else
    ``None``. The row kernels take float32 or float64 rows; other inputs
    are converted to their float32 statistics dtype first, as on the
    composed path."""
    if tensor.device.type != 'cpu':
        return None
    return _kernel.get()


class _MomentNorm(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float, mix: MixFn,
                *params: Optional[Tensor]):
        n, c, m = x.shape
        with torch.autocast(x.device.type, enabled=False):
            rows = x.to(_stat_dtype(x)).reshape(n * c, m).contiguous()
            ops = kernel_for(rows)
            if ops is not None:
                mean_r, var_r = ops.row_moments(rows)
                rstd_r = None
            else:
                mean_r, var_r, rstd_r, standardized = _row_moments(rows)
            mean_in = mean_r.view(n, c)
            var_in = var_r.view(n, c) * _bessel(m)
            mean, var, *aux = mix.forward(mean_in, var_in, *params)
            scale = (var + eps).rsqrt()
            if weight is not None:
                scale = scale * weight
            # y = (x - mean) * scale + bias
            #   = (x - mean_in) * scale + offset: centred on the row's own
            # mean, so a large common mean cancels before rounding.
            offset = (mean_in - mean) * scale
            if bias is not None:
                offset = offset + bias
            scale = scale.expand(n, c).reshape(-1).to(rows.dtype)
            offset = offset.reshape(-1).to(rows.dtype)
            if ops is not None:
                y = ops.row_affine(rows, mean_r, scale, offset)
            else:
                # standardized = (x - mean_in) * rstd_r, rewritten in place.
                # y stays the (1, N*C, M) base tensor: a view made here
                # would forbid in-place ops (e.g. ReLU(inplace=True)) on
                # the output.
                y = standardized.mul_((scale / rstd_r).unsqueeze(1))
                y = y.add_(offset.unsqueeze(1))
            y = y.to(x.dtype)
        aux = [a.detach() for a in aux]
        ctx.save_for_backward(x, mean_in, var_in, rstd_r, mean.detach(),
                              var.detach(), weight, bias, *aux, *params)
        ctx.num_aux = len(aux)
        ctx.eps = eps
        ctx.mix = mix
        ctx.kernel = ops
        ctx.mark_non_differentiable(*aux)
        return (y, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused_aux_grads):
        (x, mean_in, var_in, rstd_r, mean, var, weight, bias,
         *rest) = ctx.saved_tensors
        aux, params = rest[:ctx.num_aux], rest[ctx.num_aux:]
        ops = ctx.kernel
        n, c, m = x.shape
        with torch.autocast(x.device.type, enabled=False):
            rows = x.to(_stat_dtype(x)).reshape(n * c, m).contiguous()
            # The fused kernels need dense rows; autograd may hand us an
            # expanded (stride-0) gradient, e.g. from y.sum().
            dy_rows = grad_y.to(rows.dtype).reshape(n * c, m).contiguous()
            mean_flat = mean_in.reshape(-1)
            if ops is not None:
                # One pass for sum(dy) and sum(dy * (x - mean_in)) per row.
                dy_sum, dy_xc = ops.row_grad_sums(dy_rows, rows, mean_flat)
            else:
                # One fused pass for sum(dy * x_hat) and sum(dy) per row.
                _, dy_xhat, dy_sum = \
                    torch.ops.aten.native_group_norm_backward(
                        dy_rows.unsqueeze(0), rows.unsqueeze(0),
                        mean_in.view(1, -1), rstd_r.view(1, -1),
                        rows.new_ones(n * c), 1, n * c, m, n * c,
                        [False, True, True])
                dy_xc = dy_xhat / rstd_r
            grad_shift = dy_sum.view(n, c)

            # y = x * scale + shift, scale = weight * rstd,
            # shift = bias - mean * scale, rstd = (var + eps)^-1/2;
            # sum(dy * (x - mean)) = sum(dy * (x - mean_in))
            #                        + (mean_in - mean) * sum(dy)
            rstd = (var + ctx.eps).rsqrt()
            scale = rstd if weight is None else rstd * weight
            grad_mean = -scale * grad_shift
            grad_scale_total = (dy_xc.view(n, c)
                                + (mean_in - mean) * grad_shift)
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
                # d mean_in / dx = 1 / M, so
                # dx = dy * scale + (x - mean_in) * k1 + k0.
                k1 = (grad_var_in * (2.0 / max(m - 1, 1))).reshape(-1)
                k0 = (grad_mean_in / m).reshape(-1)
                scale = scale.expand(n, c).reshape(-1)
                if ops is not None:
                    grad_x = ops.row_grad_input(
                        dy_rows, rows, mean_flat, scale.to(rows.dtype),
                        k1.to(rows.dtype), k0.to(rows.dtype))
                else:
                    grad_x = _row_affine(dy_rows, scale,
                                         k0 - k1 * mean_flat)
                    grad_x.addcmul_(rows, k1.unsqueeze(1))
                grad_x = grad_x.view(n, c, m).to(x.dtype)
        return (grad_x, grad_weight, grad_bias, None, None, *grad_params)


def moment_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float, mix: MixFn,
                *params: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Normalize ``x`` with statistics mixed from its per-sample moments.

    Args:
        x: ``(N, C, *)`` input, not empty; the statistics of a (sample,
            channel) slice are over all its ``*`` elements (one for
            ``(N, C)`` input).
        weight, bias: ``(C,)`` affine parameters, or ``None``.
        eps: added to the mixed variance.
        mix: object with ``forward`` and ``backward`` as described at
            :data:`MixFn` (e.g. :class:`mmnorm.ops.SwitchableMix`).
        *params: tensors passed to ``mix``; gradients flow to them.

    Returns:
        ``(y, *aux)`` with ``y`` of the shape and dtype of ``x``.
    """
    ops = kernel_for(x) if type(mix) in KERNEL_MIXES else None
    if ops is not None and len(params) == 4:
        # The whole layer, forward and backward, in one compiled op each.
        return ops.switchable_norm(x, weight, bias, *params,
                                   eps, mix.flat_input)
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    y, *aux = _MomentNorm.apply(rows, weight, bias, eps, mix, *params)
    return (y.view(x.shape), *aux)
