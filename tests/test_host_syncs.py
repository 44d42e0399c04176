"""No device-to-host synchronisation inside a training step of any mmnorm
layer, forward and backward.

A host read of a device value (``.item()``, ``int(t)``, ``bool(t)``,
``nonzero``, ``torch.equal``, ...) reaches the dispatcher as
``aten._local_scalar_dense`` (or as the op itself); on a GPU each one
stalls the CPU until the stream has caught up. A ``TorchDispatchMode``
sees every op the step dispatches, also those issued by C++ kernels and by
the autograd engine, so counting these ops on CPU tensors finds every sync
a CUDA step would make.
"""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmnorm import IBN, SparseSwitchableNorm, SwitchableNorm
from mmnorm.layers.fixed import FixedSourceNorm
from mmnorm.layers.kn import KalmanNorm
from mmnorm.ops import _kernel
from mmnorm.ops.sparsestmax import sparsestmax

aten = torch.ops.aten
_HOST_READS = {aten._local_scalar_dense, aten.item, aten.nonzero,
               aten.is_nonzero, aten.equal, aten.allclose}


class HostReads(TorchDispatchMode):
    """Records every dispatched op that reads a device value back to the
    host."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _HOST_READS:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def host_reads_of_step(layer, x, steps=1):
    """Host reads during ``steps`` training forward+backward passes."""
    grad = torch.randn_like(x)
    with HostReads() as mode:
        for _ in range(steps):
            layer(x).backward(grad)
    return mode.calls


def test_the_counter_sees_host_reads():
    """The check itself: ``float``, ``nonzero`` and ``bool`` are seen."""
    t = torch.randn(3)
    with HostReads() as mode:
        float(t.sum())
        torch.nonzero(t > 0)
        bool((t > 5).any())
    assert len(mode.calls) == 3


@pytest.fixture(params=[True, False], ids=['kernel', 'composed'])
def kernel(request):
    enabled, _kernel.ENABLED = _kernel.ENABLED, request.param
    yield request.param
    _kernel.ENABLED = enabled


SN_OPTIONS = {
    'default': dict(),
    'momentum_none': dict(momentum=None),
    'no_moving_average': dict(using_moving_average=False),
    'no_bn_no_affine': dict(using_bn=False, affine=False),
}
SHAPES = [(4, 6, 5, 5), (5, 6), (2, 6, 3, 4, 4)]


@pytest.mark.parametrize('options', list(SN_OPTIONS.values()),
                         ids=list(SN_OPTIONS))
@pytest.mark.parametrize('cls', [SwitchableNorm, SparseSwitchableNorm])
def test_sn_and_learning_ssn_training_step(kernel, cls, options):
    for shape in SHAPES:
        layer = cls(6, **options)
        if cls is SparseSwitchableNorm:
            layer.set_radius(0.3)
        x = torch.randn(shape, requires_grad=True)
        assert host_reads_of_step(layer, x, steps=2) == []
        assert x.grad is not None and layer.mean_weight.grad is not None
    if cls is SparseSwitchableNorm:
        assert not layer.mean_fixed  # still learning: the soft path ran


@pytest.mark.parametrize('options', list(SN_OPTIONS.values()),
                         ids=list(SN_OPTIONS))
def test_ssn_freezing_and_frozen_training_steps(kernel, options):
    for shape in SHAPES:
        layer = SparseSwitchableNorm(6, **options)
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([1.2, 1.0, 0.9]))
            layer.var_weight.copy_(torch.tensor([0.2, 0.9, 0.3]))
        layer.set_radius(0.95)
        x = torch.randn(shape, requires_grad=True)
        # the step that freezes, then frozen steps
        assert host_reads_of_step(layer, x) == []
        assert layer.fixed
        assert host_reads_of_step(layer, x, steps=2) == []
        assert layer.mean_weight.grad.abs().sum() == 0


def test_ssn_eval_forward_and_sparsestmax():
    layer = SparseSwitchableNorm(6).eval()
    layer.set_radius(0.5)
    with HostReads() as mode, torch.no_grad():
        layer(torch.randn(2, 6, 4, 4))
        sparsestmax(torch.randn(4, 3), torch.tensor(0.4),
                    torch.tensor([False, True, True]))
    assert mode.calls == []


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('sources', [(0, 0), (1, 2), (2, 2)])
def test_fixed_source_norm_training_step(kernel, sources, momentum):
    layer = FixedSourceNorm(6, *sources, momentum=momentum)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    assert host_reads_of_step(layer, x, steps=2) == []


class _Link:
    def __init__(self, operator, mean, var):
        self.operator, self.rectify = operator, True
        self.state = (mean, var)

    def source_state(self):
        return self.state


@pytest.mark.parametrize('prediction', ['none', 'combined', 'diverged'])
@pytest.mark.parametrize('options', [dict(), dict(momentum=None),
                                     dict(group_size=2),
                                     dict(predictor='sampled')],
                         ids=['default', 'momentum_none', 'groups',
                              'sampled'])
def test_kn_training_step(prediction, options):
    layer = KalmanNorm(6, **options)
    layer.kn_wired = True
    if prediction != 'none':
        conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        groups = 2 if options.get('group_size') else 1
        var = torch.ones(groups, 3)
        if prediction == 'diverged':
            var = var * 1e6
        layer.kn_link = _Link(conv, torch.zeros(groups, 3), var)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    assert host_reads_of_step(layer, x, steps=2) == []
    assert layer.kn_last_prior == prediction  # read after the step


def test_ibn_training_step():
    layer = IBN(6)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    assert host_reads_of_step(layer, x, steps=2) == []


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('sw_type', [2, 3, 5])
def test_sw_training_step(sw_type, momentum):
    from mmnorm.layers import SwitchableWhitening
    layer = SwitchableWhitening(8, num_pergroup=4, sw_type=sw_type,
                                momentum=momentum)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    assert host_reads_of_step(layer, x, steps=2) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_training_steps_do_not_synchronize():
    """On a GPU, CUDA's own sync detector raises on any synchronizing call
    (``.item()``, blocking copies, ``nonzero``) inside the steps."""
    layers = [SwitchableNorm(6, momentum=None), SparseSwitchableNorm(6),
              FixedSourceNorm(6, 1, 2, momentum=None), IBN(6),
              KalmanNorm(6, momentum=None)]
    frozen = SparseSwitchableNorm(6)
    frozen.set_radius(0.95)
    layers.append(frozen)
    x = torch.randn(4, 6, 5, 5, device='cuda', requires_grad=True)
    grad = torch.randn_like(x)
    for layer in layers:
        layer.cuda()
        layer(x).backward(grad)  # warm-up: kernels load, SSN freezes
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            for _ in range(3):
                layer(x).backward(grad)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    assert frozen.fixed and frozen._host_frozen
