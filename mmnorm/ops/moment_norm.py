"""Fused normalization whose statistics are derived from per-sample moments.

Every switchable normalizer in mmnorm (SN, SSN, SyncSN, ...) follows one
pattern: compute the mean and the unbiased variance of each (sample, channel)
slice of the input (the "IN moments"), derive every other statistic (LN, BN,
running or synchronized BN) from those small ``(N, C)`` tensors, mix them, and
apply one per-(sample, channel) affine map to the input.

Only two steps touch the big tensor, so only those two are written by hand:

* forward: one pass for the moments (``torch.var_mean``), one pass for the
  output ``y = x * scale + shift``;
* backward: one reduction pass for ``sum(dy)`` and ``sum(dy * x)`` and one
  pass that writes ``dx``.

Everything between the moments and ``(scale, shift)`` lives on ``(N, C)``
tensors and is differentiated by autograd: ``backward`` rebuilds that small
graph from saved leaves and calls :func:`torch.autograd.grad` on it. The only
large tensor saved for backward is the input itself.

Statistics are always computed in float32 (or float64), also under autocast;
the output has the input's dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# mix(mean_in, var_in, *params) -> (mean, var, *aux)
#   mean_in, var_in: (N, C) moments of each (sample, channel) slice
#   mean, var: statistics to normalize with, broadcastable to (N, C)
#   aux: extra tensors returned to the caller without gradient (e.g. the
#        batch statistics a layer folds into its running buffers)
MixFn = Callable[..., Sequence[Tensor]]

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
        rows.view(1, num_rows, num_elems), None, None, 1, num_rows,
        num_elems, num_rows, _TINY)
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
            rows = x.to(_stat_dtype(x)).reshape(n * c, m)
            mean_r, var_r, rstd_r, standardized = _row_moments(rows)
            mean_in = mean_r.view(n, c)
            var_in = var_r.view(n, c) * _bessel(m)
            mean, var, *aux = mix(mean_in, var_in, *params)
            scale, shift = _scale_shift(mean, var, weight, bias, eps)
            # y = x * scale + shift = standardized * scale / rstd
            #     + (shift + mean * scale), written in place. y stays the
            # (1, N*C, M) base tensor: a view made here would forbid
            # in-place ops (e.g. ReLU(inplace=True)) on the output.
            scale = scale.expand(n, c).reshape(-1, 1)
            shift = shift.expand(n, c).reshape(-1, 1)
            y = standardized.mul_(scale / rstd_r.unsqueeze(1))
            y = y.add_(shift + mean_r.unsqueeze(1) * scale).to(x.dtype)
        ctx.save_for_backward(x, mean_in, var_in, rstd_r, weight, bias,
                              *params)
        ctx.eps = eps
        ctx.mix = mix
        aux = [a.detach() for a in aux]
        ctx.mark_non_differentiable(*aux)
        return (y, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused_aux_grads):
        x, mean_in, var_in, rstd_r, weight, bias, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad  # (x, weight, bias, eps, mix, *params)
        n, c, m = x.shape
        with torch.autocast(x.device.type, enabled=False):
            # Rebuild the small (N, C) graph from leaves and let autograd
            # carry the gradients of (scale, shift) back to the moments and
            # to every parameter of the mixing.
            leaves = [mean_in.detach().requires_grad_(),
                      var_in.detach().requires_grad_()]
            small_inputs = [weight, bias, *params]
            small_needs = [needs[1], needs[2], *needs[5:]]
            for t, need in zip(small_inputs, small_needs):
                leaves.append(t.detach().requires_grad_(need)
                              if t is not None else None)
            with torch.enable_grad():
                mean, var, *_ = ctx.mix(leaves[0], leaves[1], *leaves[4:])
                scale, shift = _scale_shift(mean, var, leaves[2], leaves[3],
                                            ctx.eps)
                # mix may return (1, C) or (N, 1) statistics; expanding to
                # (N, C) matches the gradient shapes and lets autograd
                # reduce over the broadcast dimensions.
                scale = scale.expand(n, c)
                shift = shift.expand(n, c)

            rows = x.to(_stat_dtype(x)).reshape(n * c, m)
            dy_rows = grad_y.to(rows.dtype).reshape(n * c, m)
            # One fused pass for sum(dy * x_hat) and sum(dy) per row.
            _, dy_xhat, dy_sum = torch.ops.aten.native_group_norm_backward(
                dy_rows.unsqueeze(0), rows.unsqueeze(0), mean_in.view(1, -1),
                rstd_r.view(1, -1), rows.new_ones(n * c), 1, n * c, m, n * c,
                [False, True, True])
            grad_shift = dy_sum.view(n, c)
            # sum(dy * x) = sum(dy * x_hat) / rstd + mean * sum(dy)
            grad_scale = (dy_xhat / rstd_r).view(n, c) + mean_in * grad_shift

            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = torch.autograd.grad((scale, shift), wanted,
                                        (grad_scale, grad_shift),
                                        allow_unused=True)
            by_leaf = dict(zip(map(id, wanted), grads))

            def grad_of(t):
                if t is None or not t.requires_grad:
                    return None
                g = by_leaf[id(t)]
                return torch.zeros_like(t) if g is None else g

            grad_x = None
            if needs[0]:
                g_mean = grad_of(leaves[0])
                g_var = grad_of(leaves[1])
                # d var_in / dx = 2 (x - mean_in) / (M - 1) (0 if M == 1);
                # d mean_in / dx = 1 / M.
                k1 = g_var * (2.0 / max(m - 1, 1))
                k0 = g_mean / m - k1 * mean_in
                # dx = dy * scale + k0 + x * k1
                grad_x = _row_affine(dy_rows, scale.detach().reshape(-1),
                                     k0.reshape(-1))
                grad_x.addcmul_(rows, k1.reshape(-1, 1))
                grad_x = grad_x.view(n, c, m).to(x.dtype)
            rest = [grad_of(t) for t in leaves[2:]]
        return (grad_x, rest[0], rest[1], None, None, *rest[2:])


def moment_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float, mix: MixFn,
                *params: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Normalize ``x`` with statistics mixed from its per-sample moments.

    Args:
        x: ``(N, C, M)`` input, ``M`` the flattened spatial/temporal size.
        weight, bias: ``(C,)`` affine parameters, or ``None``.
        eps: added to the mixed variance.
        mix: pure function ``mix(mean_in, var_in, *params)`` returning
            ``(mean, var, *aux)`` (see :data:`MixFn`). It must be built from
            differentiable torch operations on its tensor arguments and must
            not capture tensors that need gradients.
        *params: tensors passed to ``mix``; gradients flow to them.

    Returns:
        ``(y, *aux)`` with ``y`` of shape ``(N, C, M)`` and dtype of ``x``.
    """
    y, *aux = _MomentNorm.apply(x, weight, bias, eps, mix, *params)
    return (y.view(x.shape), *aux)
