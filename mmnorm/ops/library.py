"""Python registrations for the ``torch.ops.mmnorm`` library.

The op schemas, their CPU kernels and the autograd node of
``switchable_norm`` are C++ (``mmnorm/ops/csrc``). This module adds, once
the library is loaded (:func:`register`, called by
:mod:`mmnorm.ops._kernel`):

* a fake (meta) implementation of every op, so that ``torch.compile``,
  ``torch.export`` and ``torch.library.opcheck`` can trace them with any
  (symbolic) shape;
* the CUDA kernels of the two whole-layer device ops,
  ``switchable_norm_forward`` and ``switchable_norm_backward``: the Triton
  row passes of :mod:`mmnorm.ops.triton_rows` around the small ``(N, C)``
  mixing in PyTorch ops (no host synchronisation).

Shapes, as in the C++ source: ``x (N, C, *)``; rows ``R = N * C`` of
``M`` elements; statistics in float32 (float64 for float64 input).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_registered: dict[str, bool] = {}


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# --------------------------------------------------------------------------
# Fake implementations: shapes and dtypes only.

def _fake_row_moments(x):
    return x.new_empty(x.shape[:1]), x.new_empty(x.shape[:1])


def _fake_row_affine(x, s, a, b):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_row_grad_sums(dy, x, s):
    return x.new_empty(x.shape[:1]), x.new_empty(x.shape[:1])


def _fake_row_grad_input(dy, x, s, a, b, c):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_sn_mix_forward(mean_in, var_in, mean_weight, var_weight,
                         running_mean, running_var, weight, bias, eps, flat):
    rows = mean_in.new_empty(mean_in.shape[0] * mean_in.shape[1])
    channels = mean_in.new_empty(mean_in.shape[1:])
    return rows, torch.empty_like(rows), channels, torch.empty_like(channels)


def _fake_sn_mix_backward(sum_dy, sum_dy_xc, mean_in, var_in, mean_weight,
                          var_weight, running_mean, running_var, weight,
                          bias, eps, flat, count):
    rows = mean_in.new_empty(mean_in.shape[0] * mean_in.shape[1])
    like_w = weight if weight is not None else mean_weight
    like_b = bias if bias is not None else mean_weight
    return (rows, torch.empty_like(rows), torch.empty_like(rows),
            like_w.new_empty(mean_in.shape[1:]),
            like_b.new_empty(mean_in.shape[1:]),
            torch.empty_like(mean_weight), torch.empty_like(var_weight))


def _fake_switchable_norm_forward(x, weight, bias, mean_weight, var_weight,
                                  running_mean, running_var, eps, flat):
    n, c = x.shape[0], x.shape[1]
    stat = _stat_dtype(x.dtype)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    return (y, x.new_empty((n, c), dtype=stat),
            x.new_empty((n, c), dtype=stat), x.new_empty((c,), dtype=stat),
            x.new_empty((c,), dtype=stat))


def _fake_switchable_norm_backward(grad_y, x, mean_in, var_in, weight, bias,
                                   mean_weight, var_weight, running_mean,
                                   running_var, eps, flat, input_grad):
    c = x.shape[1]
    grad_x = (torch.empty_like(x, memory_format=torch.contiguous_format)
              if input_grad else x.new_empty((0,)))
    grad_weight = (weight.new_empty((c,)) if weight is not None
                   else mean_weight.new_empty((0,)))
    grad_bias = (bias.new_empty((c,)) if bias is not None
                 else mean_weight.new_empty((0,)))
    return (grad_x, grad_weight, grad_bias, torch.empty_like(mean_weight),
            torch.empty_like(var_weight))


def _fake_switchable_norm(x, weight, bias, mean_param, var_param, available,
                          choices, running_mean, running_var, eps, flat):
    c = x.shape[1]
    stat = _stat_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((c,), dtype=stat), x.new_empty((c,), dtype=stat))


def _fake_sparsestmax(z, radius, available):
    return torch.empty_like(z)


_FAKES = {
    'row_moments': _fake_row_moments,
    'row_affine': _fake_row_affine,
    'row_grad_sums': _fake_row_grad_sums,
    'row_grad_input': _fake_row_grad_input,
    'sn_mix_forward': _fake_sn_mix_forward,
    'sn_mix_backward': _fake_sn_mix_backward,
    'switchable_norm_forward': _fake_switchable_norm_forward,
    'switchable_norm_backward': _fake_switchable_norm_backward,
    'switchable_norm': _fake_switchable_norm,
    'sparsestmax': _fake_sparsestmax,
}


# --------------------------------------------------------------------------
# CUDA kernels of the whole-layer device ops.

def _mix(flat: bool):
    from .switchable import SwitchableMix
    return SwitchableMix(flat_input=flat)


def _cuda_rows():
    from .dispatch import TRITON
    from .moment_norm import row_passes
    return row_passes(TRITON)


def _params(mean_weight, var_weight, running_mean, running_var):
    # statistics dtype: the mix runs in float32 for half parameters
    return tuple(None if t is None else t.float() if t.dtype in (
        torch.float16, torch.bfloat16) else t
        for t in (mean_weight, var_weight, running_mean, running_var))


def _cuda_switchable_norm_forward(x: Tensor, weight: Optional[Tensor],
                                  bias: Optional[Tensor], mean_weight: Tensor,
                                  var_weight: Tensor,
                                  running_mean: Optional[Tensor],
                                  running_var: Optional[Tensor], eps: float,
                                  flat: bool):
    from .moment_norm import forward_rows
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    params = _params(mean_weight, var_weight, running_mean, running_var)
    y, mean_in, var_in, _, _, mean_bn, var_bn = forward_rows(
        _cuda_rows(), x3, weight, bias, eps, _mix(flat), params)
    stat = mean_in.dtype
    # outputs never alias inputs (the running buffers pass through the mix)
    return (y.view(x.shape), mean_in, var_in,
            mean_bn.to(stat, copy=True), var_bn.to(stat, copy=True))


def _cuda_switchable_norm_backward(grad_y: Tensor, x: Tensor,
                                   mean_in: Tensor, var_in: Tensor,
                                   weight: Optional[Tensor],
                                   bias: Optional[Tensor],
                                   mean_weight: Tensor, var_weight: Tensor,
                                   running_mean: Optional[Tensor],
                                   running_var: Optional[Tensor], eps: float,
                                   flat: bool, input_grad: bool):
    from .moment_norm import backward_rows
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    grad3 = grad_y.reshape(x3.shape)
    mix = _mix(flat)
    params = _params(mean_weight, var_weight, running_mean, running_var)
    # the (N, C) mix is recomputed: cheaper than saving it
    mean, var, *aux = mix.forward(mean_in, var_in, *params)
    grad_x3, grad_weight, grad_bias, grad_mw, grad_vw, *_ = backward_rows(
        _cuda_rows(), grad3, x3, mean_in, var_in, mean, var, weight, bias,
        eps, mix, params, aux, input_grad)
    grad_x = (grad_x3.view(x.shape) if grad_x3 is not None
              else x.new_empty((0,)))
    empty = mean_weight.new_empty((0,))
    return (grad_x,
            empty if grad_weight is None else grad_weight.to(weight.dtype),
            empty if grad_bias is None else grad_bias.to(bias.dtype),
            grad_mw.to(mean_weight.dtype), grad_vw.to(var_weight.dtype))


def register() -> None:
    """Register the fakes and CUDA kernels (once per process)."""
    if _registered:
        return
    _registered['done'] = True
    for name, fake in _FAKES.items():
        torch.library.register_fake(f'mmnorm::{name}', fake)
    torch.library.impl('mmnorm::switchable_norm_forward', 'CUDA',
                       _cuda_switchable_norm_forward)
    torch.library.impl('mmnorm::switchable_norm_backward', 'CUDA',
                       _cuda_switchable_norm_backward)
