"""Fused normalization whose statistics are derived from per-sample moments.

Every switchable normalizer in mmnorm (SN, SSN, SyncSN, ...) follows one
pattern: compute the mean and the unbiased variance of each (sample, channel)
slice of the input (the "IN moments"), derive every other statistic (LN, BN,
running or synchronized BN) from those small ``(N, C)`` tensors, mix them, and
apply one per-(sample, channel) affine map to the input.

Only two steps per direction touch the big tensor, viewed as ``(N, C, M)``
rows ``r = (n, c)``:

* forward: one read pass for the moments, one pass that writes
  ``y = (x - mean_in) * scale + offset`` (centred on each row's own mean,
  so that a large common mean cancels before rounding);
* backward: one read pass for ``sum(dy)`` and ``sum(dy * (x - mean_in))``
  and one pass that writes ``dx = dy * a + (x - mean_in) * b + c``.

Which code runs those passes is decided in one place,
:func:`mmnorm.ops.dispatch.backend_for`:

* ``cpu_kernel`` / ``triton``: for the plain SN statistics (the mixes in
  ``KERNEL_MIXES``: SN, SSN, fixed-source layers) the whole layer is the
  library op ``torch.ops.mmnorm.switchable_norm`` (a C++ autograd node over
  a forward and a backward device op: C++ on the CPU, Triton on CUDA), so a
  forward and a backward each cost one call from Python;
* other mixes (SyncSN's) and the ``composed`` path run :class:`_MomentNorm`,
  whose row passes come from the same backend: the compiled row ops, the
  Triton launchers, or stock PyTorch ops (``var_mean``; ``batch_norm`` in
  inference mode as a centred per-row affine map; the centred row sums of
  ``native_batch_norm_backward``): forward 2 reads + 1 write, backward
  three ops, all centred (on the CPU the moments take two vectorized passes
  instead, much faster there than ``var_mean``: see
  :func:`mmnorm.ops.dispatch.composed_moments`);
* ``export``: plain ops (:mod:`mmnorm.ops.plain`).

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

from . import dispatch
from .switchable import KERNEL_MIXES, chosen_weights, masked_softmax

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


def bessel(count: Any) -> Any:
    """``count / (count - 1)``, or 1 for a single element, without a
    Python branch on ``count`` (a traced shape stays symbolic)."""
    return count / torch.sym_max(count - 1, 1)


# --------------------------------------------------------------------------
# Row passes. Each backend takes the (N, C, M) view of the input in its own
# dtype and returns statistics in the statistics dtype; ``affine`` returns
# its own buffer (not a view) of any shape with the input's elements.

class _KernelRows:
    """The compiled CPU row kernels: dense float32/float64 rows."""

    @staticmethod
    def _rows(x3: Tensor) -> Tensor:
        return x3.to(_stat_dtype(x3)).reshape(-1, x3.shape[2]).contiguous()

    def moments(self, x3: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.mmnorm.row_moments(self._rows(x3))

    def affine(self, x3, shift, scale, offset):
        rows = self._rows(x3)
        return torch.ops.mmnorm.row_affine(rows, shift, scale,
                                           offset).to(x3.dtype)

    def grad_sums(self, dy3, x3, shift):
        rows = self._rows(x3)
        dy = dy3.to(rows.dtype).reshape(rows.shape).contiguous()
        return torch.ops.mmnorm.row_grad_sums(dy, rows, shift)

    def grad_input(self, dy3, x3, shift, a, b, c):
        rows = self._rows(x3)
        dy = dy3.to(rows.dtype).reshape(rows.shape).contiguous()
        dx = torch.ops.mmnorm.row_grad_input(dy, rows, shift, a, b, c)
        return dx.view(x3.shape).to(x3.dtype)


class _TritonRows:
    """The Triton row kernels (CUDA): any strides, half inputs read as
    they are."""

    @staticmethod
    def _kernels():
        from . import triton_rows  # imports Triton: only when used
        return triton_rows

    def moments(self, x3):
        return self._kernels().row_moments(x3)

    def affine(self, x3, shift, scale, offset):
        return self._kernels().row_affine(x3, shift, scale, offset)

    def grad_sums(self, dy3, x3, shift):
        return self._kernels().row_grad_sums(dy3, x3, shift)

    def grad_input(self, dy3, x3, shift, a, b, c):
        return self._kernels().row_grad_input(dy3, x3, shift, a, b, c)


class _ComposedRows:
    """Stock PyTorch ops, centred, with the fewest passes they allow."""

    @staticmethod
    def _rows(x3: Tensor) -> Tensor:
        # (1, R, M): the R rows as the channels of a batch-norm input
        return x3.to(_stat_dtype(x3)).reshape(1, -1, x3.shape[2])

    def moments(self, x3):
        rows = self._rows(x3)
        if dispatch.composed_moments(x3) == dispatch.TWO_PASS:
            mean = rows.mean(dim=(0, 2))
            centred = F.batch_norm(rows, mean, torch.ones_like(mean), None,
                                   None, False, 0.0, 0.0)
            norm = torch.linalg.vector_norm(centred, dim=(0, 2))
            return mean, norm.square() / rows.shape[2]
        var, mean = torch.var_mean(rows, dim=(0, 2), correction=0)
        return mean, var

    @staticmethod
    def _centred_affine(rows: Tensor, shift, scale, offset) -> Tensor:
        # batch_norm in inference mode with unit variance and eps 0 is
        # exactly (rows - shift) * scale + offset, in one pass
        return F.batch_norm(rows, shift, torch.ones_like(shift), scale,
                            offset, False, 0.0, 0.0)

    def affine(self, x3, shift, scale, offset):
        return self._centred_affine(self._rows(x3), shift, scale,
                                    offset).to(x3.dtype)

    def grad_sums(self, dy3, x3, shift):
        rows = self._rows(x3)
        dy = dy3.to(rows.dtype).reshape(rows.shape)
        # with save_invstd = 1: sum(dy * (x - shift)) and sum(dy), centred
        _, dy_xc, dy_sum = torch.ops.aten.native_batch_norm_backward(
            dy, rows, None, None, None, shift, torch.ones_like(shift), True,
            0.0, [False, True, True])
        return dy_sum, dy_xc

    def grad_input(self, dy3, x3, shift, a, b, c):
        rows = self._rows(x3)
        dx = self._centred_affine(rows, shift, b, c)
        dx = dx.addcmul_(dy3.to(rows.dtype).reshape(rows.shape),
                         a.view(1, -1, 1))
        return dx.view(x3.shape).to(x3.dtype)


# built once at import: a cache filled lazily would change under a trace
_ROWS = {dispatch.CPU_KERNEL: _KernelRows(), dispatch.TRITON: _TritonRows(),
         dispatch.COMPOSED: _ComposedRows()}


def row_passes(backend: str) -> Any:
    """The row-pass implementation of a backend (see :mod:`.dispatch`)."""
    return _ROWS.get(backend, _ROWS[dispatch.COMPOSED])


# --------------------------------------------------------------------------
# The layer math between the row passes, shared by every path.

def _wide(t: Tensor) -> torch.dtype:
    """The dtype of the small (N, C) mixing: float64 where the device has
    it (as the CPU kernel's mixing), so that the differences of statistics
    a large common mean produces do not cancel in float32."""
    return torch.float32 if t.device.type == 'mps' else torch.float64


def _to(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def forward_rows(rows: Any, x3: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], eps: float, mix: MixFn,
                 params: tuple) -> tuple:
    """``(y, mean_in, var_in, mean, var, *aux)`` for ``x3`` ``(N, C, M)``
    with the row passes ``rows``; ``y`` holds the output's elements in the
    row pass's own layout (view it as the input's shape). ``mean_in``,
    ``var_in`` and ``aux`` are in the statistics dtype, the mixed ``mean``
    and ``var`` in the mixing dtype (float64)."""
    n, c, m = x3.shape
    mean_r, var_r = rows.moments(x3)
    stat = mean_r.dtype
    wide = _wide(mean_r)
    mean_in = mean_r.view(n, c)
    var_in = var_r.view(n, c) * bessel(m)
    mean, var, *aux = mix.forward(mean_in.to(wide), var_in.to(wide),
                                  *(_to(p, wide) for p in params))
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.to(wide)
    # y = (x - mean) * scale + bias
    #   = (x - mean_in) * scale + offset: centred on the row's own mean,
    # so a large common mean cancels before rounding.
    offset = (mean_in - mean) * scale
    if bias is not None:
        offset = offset + bias.to(wide)
    scale = scale.expand(n, c).reshape(-1).to(stat)
    offset = offset.reshape(-1).to(stat)
    y = rows.affine(x3, mean_r, scale, offset)
    return (y, mean_in, var_in, mean, var, *(a.to(stat) for a in aux))


def backward_rows(rows: Any, grad3: Tensor, x3: Tensor, mean_in: Tensor,
                  var_in: Tensor, mean: Tensor, var: Tensor,
                  weight: Optional[Tensor], bias: Optional[Tensor],
                  eps: float, mix: MixFn, params: tuple, aux: tuple,
                  input_grad: bool) -> tuple:
    """``(grad_x3 or None, grad_weight, grad_bias, *grad_params)``; the
    (N, C) part runs in the mixing dtype, like the forward's."""
    n, c, m = x3.shape
    stat = mean_in.dtype
    mean_flat = mean_in.reshape(-1)
    dy_sum, dy_xc = rows.grad_sums(grad3, x3, mean_flat)
    wide = _wide(mean_in)
    mean_in_w, var_in_w = mean_in.to(wide), var_in.to(wide)
    mean, var = mean.to(wide), var.to(wide)
    weight_w = _to(weight, wide)
    params_w = tuple(_to(p, wide) for p in params)
    aux_w = tuple(_to(a, wide) for a in aux)
    grad_shift = dy_sum.view(n, c).to(wide)
    # y = x * scale + shift, scale = weight * rstd,
    # shift = bias - mean * scale, rstd = (var + eps)^-1/2;
    # sum(dy * (x - mean)) = sum(dy * (x - mean_in))
    #                        + (mean_in - mean) * sum(dy)
    rstd = (var + eps).rsqrt()
    scale = rstd if weight is None else rstd * weight_w
    grad_mean = -scale * grad_shift
    grad_scale_total = (dy_xc.view(n, c).to(wide)
                        + (mean_in_w - mean) * grad_shift)
    grad_weight = grad_bias = None
    if weight is not None:
        grad_weight = (grad_scale_total * rstd).sum(0).to(weight.dtype)
        grad_rstd = grad_scale_total * weight_w
    else:
        grad_rstd = grad_scale_total
    if bias is not None:
        grad_bias = grad_shift.sum(0).to(bias.dtype)
    grad_var = grad_rstd * (-0.5) * rstd.pow(3)

    grad_mean_in, grad_var_in, *grad_params = mix.backward(
        mean_in_w, var_in_w, params_w, aux_w, grad_mean.expand(n, c),
        grad_var.expand(n, c))
    grad_params = [None if g is None or p is None else g.to(p.dtype)
                   for g, p in zip(grad_params, params)]

    grad_x3 = None
    if input_grad:
        # d var_in / dx = 2 (x - mean_in) / (M - 1) (0 if M == 1);
        # d mean_in / dx = 1 / M, so
        # dx = dy * scale + (x - mean_in) * k1 + k0.
        k1 = (grad_var_in * (2.0 / torch.sym_max(m - 1, 1))).reshape(-1)
        k0 = (grad_mean_in / m).reshape(-1)
        scale = scale.expand(n, c).reshape(-1)
        grad_x3 = rows.grad_input(grad3, x3, mean_flat, scale.to(stat),
                                  k1.to(stat), k0.to(stat))
    return (grad_x3, grad_weight, grad_bias, *grad_params)


class _MomentNorm(torch.autograd.Function):
    """Any ``mix`` over any backend's row passes (SyncSN; the composed
    path)."""

    @staticmethod
    def forward(ctx, x3: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float, mix: MixFn, backend: str,
                *params: Optional[Tensor]):
        with torch.autocast(x3.device.type, enabled=False):
            y, mean_in, var_in, mean, var, *aux = forward_rows(
                row_passes(backend), x3, weight, bias, eps, mix, params)
        # mean_in is a view of the moments pass's output; a saved view of
        # an intermediate cannot leave a traced autograd.Function
        ctx.save_for_backward(x3, mean_in.clone(), var_in, mean, var,
                              weight, bias, *aux, *params)
        ctx.num_aux = len(aux)
        ctx.eps = eps
        ctx.mix = mix
        ctx.backend = backend
        ctx.mark_non_differentiable(*aux)
        # y is the row pass's own buffer, in whatever shape it has: a view
        # made here would forbid in-place ops after the layer
        # (ReLU(inplace=True)); the caller views it as the input's shape
        return (y, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused_aux_grads):
        (x3, mean_in, var_in, mean, var, weight, bias,
         *rest) = ctx.saved_tensors
        aux, params = rest[:ctx.num_aux], rest[ctx.num_aux:]
        with torch.autocast(x3.device.type, enabled=False):
            grad_x3, grad_weight, grad_bias, *grad_params = backward_rows(
                row_passes(ctx.backend), grad_y.reshape(x3.shape), x3,
                mean_in, var_in, mean, var, weight, bias, ctx.eps, ctx.mix,
                params, aux, ctx.needs_input_grad[0])
        return (grad_x3, grad_weight, grad_bias, None, None, None,
                *grad_params)


def _weights_of(param: Tensor, available: Optional[Tensor],
                choices: Optional[Tensor], row: int) -> Tensor:
    """What the library op derives from its params, in Python ops."""
    weights = param if available is None else masked_softmax(param,
                                                             available)
    return weights if choices is None else chosen_weights(weights,
                                                          choices[row])


def switchable_norm(x: Tensor, weight: Optional[Tensor],
                    bias: Optional[Tensor], eps: float, mix: MixFn,
                    mean_param: Tensor, var_param: Tensor,
                    running_mean: Optional[Tensor] = None,
                    running_var: Optional[Tensor] = None,
                    available: Optional[Tensor] = None,
                    choices: Optional[Tensor] = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``x`` with SN-family statistics mixed by ``mix``.

    Args:
        x: ``(N, C, *)`` input, not empty; the statistics of a (sample,
            channel) slice are over all its ``*`` elements (one for
            ``(N, C)`` input).
        weight, bias: ``(C,)`` affine parameters, or ``None``.
        eps: added to the mixed variance.
        mix: e.g. :class:`mmnorm.ops.SwitchableMix` (see :data:`MixFn`).
        mean_param, var_param: ``(3,)`` mixing weights over [IN, LN, BN];
            with ``available`` they are lambdas and the weights are their
            softmax over the available branches (computed inside the op).
        running_mean, running_var: ``(C,)`` BN statistics to use instead
            of the batch's, or ``None``.
        available: ``(3,)`` bool mask of the branches the softmax covers.
        choices: ``(2,)`` long, a frozen branch index for the means and
            the variances or -1: a chosen row uses the one-hot of its
            branch and its param gets an exactly-zero gradient (SSN's
            frozen choices, applied inside the op without a host read).

    Returns:
        ``(y, batch_mean, batch_var)``: ``y`` of the shape and dtype of
        ``x``; the ``(C,)`` BN statistics the layer used (no gradient).
    """
    backend = dispatch.backend_for(x)
    if backend not in (dispatch.EXPORT, dispatch.COMPOSED) \
            and type(mix) in KERNEL_MIXES:
        return torch.ops.mmnorm.switchable_norm(
            x, weight, bias, mean_param, var_param, available, choices,
            running_mean, running_var, eps, mix.flat_input)
    mean_weight = _weights_of(mean_param, available, choices, 0)
    var_weight = _weights_of(var_param, available, choices, 1)
    if backend == dispatch.EXPORT:
        from .plain import switchable_norm_plain
        return switchable_norm_plain(x, weight, bias, mean_weight,
                                     var_weight, running_mean, running_var,
                                     eps, mix.flat_input)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    y, *aux = _MomentNorm.apply(x3, weight, bias, eps, mix, backend,
                                mean_weight, var_weight, running_mean,
                                running_var)
    return (y.view(x.shape), *aux)


def moment_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float, mix: MixFn,
                *params: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Normalize ``x`` with statistics mixed from its per-sample moments.

    Like :func:`switchable_norm` with the weights given, for any ``mix``
    and any number of ``params`` passed to it (gradients flow to them).

    Returns:
        ``(y, *aux)`` with ``y`` of the shape and dtype of ``x``.
    """
    if len(params) == 4:
        return switchable_norm(x, weight, bias, eps, mix, *params)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    y, *aux = _MomentNorm.apply(x3, weight, bias, eps, mix,
                                dispatch.backend_for(x), *params)
    return (y.view(x.shape), *aux)


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of every (sample, channel) slice.

    Args:
        x: ``(N, C, M)``.

    Returns:
        ``(mean, var)``, each ``(N, C)`` in the statistics dtype. The
        variance is unbiased (divides by ``M - 1``) as in the authors' SN;
        a slice of one element has variance 0 instead of NaN.
    """
    n, c, m = x.shape
    # The kernels have no autograd formula of their own.
    differentiable = torch.is_grad_enabled() and x.requires_grad
    backend = dispatch.backend_for(x)
    if differentiable or backend == dispatch.EXPORT:
        var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=2,
                                   correction=0)
    else:
        mean, var = row_passes(backend).moments(x)
    return mean.view(n, c), var.view(n, c) * bessel(m)
