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


def _centered_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Two-pass moments: exact also when the mean dwarfs the spread."""
    num_elems = x.shape[2]
    mean = x.mean(2)
    centered = x - mean.unsqueeze(2)
    sum_sq = torch.linalg.vector_norm(centered, 2, dim=2).square()
    return mean, sum_sq / max(num_elems - 1, 1), centered


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of every (sample, channel) slice.

    Args:
        x: ``(N, C, M)``.

    Returns:
        ``(mean, var)``, each ``(N, C)``. The variance is unbiased (divides by
        ``M - 1``) as in the authors' SN; a slice of one element has
        variance 0 instead of NaN.
    """
    mean, var, _ = _centered_moments(x)
    return mean, var


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
        with torch.autocast(x.device.type, enabled=False):
            xs = x.to(_stat_dtype(x))
            mean_in, var_in, centered = _centered_moments(xs)
            mean, var, *aux = mix(mean_in, var_in, *params)
            scale, shift = _scale_shift(mean, var, weight, bias, eps)
            # y = x * scale + shift, written over the centered copy.
            shift = shift + mean_in * scale
            y = torch.addcmul(shift.unsqueeze(2), centered, scale.unsqueeze(2),
                              out=centered).to(x.dtype)
        ctx.save_for_backward(x, mean_in, var_in, weight, bias, *params)
        ctx.eps = eps
        ctx.mix = mix
        aux = [a.detach() for a in aux]
        ctx.mark_non_differentiable(*aux)
        return (y, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused_aux_grads):
        x, mean_in, var_in, weight, bias, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad  # (x, weight, bias, eps, mix, *params)
        num_elems = x.shape[2]
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
                scale = scale.expand_as(mean_in)
                shift = shift.expand_as(mean_in)

            xs = x.to(_stat_dtype(x))
            dy = grad_y.to(xs.dtype)
            grad_shift = dy.sum(2)
            grad_scale = torch.linalg.vecdot(dy, xs, dim=2)

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
                # d var_in / dx = 2 (x - mean_in) / (M - correction);
                # d mean_in / dx = 1 / M.
                denom = max(num_elems - 1, 1)
                k1 = g_var * (2.0 / denom)
                k0 = g_mean / num_elems - k1 * mean_in
                grad_x = torch.addcmul(k0.unsqueeze(2), xs, k1.unsqueeze(2))
                grad_x.addcmul_(dy, scale.detach().unsqueeze(2))
                grad_x = grad_x.to(x.dtype)
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
    return _MomentNorm.apply(x, weight, bias, eps, mix, *params)
