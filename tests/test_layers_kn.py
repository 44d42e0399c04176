"""Kalman Normalization: the math of mmnorm.ops.kalman and the KN layer,
against independent float64 computations."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmnorm.layers.kn import (
    PRIOR_WEIGHT_LARGE_BATCH,
    PRIOR_WEIGHT_MICRO_BATCH,
    KalmanNorm,
)
from mmnorm.ops.kalman import (
    kalman_combine,
    linear_moments,
    rectified_moments,
    sampled_moments,
)


class _Link:
    """A predecessor with fixed statistics (what the wiring provides)."""

    def __init__(self, operator, mean, var, rectify=True):
        self.operator, self.rectify = operator, rectify
        self.state = (mean, var)

    def source_state(self):
        return self.state


def _kn(channels, **kwargs):
    layer = KalmanNorm(channels, **kwargs)
    layer.kn_wired = True
    return layer


def _with_prior(layer, in_channels=3, groups=1, dtype=torch.float32,
                rectify=True, scale=1.0):
    conv = nn.Conv2d(in_channels, layer.num_features, 3, padding=1,
                     bias=False).to(dtype)
    mean = torch.randn(groups, in_channels, dtype=dtype)
    var = torch.rand(groups, in_channels, dtype=dtype) * scale + 0.5
    layer.kn_link = _Link(conv, mean, var, rectify)
    return conv, mean, var


# ------------------------------------------------------------------ ops


def test_rectified_moments_match_numerical_integration():
    mean = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64)
    var = torch.tensor([0.5, 1.0, 2.0, 0.1, 4.0], dtype=torch.float64)
    z = torch.linspace(-40, 40, 400001, dtype=torch.float64)
    got_mean, got_var = rectified_moments(mean, var)
    for i in range(len(mean)):
        density = torch.exp(-(z - mean[i]) ** 2 / (2 * var[i])) / \
            torch.sqrt(2 * math.pi * var[i])
        relu = z.clamp_min(0)
        first = torch.trapezoid(relu * density, z)
        second = torch.trapezoid(relu ** 2 * density, z)
        assert got_mean[i].item() == pytest.approx(first.item(), abs=1e-7)
        assert got_var[i].item() == pytest.approx(
            (second - first ** 2).item(), abs=1e-7)


def test_rectified_moments_of_zero_variance_are_relu_of_the_mean():
    mean, var = rectified_moments(torch.tensor([-1.0, 2.0]), torch.zeros(2))
    assert torch.allclose(mean, torch.tensor([0.0, 2.0]))
    assert torch.allclose(var, torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize('groups', [1, 2])
def test_linear_moments_equal_the_sum_over_the_kernel(groups):
    conv = nn.Conv2d(4, 6, 3, groups=groups, bias=True).double()
    mean = torch.randn(2, 4, dtype=torch.float64)
    var = torch.rand(2, 4, dtype=torch.float64)
    got_mean, got_var = linear_moments(conv, mean, var)
    w = conv.weight
    for g in range(2):
        for o in range(6):
            block = o // (6 // groups)
            ins = range(block * (4 // groups), (block + 1) * (4 // groups))
            m = conv.bias[o] + sum(w[o, i - ins[0]].sum() * mean[g, i]
                                   for i in ins)
            v = sum((w[o, i - ins[0]] ** 2).sum() * var[g, i] for i in ins)
            assert got_mean[g, o].item() == pytest.approx(m.item())
            assert got_var[g, o].item() == pytest.approx(v.item())


def test_linear_moments_of_a_linear_layer():
    fc = nn.Linear(5, 3).double()
    mean = torch.randn(1, 5, dtype=torch.float64)
    var = torch.rand(1, 5, dtype=torch.float64)
    got_mean, got_var = linear_moments(fc, mean, var)
    assert torch.allclose(got_mean, mean @ fc.weight.T + fc.bias)
    assert torch.allclose(got_var, var @ (fc.weight ** 2).T)


def test_analytic_prediction_is_the_expectation_of_the_sampled_one():
    """Without zero padding the authors' sampled predictor converges to the
    analytic moments (ReLU of independent Gaussian inputs, then conv)."""
    conv = nn.Conv2d(8, 5, 3, bias=False).double()
    mean = torch.randn(1, 8, dtype=torch.float64)
    var = torch.rand(1, 8, dtype=torch.float64) + 0.2
    gen = torch.Generator().manual_seed(0)
    sampled = sampled_moments(conv, mean, var, True, samples=64, size=66,
                              generator=gen)
    analytic = linear_moments(conv, *rectified_moments(mean, var))
    assert torch.allclose(sampled[0], analytic[0], rtol=0.02, atol=0.02)
    assert torch.allclose(sampled[1], analytic[1], rtol=0.05)


def test_combination_is_the_variance_of_the_two_component_mixture():
    obs_mean, obs_var = torch.randn(2, 7).double(), torch.rand(2, 7).double()
    pred_mean, pred_var = torch.randn(2, 7).double(), torch.rand(2, 7).double()
    p = 0.3
    mean, var = kalman_combine(obs_mean, obs_var, pred_mean, pred_var, p)
    # mixture with weights (1 - p, p): E[x] and E[x^2] - E[x]^2
    ex = (1 - p) * obs_mean + p * pred_mean
    ex2 = (1 - p) * (obs_var + obs_mean ** 2) + p * (pred_var + pred_mean ** 2)
    assert torch.allclose(mean, ex)
    assert torch.allclose(var, ex2 - ex ** 2)


# ---------------------------------------------------------------- layer


@pytest.mark.parametrize('shape', [(4, 6), (4, 6, 5), (4, 6, 5, 3),
                                   (4, 6, 2, 3, 3)])
def test_first_layer_of_a_chain_is_batch_norm(shape):
    x = torch.randn(*shape) * 3 + 1
    kn, bn = _kn(6, momentum=0.2), nn.BatchNorm1d(6, momentum=0.2)
    bn.weight.data.uniform_(0.5, 2)
    kn.load_state_dict(bn.state_dict())
    flat = x.reshape(shape[0], 6, -1)
    assert torch.allclose(kn(x).reshape(flat.shape), bn(flat), atol=1e-5)
    assert torch.allclose(kn.running_mean, bn.running_mean)
    assert torch.allclose(kn.running_var, bn.running_var)
    kn.eval(), bn.eval()
    assert torch.allclose(kn(x).reshape(flat.shape), bn(flat), atol=1e-5)


def test_gain_one_equals_batch_norm_even_with_a_prediction():
    x = torch.randn(4, 6, 5, 5) * 2 - 1
    kn, bn = _kn(6, prior_weight=0.0), nn.BatchNorm2d(6)
    _with_prior(kn)
    out = kn(x)
    assert kn.kn_last_prior == 'combined'
    assert torch.allclose(out, bn(x), atol=1e-5)
    assert torch.allclose(kn.running_var, bn.running_var, atol=1e-6)
    assert torch.allclose(kn.running_mean, bn.running_mean, atol=1e-6)


def test_layer_normalizes_with_the_combined_statistics():
    x = (torch.randn(4, 6, 5, 5) * 2 - 1).double()
    p, momentum = 0.4, 0.3
    kn = _kn(6, prior_weight=p, momentum=momentum).double()
    conv, prev_mean, prev_var = _with_prior(kn, dtype=torch.float64)
    with torch.no_grad():
        kn.weight.uniform_(0.5, 2.0)
        kn.bias.uniform_(-1, 1)
    out = kn(x)
    # independent: prediction by definition, observation by torch.var
    r_mean, r_var = rectified_moments(prev_mean, prev_var)
    w = conv.weight.detach()
    pred_mean = (w.sum((2, 3)) @ r_mean[0])
    pred_var = ((w ** 2).sum((2, 3)) @ r_var[0])
    obs_mean = x.mean((0, 2, 3))
    obs_var = x.var((0, 2, 3), unbiased=False)
    q = 1 - p
    mean = q * obs_mean + p * pred_mean
    var = q * obs_var + p * pred_var + q * p * (obs_mean - pred_mean) ** 2
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None]
                                                      + kn.eps)
    expected = expected * kn.weight[:, None, None] + kn.bias[:, None, None]
    assert torch.allclose(out, expected)
    # inference uses moving averages of the combined statistics
    n = x.numel() / 6
    unbiased = obs_var * n / (n - 1)
    run_var = q * unbiased + p * pred_var + q * p * (obs_mean - pred_mean) ** 2
    assert torch.allclose(kn.running_mean, momentum * mean)
    assert torch.allclose(kn.running_var, (1 - momentum) + momentum * run_var)
    kn.eval()
    eval_expected = F.batch_norm(x, kn.running_mean, kn.running_var,
                                 kn.weight, kn.bias, False, 0.0, kn.eps)
    assert torch.allclose(kn(x), eval_expected)


def test_divergence_guard_is_one_decision_per_layer():
    x = torch.randn(8, 4, 6, 6)  # observed variance ~1
    kn = _kn(4, prior_weight=0.5, divergence_ratio=100.0)
    conv = nn.Conv2d(1, 4, 1, bias=False)
    kn.kn_link = _Link(conv, torch.zeros(1, 1), torch.ones(1, 1),
                       rectify=False)
    obs_var = x.var((0, 2, 3), unbiased=False)
    # predicted variances w^2: channel 0 huge, the mean ratio just below 100
    with torch.no_grad():
        ratios = torch.tensor([390.0, 1.0, 1.0, 1.0])
        conv.weight.copy_(torch.sqrt(ratios * (obs_var + kn.eps) * 0.99)
                          .view(4, 1, 1, 1))
    out = kn(x)
    assert kn.kn_last_prior == 'combined'  # mean ratio 98.3 < 100
    assert not torch.allclose(out, F.batch_norm(x, None, None, training=True))
    with torch.no_grad():
        conv.weight.mul_(math.sqrt(1.03))  # mean ratio 101.3
    out = kn(x)
    assert kn.kn_last_prior == 'diverged'
    assert torch.allclose(out, F.batch_norm(x, None, None, training=True),
                          atol=1e-5)


def test_non_finite_prediction_falls_back_to_the_observation():
    x = torch.randn(4, 3, 5, 5)
    kn = _kn(3)
    conv, _, _ = _with_prior(kn)
    kn.kn_link.state = (torch.full((1, 3), float('inf')), torch.ones(1, 3))
    out = kn(x)
    assert kn.kn_last_prior == 'diverged' and torch.isfinite(out).all()


def test_micro_batch_groups_equal_batch_norm_per_group():
    x = torch.randn(6, 5, 4, 4) * 2 + 1
    kn = _kn(5, group_size=2, momentum=0.1)
    assert kn.prior_weight == PRIOR_WEIGHT_MICRO_BATCH
    assert _kn(5).prior_weight == PRIOR_WEIGHT_LARGE_BATCH
    out = kn(x)
    bns = [nn.BatchNorm2d(5, momentum=0.1) for _ in range(3)]
    expected = torch.cat([bn(x[2 * i:2 * i + 2]) for i, bn in enumerate(bns)])
    assert torch.allclose(out, expected, atol=1e-5)
    # running averages: the mean over groups of what BN would track
    assert torch.allclose(kn.running_mean,
                          torch.stack([b.running_mean for b in bns]).mean(0))
    assert torch.allclose(kn.running_var,
                          torch.stack([b.running_var for b in bns]).mean(0))


def test_micro_batch_prediction_is_per_group():
    x = torch.randn(4, 5, 4, 4)
    kn = _kn(5, group_size=2)
    _with_prior(kn, groups=2)
    kn(x)
    assert kn.kn_last_prior == 'combined'
    _with_prior(kn, groups=1)  # the predecessor's groups do not fit
    kn(x)
    assert kn.kn_last_prior == 'none'


def _gradcheck_layer(predictor):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    kn = _kn(3, prior_weight=0.5, predictor=predictor, sample_count=2,
             sample_size=4).double()
    with torch.no_grad():
        kn.weight.uniform_(0.5, 1.5)
        kn.bias.uniform_(-1, 1)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    mean = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(1, 2, dtype=torch.float64) + 0.5).requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()

    def run(x, mean, var, weight):
        kn.kn_link = _Link(_Operator(conv, weight), mean, var)
        # the same synthetic noise in every evaluation
        kn.noise_generator = torch.Generator().manual_seed(3)
        out = kn(x)
        assert kn.kn_last_prior == 'combined'
        return out

    assert torch.autograd.gradcheck(run, (x, mean, var, weight))


class _Operator(nn.Module):
    """``conv`` with a weight tensor given from outside (for gradcheck)."""

    def __init__(self, conv, weight):
        super().__init__()
        self.conv, self.weight, self.groups = conv, weight, conv.groups
        self.bias = conv.bias

    def forward(self, x):
        return self.conv._conv_forward(x, self.weight, self.bias)


@pytest.mark.parametrize('predictor', ['analytic', 'sampled'])
def test_gradients_through_input_prediction_and_weights(predictor):
    _gradcheck_layer(predictor)


def test_bad_arguments_name_the_layer_and_the_argument():
    with pytest.raises(ValueError, match='KalmanNorm: prior_weight'):
        KalmanNorm(4, prior_weight=1.0)
    with pytest.raises(ValueError, match='KalmanNorm: group_size'):
        KalmanNorm(4, group_size=0)
    with pytest.raises(ValueError, match='KalmanNorm: predictor'):
        KalmanNorm(4, predictor='kalman')
    with pytest.raises(ValueError, match='KalmanNorm: eps'):
        KalmanNorm(4, eps=0)
    with pytest.raises(ValueError, match='not a multiple of group_size=4'):
        _kn(4, group_size=4)(torch.randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match='more than one value'):
        _kn(4)(torch.randn(1, 4))
    with pytest.raises(ValueError, match='num_features=4'):
        _kn(4)(torch.randn(2, 3, 2))


def test_empty_batch_gives_empty_output_and_zero_gradients():
    kn = _kn(3)
    out = kn(torch.randn(0, 3, 4, 4))
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert torch.equal(kn.weight.grad, torch.zeros(3))


def test_unwired_layer_warns_once_that_it_is_batch_norm(recwarn):
    import mmnorm.layers.kn as kn_module
    kn_module._warned_unwired = False
    layer = KalmanNorm(3)
    layer(torch.randn(2, 3, 4, 4))
    layer(torch.randn(2, 3, 4, 4))
    messages = [str(w.message) for w in recwarn.list
                if 'KalmanChainHook' in str(w.message)]
    assert len(messages) == 1


def test_registered_and_built_by_name():
    from mmcv.cnn import build_norm_layer

    import mmnorm  # noqa: F401
    name, layer = build_norm_layer(dict(type='KN', group_size=2), 8, 1)
    assert name == 'bn1' and isinstance(layer, KalmanNorm)
    assert layer.group_size == 2


@pytest.mark.parametrize('with_prior', [False, True])
def test_cumulative_average_equals_batch_norm(with_prior):
    """momentum=None: the weight 1 / num_batches_tracked stays on the
    device; the running averages equal BN's (prior weight 0: the combined
    statistics are the observed ones)."""
    kn = _kn(4, momentum=None, prior_weight=0.0 if with_prior else None)
    if with_prior:
        _with_prior(kn, in_channels=3)
    bn = nn.BatchNorm2d(4, momentum=None)
    for step in range(3):
        x = torch.randn(5, 4, 3, 3) * (step + 1) + step
        out = kn(x)
        torch.testing.assert_close(out, bn(x), atol=1e-5, rtol=1e-5)
    assert kn.kn_last_prior == ('combined' if with_prior else 'none')
    assert int(kn.num_batches_tracked) == 3
    torch.testing.assert_close(kn.running_mean, bn.running_mean)
    torch.testing.assert_close(kn.running_var, bn.running_var)


def test_diverged_prediction_leaves_gradients_equal_to_batch_norm():
    """The combination that is not taken must not leak inf/NaN into the
    gradients (torch.where selects; it does not multiply by 0)."""
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    kn = _kn(3)
    _with_prior(kn)
    kn.kn_link.state = (torch.full((1, 3), float('inf')), torch.ones(1, 3))
    g = torch.randn_like(x)
    kn(x).backward(g)
    assert kn.kn_last_prior == 'diverged'
    x2 = x.detach().clone().requires_grad_()
    F.batch_norm(x2, None, None, kn.weight, kn.bias, True).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    assert torch.isfinite(kn.running_var).all()
