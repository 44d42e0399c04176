"""Every mmnorm layer on CUDA against the same layer on the CPU in float64.

Skipped without CUDA: these run in the prepared GPU check
(``tools/gpu_check.sh``, docs/gpu.md). Each layer runs a training step
(forward, backward) and an eval forward in float32, float16 and bfloat16
input on the GPU; a deep copy runs the same step in float64 on the CPU
with the same (already rounded) input and output gradient. Compared: the
output, the input gradient, every parameter gradient and every running
buffer, by ``||a - b|| / ||b||`` with a tolerance per dtype. Also: the
dispatch takes the Triton path for CUDA tensors, a training step makes no
host synchronisation, and an autocast step keeps the buffers float32 and
makes no full-size float32 copy of the activation.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs CUDA (tools/gpu_check.sh)')

#: the device under test (a dry run of the logic can set 'cpu')
DEVICE = 'cuda'
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: relative-norm tolerance of outputs and gradients, per input dtype: the
#: output is rounded to the dtype (unit roundoff 6e-8, 4.9e-4, 3.9e-3)
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
#: buffers and parameter gradients are float32 reductions of the exact
#: (rounded) input: tighter than the output in half precision
STAT_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}


def _layers(c: int, dim: int, spatial: int = 2) -> dict[str, nn.Module]:
    from mmnorm import (
        IBN,
        KalmanNorm,
        SparseSwitchableNorm,
        SwitchableNorm,
        SyncSwitchableNorm,
    )
    from mmnorm.layers.fixed import FixedSourceNorm
    learning = SparseSwitchableNorm(c)
    learning.set_radius(0.4)  # a sparse but not yet one-hot choice
    frozen = SparseSwitchableNorm(c)
    frozen.mean_choice.fill_(1)  # LN mean, BN variance
    frozen.var_choice.fill_(2)
    layers = {'SN': SwitchableNorm(c),
              'SN momentum=None': SwitchableNorm(c, momentum=None),
              'SSN learning': learning, 'SSN frozen': frozen,
              'FixedSourceNorm(LN, BN)': FixedSourceNorm(c, 1, 2),
              'FixedSourceNorm(IN, IN)': FixedSourceNorm(c, 0, 0),
              'SyncSN 1 process': SyncSwitchableNorm(c)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # KN without a chain: BN-like
        layers['KN'] = KalmanNorm(c)
    if dim == 4 and spatial > 1:  # IN trains on more than one element
        layers['IBN'] = IBN(c)
    if dim == 2 or spatial == 1:
        # (N, C) has no IN statistics; IN over one element is degenerate
        # (the output is the bias; its input gradient is 0 / sqrt(eps))
        del layers['FixedSourceNorm(IN, IN)']
    gen = torch.Generator().manual_seed(1)
    for layer in layers.values():
        for p in layer.parameters():  # off the initial values
            p.data.add_(0.3 * torch.randn(p.shape, generator=gen))
    return layers


def _rel(a: torch.Tensor, b: torch.Tensor,
         scale: float | None = None) -> float:
    """``||a - b|| / max(||b||, scale)``; ``scale`` defaults to an RMS of
    0.1 (values of order one: a reference that is zero in exact arithmetic,
    e.g. the input gradient of BN over two samples, stays meaningful)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), 'non-finite values'
    floor = 0.1 * b.numel() ** 0.5 if scale is None else scale
    return float((a - b).norm() / b.norm().clamp_min(floor))


def _step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    x = x.detach().requires_grad_(True)
    layer.train()
    y = layer(x)
    y.backward(dy)
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    return y, x.grad, y_eval


SHAPES = [(4, 32, 9, 7), (2, 64, 56, 56), (3, 32, 3, 5, 4), (16, 32),
          (2, 32, 1, 1)]


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_layers_on_cuda_match_cpu_float64(shape, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape).to(dtype)
    failures = []
    spatial = x[0, 0].numel()
    for name, layer in _layers(shape[1], len(shape), spatial).items():
        ref = copy.deepcopy(layer).double()
        gpu = layer.to(DEVICE)
        y, dx, y_eval = _step(gpu, x.to(DEVICE), dy.to(DEVICE))
        y64, dx64, y_eval64 = _step(ref, x.double(), dy.double())
        if y.dtype != dtype or dx.dtype != dtype:
            failures.append(f'{name}: output {y.dtype}, grad {dx.dtype}')
        checks = [('output', y, y64, TOL, None),
                  ('input grad', dx, dx64, TOL, None),
                  ('eval output', y_eval, y_eval64, TOL, None)]
        for (pname, p), p64 in zip(gpu.named_parameters(),
                                   ref.parameters()):
            scale = None
            if pname in ('mean_weight', 'var_weight'):
                # a lambda's gradient is a difference of sums as large as
                # gamma's gradient: measure its error on that scale
                scale = float(ref.weight.grad.norm())
            checks.append((f'grad {pname}', p.grad, p64.grad, STAT_TOL,
                           scale))
        for (bname, b), b64 in zip(gpu.named_buffers(), ref.buffers()):
            if b.is_floating_point():
                if b.dtype != torch.float32:
                    failures.append(f'{name}: buffer {bname} is {b.dtype}')
                checks.append((f'buffer {bname}', b, b64, STAT_TOL, None))
            elif not torch.equal(b.cpu(), b64):
                failures.append(f'{name}: buffer {bname} {b} != {b64}')
        for what, a, b, tol, scale in checks:
            if a is None or b is None:
                if (a is None) != (b is None):
                    failures.append(f'{name}: {what} missing on one side')
                continue
            try:
                err = _rel(a, b, scale)
            except AssertionError as e:
                failures.append(f'{name}: {what}: {e}')
                continue
            if err > tol[dtype]:
                failures.append(f'{name}: {what} rel. error {err:.2e} > '
                                f'{tol[dtype]:.0e}')
    assert not failures, '\n'.join(failures)


@pytest.mark.parametrize('layout', ['channels_last', 'sliced', 'expanded'])
def test_non_contiguous_input_and_gradient(layout):
    from mmnorm import SwitchableNorm
    torch.manual_seed(0)
    base = torch.randn(4, 32, 12, 10)
    dy = torch.randn(4, 32, 12, 10)
    if layout == 'channels_last':
        x_gpu = base.to(DEVICE).to(memory_format=torch.channels_last)
        dy_gpu = dy.to(DEVICE).to(memory_format=torch.channels_last)
    elif layout == 'sliced':
        x_gpu = torch.randn(4, 32, 12, 20).to(DEVICE)[..., ::2]
        base = x_gpu.cpu()
        dy_gpu = dy.to(DEVICE)
    else:
        x_gpu = base[:1].to(DEVICE).expand(4, -1, -1, -1)
        base = x_gpu.cpu().contiguous()
        dy_gpu = dy[:, :1].to(DEVICE).expand(-1, 32, -1, -1)
        dy = dy_gpu.cpu().contiguous()
    layer = SwitchableNorm(32)
    ref = copy.deepcopy(layer).double()
    y, dx, _ = _step(layer.to(DEVICE), x_gpu, dy_gpu)
    y64, dx64, _ = _step(ref, base.double(), dy.double())
    assert _rel(y, y64) < 2e-5 and _rel(dx, dx64) < 2e-5
    assert _rel(layer.mean_weight.grad, ref.mean_weight.grad) < 2e-5


def test_dispatch_takes_triton_for_cuda_tensors():
    pytest.importorskip('triton')
    from mmnorm.ops import dispatch
    x = torch.randn(2, 8, 4, 4, device=DEVICE)
    assert dispatch.triton_available()
    assert dispatch.backend_for(x) == dispatch.TRITON == 'triton'
    assert dispatch.backend_for(x.cpu()) != 'triton'


def test_inplace_relu_after_the_layer():
    # mmdet/torchvision ResNets apply ReLU(inplace=True) to the output
    torch.manual_seed(0)
    for name, layer in _layers(16, 4).items():
        x = torch.randn(2, 16, 5, 5, device=DEVICE, requires_grad=True)
        y = torch.relu_(layer.to(DEVICE)(x))
        y.sum().backward()
        assert torch.isfinite(x.grad).all(), name


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_training_step_makes_no_host_sync(dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 32, 16, 16, device=DEVICE, dtype=dtype)
    dy = torch.randn_like(x)
    failures = []
    for name, layer in _layers(32, 4).items():
        layer.to(DEVICE).train()
        _step(layer, x, dy)  # warm-up: builds, compiles, caches
        layer.train()
        xg = x.detach().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            layer(xg).backward(dy)
        except RuntimeError as err:
            failures.append(f'{name}: {str(err)[:200]}')
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert not failures, '\n'.join(failures)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_autocast_step_keeps_float32_buffers_and_no_float32_copies(dtype):
    from mmnorm import SwitchableNorm
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 1, bias=False).to(DEVICE)
    sn = SwitchableNorm(64).to(DEVICE)
    x = torch.randn(8, 64, 128, 128, device=DEVICE)
    with torch.autocast('cuda', dtype=dtype):
        h = conv(x)
    assert h.dtype == dtype
    h = h.detach().requires_grad_(True)
    dy = torch.randn_like(h)
    for _ in range(2):  # warm-up, then measure
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast('cuda', dtype=dtype):
            y = sn(h)
        fwd_peak = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        mid = torch.cuda.memory_allocated()
        y.backward(dy)
        bwd_peak = torch.cuda.max_memory_allocated() - mid
        h.grad = None
        del y
    assert sn.running_mean.dtype == torch.float32
    assert sn.running_var.dtype == torch.float32
    assert torch.isfinite(sn.running_var).all()
    big = h.numel() * h.element_size()  # a float32 copy would be 2 * big
    # forward: the output (+ small statistics); backward: the input grad
    assert fwd_peak < 1.5 * big, f'forward peak {fwd_peak / big:.2f} x input'
    assert bwd_peak < 1.5 * big, f'backward peak {bwd_peak / big:.2f} x input'
