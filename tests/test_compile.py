"""mmnorm's ops and layers under ``torch.compile`` and ``opcheck``.

The default suite traces with the ``aot_eager`` backend: Dynamo and
AOTAutograd see exactly what Inductor would (fake tensors, the joint
forward/backward graph, guards), without Inductor's minutes of C++ code
generation on a 2-core machine; one test runs Inductor on an SN block.
"""
import copy

import pytest
import torch
from torch import nn
from torch.library import opcheck

from mmnorm.layers import (
    IBN,
    KalmanNorm,
    SparseSwitchableNorm,
    SwitchableNorm,
    SwitchableWhitening,
    SyncSwitchableNorm,
)
from mmnorm.layers.fixed import FixedSourceNorm
from mmnorm.models.kalman_chain import FixedState, Link
from mmnorm.ops import _kernel, dispatch

KERNEL = _kernel.load()
needs_kernel = pytest.mark.skipif(KERNEL is None,
                                  reason='CPU kernel unavailable')


# ------------------------------------------------------------------ opcheck

def _op_cases():
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=dtype)

    n, c, m = 2, 3, 5
    rows = rnd(n * c, m)
    shift, a, b, cc = (rnd(n * c) for _ in range(4))
    mean_in, var_in = rnd(n, c), rnd(n, c).abs() + 0.5
    weights = [rnd(3).softmax(0), rnd(3).softmax(0)]
    affine = [rnd(c), rnd(c)]
    running = [rnd(c), rnd(c).abs() + 0.5]
    available = torch.tensor([True, True, False])
    x = rnd(n, c, 4, 4)
    cases = [
        ('row_moments', (rows,)),
        ('row_affine', (rows, shift, a, b)),
        ('row_grad_sums', (rnd(n * c, m), rows, shift)),
        ('row_grad_input', (rnd(n * c, m), rows, shift, a, b, cc)),
        ('sn_mix_forward', (mean_in, var_in, *weights, None, None, *affine,
                            1e-5, False)),
        ('sn_mix_backward', (rnd(n * c), rnd(n * c), mean_in, var_in,
                             *weights, *running, *affine, 1e-5, False, m)),
        ('switchable_norm_forward', (x, *affine, *weights, None, None, 1e-5,
                                     False)),
        ('switchable_norm_forward', (x, None, None, *weights, *running,
                                     1e-5, False)),
        ('switchable_norm_backward', (rnd(*x.shape), x, mean_in, var_in,
                                      *affine, *weights, None, None, 1e-5,
                                      False, True)),
        ('switchable_norm_backward', (rnd(*x.shape), x, mean_in, var_in,
                                      None, None, *weights, *running, 1e-5,
                                      False, False)),
    ]
    # the autograd op: lambdas with the mask, or given weights
    lambdas = [rnd(3).requires_grad_(), rnd(3).requires_grad_()]
    cases += [
        ('switchable_norm', (x.clone().requires_grad_(),
                             *[t.clone().requires_grad_() for t in affine],
                             *lambdas, available, None, None, None, 1e-5,
                             False)),
        ('switchable_norm', (x.clone().requires_grad_(), None, None,
                             *weights, None, None, *running, 1e-5, False)),
        ('switchable_norm', (rnd(4, c).requires_grad_(), *affine, *lambdas,
                             torch.tensor([False, True, True]), None, None,
                             None, 1e-5, True)),
        # SSN: one row frozen to a branch, the other learned
        ('switchable_norm', (x.clone().requires_grad_(), None, None,
                             *[w.clone().requires_grad_() for w in weights],
                             None, torch.tensor([1, -1]), None, None, 1e-5,
                             False)),
    ]
    return cases


@needs_kernel
@pytest.mark.parametrize('case', range(len(_op_cases())))
def test_every_library_op_passes_opcheck(case):
    name, args = _op_cases()[case]
    opcheck(getattr(torch.ops.mmnorm, name), args)


# ------------------------------------------------------- compiled layers

class _AllLayers(nn.Module):
    """A small conv net with one layer of every kind."""

    def __init__(self) -> None:
        super().__init__()
        c = 4
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.sn = SwitchableNorm(c)
        self.ssn = SparseSwitchableNorm(c)
        self.fixed = FixedSourceNorm(c, 1, 2)
        self.sync = SyncSwitchableNorm(c)
        self.ibn = IBN(c, ratio=0.5)
        self.sw = SwitchableWhitening(c, num_pergroup=2)
        self.conv_kn = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.kn = KalmanNorm(c)
        self.kn.kn_wired = True
        prior = (torch.zeros(1, c), torch.ones(1, c))
        self.kn.kn_link = Link(self.conv_kn, FixedState(prior), True)
        self.head = nn.Linear(c, 5)
        self.sn_flat = SwitchableNorm(5)

    def forward(self, x):
        x = self.conv(x)
        for norm in (self.sn, self.ssn, self.fixed, self.sync, self.ibn,
                     self.sw):
            x = torch.relu(norm(x))
        x = torch.relu(self.kn(self.conv_kn(x)))
        return self.sn_flat(self.head(x.mean((2, 3))))


def _randomized(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('weight') and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.3)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and \
                    m.running_mean is not None:
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


class _Counting:
    """A backend that counts compilations (a retried attempt of the same
    compilation counts once) and traces with aot_eager."""

    def __init__(self) -> None:
        self.compile_ids: set = set()
        self.inner = torch._dynamo.lookup_backend('aot_eager')

    @property
    def graphs(self) -> int:
        return len(self.compile_ids)

    def __call__(self, gm, example_inputs):
        compile_id = torch._guards.CompileContext.current_compile_id()
        self.compile_ids.add((compile_id.frame_id,
                              compile_id.frame_compile_id))
        return self.inner(gm, example_inputs)


def _step(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    grads = torch.autograd.grad(y.square().sum(),
                                [x, *model.parameters()],
                                allow_unused=True)
    return y.detach(), grads


def _assert_same(compiled, eager, model_c, model_e, tol):
    (yc, gc), (ye, ge) = compiled, eager
    torch.testing.assert_close(yc, ye, rtol=tol, atol=tol)
    for a, b in zip(gc, ge):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for (name, a), (_, b) in zip(model_c.state_dict().items(),
                                 model_e.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize('kernel', [True, False], ids=['kernel', 'composed'])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_compiled_layers_equal_eager_without_recompiling(
        monkeypatch, kernel, training):
    if kernel and KERNEL is None:
        pytest.skip('CPU kernel unavailable')
    monkeypatch.setattr(_kernel, 'ENABLED', kernel)
    torch._dynamo.reset()
    eager = _randomized(_AllLayers()).train(training)
    model = copy.deepcopy(eager)
    backend = _Counting()
    compiled = torch.compile(model, backend=backend, fullgraph=True,
                             dynamic=True)
    expected_path = dispatch.CPU_KERNEL if kernel else dispatch.COMPOSED
    assert dispatch.backend_for(torch.zeros(1)) == expected_path
    # another batch and another (non-square) spatial size: one graph
    for shape in [(2, 3, 6, 10), (3, 3, 5, 7)]:
        x = torch.randn(*shape)
        _assert_same(_step(compiled, x), _step(eager, x), model, eager,
                     1e-4)
    assert backend.graphs == 1


def test_compiled_sn_on_1x1_maps_and_batch_one_is_finite_and_exact():
    torch._dynamo.reset()
    eager = _randomized(nn.Sequential(nn.Conv2d(3, 4, 1), SwitchableNorm(4),
                                      nn.ReLU()))
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True,
                             dynamic=True)
    for shape in [(2, 3, 1, 1), (1, 3, 4, 6)]:
        x = torch.randn(*shape)
        result = _step(compiled, x)
        assert torch.isfinite(result[0]).all()
        _assert_same(result, _step(eager, x), model, eager, 1e-5)


def test_switching_the_kernel_off_recompiles_instead_of_reusing():
    if KERNEL is None:
        pytest.skip('CPU kernel unavailable')
    torch._dynamo.reset()
    layer = SwitchableNorm(4)
    backend = _Counting()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(2, 4, 3, 5)
    compiled(x)
    enabled = _kernel.ENABLED
    try:
        _kernel.ENABLED = False
        compiled(x)
    finally:
        _kernel.ENABLED = enabled
    assert backend.graphs == 2


def _ssn_freezing_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                         SparseSwitchableNorm(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1),
                         SparseSwitchableNorm(4))


def test_ssn_layers_freezing_one_after_another_do_not_recompile():
    torch._dynamo.reset()
    eager = _ssn_freezing_net()
    model = copy.deepcopy(eager)
    backend = _Counting()
    compiled = torch.compile(model, backend=backend, fullgraph=True,
                             dynamic=True)
    x = torch.randn(2, 3, 6, 10)
    _assert_same(_step(compiled, x), _step(eager, x), model, eager, 1e-5)
    for index in (1, 4):  # freeze the first layer, then the second
        for net in (model, eager):
            layer = net[index]
            with torch.no_grad():
                layer.mean_weight.copy_(torch.tensor([0.0, 3.0, 0.0]))
                layer.var_weight.copy_(torch.tensor([0.0, 0.0, 3.0]))
            layer.set_radius(1.0)
        _assert_same(_step(compiled, x), _step(eager, x), model, eager,
                     1e-5)
        assert int(model[index].mean_choice) == 1
        assert int(model[index].var_choice) == 2
    assert backend.graphs == 1


def test_inductor_compiles_a_train_step_of_an_sn_block():
    torch._dynamo.reset()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.norm1 = SwitchableNorm(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.norm2 = SwitchableNorm(8)

        def forward(self, x):
            out = torch.relu(self.norm1(self.conv1(x)))
            return torch.relu(self.norm2(self.conv2(out)) + x)

    eager = _randomized(Block())
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 8, 6, 6)
    _assert_same(_step(compiled, x), _step(eager, x), model, eager, 1e-4)
