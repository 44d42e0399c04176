"""The compiled CPU kernel (mmnorm/ops/csrc) against the composed PyTorch
path and the independent float64 reference, and the fallback without it.

No timing here: speed is measured by tools/analysis_tools/benchmark_norms.py.
"""
import copy

import pytest
import torch
from reference import reference_sn
from torch import nn

from mmnorm import SparseSwitchableNorm, SwitchableNorm
from mmnorm.layers.fixed import FixedSourceNorm
from mmnorm.ops import _kernel, instance_moments, moment_norm
from mmnorm.ops.switchable import KERNEL_MIXES, SwitchableMix

KERNEL = _kernel.load()
needs_kernel = pytest.mark.skipif(
    KERNEL is None, reason='the compiled kernel could not be built here')

SHAPES = {2: (6, 5), 3: (4, 5, 7), 4: (3, 5, 4, 6), 5: (2, 5, 3, 4, 2)}
EDGE_SHAPES = [(1, 5, 4, 6), (3, 5, 1, 1), (1, 5, 1, 1), (2, 5, 37),
               (2, 3, 1003)]


def _run(layer, x, grad_out, kernel):
    """(y, dx, grads of the lambdas, weight and bias, buffers) on one
    path."""
    enabled, _kernel.ENABLED = _kernel.ENABLED, kernel
    try:
        x = x.detach().clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        y.backward(grad_out)
    finally:
        _kernel.ENABLED = enabled
    names = ('mean_weight', 'var_weight', 'weight', 'bias')
    grads = [getattr(layer, name).grad for name in names
             if getattr(layer, name, None) is not None]
    buffers = [b.clone() for b in layer.buffers()]
    return y.detach(), x.grad, grads, buffers


def _randomize(layer):
    with torch.no_grad():
        for p in (layer.mean_weight, layer.var_weight):
            p.copy_(torch.randn(3))
        if layer.affine:
            layer.weight.copy_(torch.rand(layer.num_features) + 0.5)
            layer.bias.copy_(torch.randn(layer.num_features))
        if layer.track_running_stats:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    return layer


def _reference(layer, x, grad_out, training):
    """Float64 reference output and gradients (x, lambdas, weight, bias)."""
    params = [p.detach().double().clone().requires_grad_()
              for p in (layer.mean_weight, layer.var_weight, layer.weight,
                        layer.bias)]
    xr = x.detach().double().clone().requires_grad_()
    running = {}
    if not training and layer.track_running_stats:
        running = dict(running_mean=layer.running_mean.double(),
                       running_var=layer.running_var.double())
    y, _, _ = reference_sn(xr, *params, eps=layer.eps,
                           using_bn=layer.using_bn, **running)
    y.backward(grad_out.double())
    return y.detach(), xr.grad, [p.grad for p in params]


def _close(actual, expected, tol):
    if not expected.is_floating_point():
        assert torch.equal(actual, expected)
        return
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol,
                               atol=tol * max(1.0, expected.abs().max()))


# --------------------------------------------------------------------------
# the row ops themselves


@needs_kernel
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('cols', [1, 3, 8, 37, 1003])
def test_row_ops_match_float64(dtype, cols):
    rows = 11
    x = (torch.randn(rows, cols) * 3 + 2).to(dtype)
    dy = torch.randn(rows, cols).to(dtype)
    s, a, b, c = (torch.randn(rows).to(dtype) for _ in range(4))
    xd, dyd = x.double(), dy.double()
    sd, ad, bd, cd = (t.double()[:, None] for t in (s, a, b, c))
    tol = 1e-5 if dtype == torch.float32 else 1e-12

    mean, var = KERNEL.row_moments(x)
    _close(mean, xd.mean(1), tol)
    _close(var, xd.var(1, unbiased=False), tol)
    _close(KERNEL.row_affine(x, s, a, b), (xd - sd) * ad + bd, tol)
    sum_dy, sum_dy_x = KERNEL.row_grad_sums(dy, x, s)
    _close(sum_dy, dyd.sum(1), tol)
    _close(sum_dy_x, (dyd * (xd - sd)).sum(1), tol)
    _close(KERNEL.row_grad_input(dy, x, s, a, b, c),
           dyd * ad + (xd - sd) * bd + cd, tol)


@needs_kernel
def test_row_moments_keep_variance_at_large_mean_in_float32():
    # |mean| / std = 300 (and outliers at the start of a row, where the
    # shift is taken) in float32.
    x = torch.randn(64, 3000, dtype=torch.float64) * 0.5 + 150.0
    x[:, 0] += 2.0
    mean, var = KERNEL.row_moments(x.float())
    xf = x.float().double()
    torch.testing.assert_close(mean.double(), xf.mean(1), rtol=1e-6,
                               atol=0)
    torch.testing.assert_close(var.double(), xf.var(1, unbiased=False),
                               rtol=1e-4, atol=0)


@needs_kernel
def test_row_moments_of_constant_rows_are_exact():
    x = torch.full((4, 300), 7.25)
    mean, var = KERNEL.row_moments(x)
    assert torch.equal(mean, torch.full((4,), 7.25))
    assert torch.equal(var, torch.zeros(4))


@needs_kernel
def test_row_ops_reject_unsupported_input():
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match='contiguous'):
        KERNEL.row_moments(x.t())
    with pytest.raises(RuntimeError, match='float32 or float64'):
        KERNEL.row_moments(x.half())
    with pytest.raises(RuntimeError, match='vector'):
        KERNEL.row_affine(x, torch.zeros(3), torch.ones(4), torch.zeros(4))


# --------------------------------------------------------------------------
# SN on the kernel vs the composed path vs the float64 reference


@needs_kernel
@pytest.mark.parametrize('shape', list(SHAPES.values()) + EDGE_SHAPES,
                         ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sn_kernel_matches_composed_and_reference(shape, training, dtype):
    layer = _randomize(SwitchableNorm(shape[1], momentum=0.3)).to(dtype)
    layer.train(training)
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    grad_out = torch.randn(shape).to(dtype)
    kernel = _run(copy.deepcopy(layer), x, grad_out, kernel=True)
    composed = _run(copy.deepcopy(layer), x, grad_out, kernel=False)
    ref_y, ref_dx, ref_grads = _reference(layer, x, grad_out, training)
    tol = 2e-4 if dtype == torch.float32 else 1e-9
    for path in (kernel, composed):
        y, dx, grads, _ = path
        assert y.dtype == dtype and y.shape == shape
        _close(y, ref_y, tol)
        _close(dx, ref_dx, tol)
        for grad, ref in zip(grads, ref_grads):
            _close(grad, ref, tol)
    # the same running statistics on both paths
    for a, b in zip(kernel[3], composed[3]):
        _close(a, b, tol)


@needs_kernel
@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('using_bn', [True, False])
def test_sn_options_on_the_kernel(affine, using_bn):
    shape = (3, 4, 5, 5)
    layer = SwitchableNorm(4, affine=affine, using_bn=using_bn).double()
    with torch.no_grad():
        layer.mean_weight.normal_()
        layer.var_weight.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    grad_out = torch.randn(shape, dtype=torch.float64)
    kernel = _run(copy.deepcopy(layer), x, grad_out, kernel=True)
    composed = _run(copy.deepcopy(layer), x, grad_out, kernel=False)
    for a, b in zip(kernel[:2], composed[:2]):
        _close(a, b, 1e-10)
    for a, b in zip(kernel[2], composed[2]):
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b, 1e-10)


@needs_kernel
def test_flat_input_masks_the_in_branch_on_the_kernel():
    layer = _randomize(SwitchableNorm(5)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    grad_out = torch.randn(6, 5, dtype=torch.float64)
    y, dx, grads, _ = _run(layer, x, grad_out, kernel=True)
    ref_y, ref_dx, ref_grads = _reference(layer, x, grad_out, True)
    _close(y, ref_y, 1e-10)
    _close(dx, ref_dx, 1e-10)
    # the masked IN weights get no gradient
    assert grads[0][0] == 0 and grads[1][0] == 0
    for grad, ref in zip(grads, ref_grads):
        _close(grad, ref, 1e-10)


@needs_kernel
@pytest.mark.parametrize('training', [True, False])
def test_large_mean_to_std_ratio_in_float32(training):
    # |mean| / std ~ 300: float32 must still give float32-accurate output
    # and gradients (E[x^2] - E[x]^2 in float32 would lose the variance).
    shape = (4, 8, 12, 12)
    layer = _randomize(SwitchableNorm(8))
    with torch.no_grad():
        layer.running_mean.fill_(300.0)
    layer.train(training)
    x = torch.randn(shape) + 300.0
    grad_out = torch.randn(shape)
    y, dx, grads, _ = _run(copy.deepcopy(layer), x, grad_out, kernel=True)
    ref_y, ref_dx, ref_grads = _reference(layer, x, grad_out, training)
    assert (y.double() - ref_y).abs().max() < 2e-3
    _close(dx, ref_dx, 2e-3)
    for grad, ref in zip(grads, ref_grads):
        _close(grad, ref, 2e-3)
    # no worse than the composed path
    composed = _run(copy.deepcopy(layer), x, grad_out, kernel=False)
    err_kernel = (y.double() - ref_y).abs().max()
    err_composed = (composed[0].double() - ref_y).abs().max()
    assert err_kernel <= 2 * err_composed + 1e-6


@needs_kernel
def test_constant_input_gives_bias_and_finite_gradients():
    layer = _randomize(SwitchableNorm(4))
    x = torch.full((2, 4, 3, 3), 5.0)
    grad_out = torch.randn(2, 4, 3, 3)
    y, dx, grads, _ = _run(layer, x, grad_out, kernel=True)
    torch.testing.assert_close(y, layer.bias.detach()[None, :, None, None]
                               .expand_as(y))
    assert torch.isfinite(dx).all()
    assert all(torch.isfinite(g).all() for g in grads)


@needs_kernel
def test_noncontiguous_and_channels_last_input():
    layer = _randomize(SwitchableNorm(6))
    base = torch.randn(3, 6, 5, 7)
    grad_out = torch.randn(3, 6, 5, 7)
    expected = _run(copy.deepcopy(layer), base, grad_out, kernel=True)
    inputs = [base.to(memory_format=torch.channels_last),
              base.transpose(2, 3).contiguous().transpose(2, 3),
              torch.randn(3, 6, 5, 14)[..., ::2].copy_(base)]
    for x in inputs:
        assert not x.is_contiguous()
        y, dx, grads, _ = _run(copy.deepcopy(layer), x, grad_out,
                               kernel=True)
        _close(y, expected[0], 1e-6)
        _close(dx, expected[1], 1e-6)
        for a, b in zip(grads, expected[2]):
            _close(a, b, 1e-6)
    # an expanded (stride-0) output gradient, as from y.sum()
    x = base.clone().requires_grad_()
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@needs_kernel
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_input_uses_float32_statistics(dtype):
    layer = _randomize(SwitchableNorm(4))
    x = torch.randn(2, 4, 6, 6).to(dtype)
    grad_out = torch.randn(2, 4, 6, 6).to(dtype)
    kernel = _run(copy.deepcopy(layer), x, grad_out, kernel=True)
    composed = _run(copy.deepcopy(layer), x, grad_out, kernel=False)
    assert kernel[0].dtype == dtype and kernel[1].dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    for a, b in zip(kernel[:2], composed[:2]):
        _close(a, b, tol)


@needs_kernel
def test_inplace_op_on_the_output_and_instance_moments():
    layer = SwitchableNorm(3)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = nn.ReLU(inplace=True)(layer(x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    rows = torch.randn(2, 3, 9, dtype=torch.float64)
    mean, var = instance_moments(rows)
    torch.testing.assert_close(mean, rows.mean(2))
    torch.testing.assert_close(var, rows.var(2))


@needs_kernel
def test_gradcheck_through_the_kernel():
    layer = _randomize(SwitchableNorm(3)).double()
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias, layer.mean_weight, layer.var_weight)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
    layer.eval()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


@needs_kernel
@pytest.mark.parametrize('training', [True, False])
def test_no_grad_and_inference_mode_give_the_same_output(training):
    layer = _randomize(SwitchableNorm(4)).train(training)
    x = torch.randn(2, 4, 5, 5)
    state = copy.deepcopy(layer.state_dict())
    expected = layer(x).detach()
    for context in (torch.no_grad, torch.inference_mode):
        layer.load_state_dict(state)  # same running buffers each time
        with context():
            y = layer(x)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)


@needs_kernel
def test_second_derivatives_are_refused_when_taken():
    layer = _randomize(SwitchableNorm(3))
    x = torch.randn(2, 3, 4, requires_grad=True)
    (plain,) = torch.autograd.grad(layer(x).square().sum(), x)
    # create_graph=True itself works and gives the same first derivative
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x,
                                  create_graph=True)
    torch.testing.assert_close(grad, plain)
    assert grad.requires_grad
    with pytest.raises(RuntimeError,
                       match='second derivatives are not implemented'):
        grad.square().sum().backward()


def _from_lambdas(x, mean_lambda, var_lambda, mask):
    return KERNEL.switchable_norm(x, None, None, mean_lambda, var_lambda,
                                  mask, None, None, None, 1e-5, False)[0]


@needs_kernel
@pytest.mark.parametrize('available', [(True, True, True),
                                       (False, True, True),
                                       (True, True, False),
                                       (False, True, False)])
def test_op_from_lambdas_uses_the_masked_softmax(available):
    mask = torch.tensor(available)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    mean_lambda = torch.randn(3, dtype=torch.float64, requires_grad=True)
    var_lambda = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = _from_lambdas(x, mean_lambda, var_lambda, mask)
    # independent weights: exp / sum over the available entries only
    weights = []
    for lam in (mean_lambda, var_lambda):
        e = lam.detach().exp() * mask
        weights.append(e / e.sum())
    expected = KERNEL.switchable_norm(x, None, None, *weights, None, None,
                                      None, None, 1e-5, False)[0]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, m, v: _from_lambdas(x, m, v, mask),
        (x, mean_lambda, var_lambda))


@needs_kernel
def test_op_with_given_weights_gives_them_their_gradient():
    # weights given (available=None), here from a softmax outside the op:
    # the op's forward assumes weights that sum to one, so the gradient is
    # checked along the simplex
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
    mean_l = torch.randn(3, dtype=torch.float64, requires_grad=True)
    var_l = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, m, v: KERNEL.switchable_norm(
            x, w, None, m.softmax(0), v.softmax(0), None, None, None, None,
            1e-5, False)[0],
        (x, weight, mean_l, var_l))


@needs_kernel
@pytest.mark.parametrize('choices', [(2, -1), (-1, 0), (1, 1)])
@pytest.mark.parametrize('from_lambdas', [False, True])
def test_op_builds_the_one_hot_of_frozen_choices(choices, from_lambdas):
    # SSN's frozen rows: the op's output equals the op with the one-hot
    # given, and a chosen row's param gets an exactly-zero gradient, also
    # when the output gradient is not finite
    mask = torch.tensor([True, True, True]) if from_lambdas else None
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(3, dtype=torch.float64).softmax(0)
              .requires_grad_() for _ in range(2)]
    chosen = torch.tensor(choices)
    y = KERNEL.switchable_norm(x, None, None, *params, mask, chosen, None,
                               None, 1e-5, False)[0]
    expected_weights = []
    for param, choice in zip(params, choices):
        w = param.detach().softmax(0) if from_lambdas else param.detach()
        expected_weights.append(
            torch.eye(3, dtype=torch.float64)[choice] if choice >= 0 else w)
    expected = KERNEL.switchable_norm(x, None, None, *expected_weights,
                                      None, None, None, None, 1e-5, False)[0]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    grad[0, 0, 0] = float('inf')
    y.backward(grad)
    for param, choice in zip(params, choices):
        if choice >= 0:
            assert param.grad.eq(0).all()
        else:
            assert not param.grad.eq(0).all()
    # the learned rows' gradient is the op's with the weights given
    x.grad = None
    free = [p.detach().clone().requires_grad_() for p in params]
    weights = [(f.softmax(0) if from_lambdas else f) if c < 0
               else torch.eye(3, dtype=torch.float64)[c]
               for f, c in zip(free, choices)]
    out = KERNEL.switchable_norm(x, None, None, *weights, None, None, None,
                                 None, 1e-5, False)[0]
    g = torch.randn_like(out)
    out.backward(g)
    for param in params:
        param.grad = None
    KERNEL.switchable_norm(x, None, None, *params, mask, chosen, None, None,
                           1e-5, False)[0].backward(g)
    for param, f, c in zip(params, free, choices):
        if c < 0:
            torch.testing.assert_close(param.grad, f.grad, rtol=1e-12,
                                       atol=1e-12)


# --------------------------------------------------------------------------
# fixed-source layers (frozen SSN) on the kernel


def _paths_agree(layer, x, grad_out):
    """Runs copies of ``layer`` on the kernel and on the composed path and
    checks that outputs, gradients and buffers agree; returns the kernel
    run."""
    kernel = _run(copy.deepcopy(layer), x, grad_out, kernel=True)
    composed = _run(copy.deepcopy(layer), x, grad_out, kernel=False)
    for a, b in zip([*kernel[:2], *kernel[2], *kernel[3]],
                    [*composed[:2], *composed[2], *composed[3]]):
        _close(a, b, 1e-10)
    return kernel


@needs_kernel
@pytest.mark.parametrize('mean_source', [0, 1, 2])
@pytest.mark.parametrize('var_source', [0, 1, 2])
@pytest.mark.parametrize('training', [True, False])
def test_fixed_source_norm_kernel_matches_composed(mean_source, var_source,
                                                   training):
    layer = FixedSourceNorm(5, mean_source, var_source).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        if layer.track_running_stats:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    layer.train(training)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 2 + 1
    grad_out = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    _paths_agree(layer, x, grad_out)


@needs_kernel
@pytest.mark.parametrize('source', [0, 1, 2])
def test_fixed_ssn_kernel_matches_composed(source):
    layer = SparseSwitchableNorm(6).double()
    layer.mean_choice.fill_(source)
    layer.var_choice.fill_(source)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    grad_out = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    kernel = _paths_agree(layer, x, grad_out)
    # the frozen lambdas are in the graph (DDP) with exactly zero gradient
    for grad in kernel[2][:2]:
        assert grad is not None and not grad.any()


# --------------------------------------------------------------------------
# what stays on Python, and the fallback without a kernel


class _CountingMix(SwitchableMix):
    calls = 0

    def batch_stats(self, mean_in, var_in):
        type(self).calls += 1
        return super().batch_stats(mean_in, var_in)


@needs_kernel
def test_other_mixes_run_their_own_methods():
    assert SwitchableMix in KERNEL_MIXES and _CountingMix not in KERNEL_MIXES
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    y, _, _ = moment_norm(x, None, None, 1e-5, _CountingMix(), weights,
                          weights, None, None)
    assert _CountingMix.calls == 1
    expected, _, _ = moment_norm(x, None, None, 1e-5, SwitchableMix(),
                                 weights, weights, None, None)
    torch.testing.assert_close(y, expected)


def test_composed_path_matches_reference_without_kernel(monkeypatch):
    monkeypatch.setattr(_kernel, 'ENABLED', False)
    assert _kernel.get() is None
    layer = _randomize(SwitchableNorm(5)).double()
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    grad_out = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    y, dx, grads, _ = _run(layer, x, grad_out, kernel=False)
    ref_y, ref_dx, ref_grads = _reference(layer, x, grad_out, True)
    _close(y, ref_y, 1e-10)
    _close(dx, ref_dx, 1e-10)
    for grad, ref in zip(grads, ref_grads):
        _close(grad, ref, 1e-10)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_kernel, '_state', {})
    monkeypatch.setattr(_kernel, 'ENABLED', True)
    monkeypatch.setenv('MMNORM_BUILD_DIR', str(tmp_path))
    monkeypatch.setattr(_kernel, '_compiler', lambda: None)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    # the library loads when a layer is built, never inside a forward
    with pytest.warns(RuntimeWarning, match='composed PyTorch path'):
        layer = SwitchableNorm(3)
    y = layer(x)
    y.sum().backward()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        layer(x)
    assert _kernel.get() is None
    assert not list(tmp_path.glob('*.so'))


@needs_kernel
def test_cached_library_is_reused(monkeypatch, capfd):
    # A second load in a fresh state finds the cached library and does not
    # compile (nothing is printed).
    monkeypatch.setattr(_kernel, '_state', {})
    monkeypatch.setattr(_kernel, '_build', None)  # calling it would fail
    assert _kernel.load(strict=True) is not None
    assert 'compiling' not in capfd.readouterr().err
