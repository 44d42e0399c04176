"""SN against the independent reference in float64, plus its contracts."""
import pytest
import torch
from reference import reference_sn
from torch import nn

from mmnorm import SwitchableNorm

SHAPES = {2: (6, 5), 3: (4, 5, 7), 4: (3, 5, 4, 6), 5: (2, 5, 3, 4, 2)}


def _layer(c, using_bn=True, **kwargs):
    layer = SwitchableNorm(c, using_bn=using_bn, **kwargs).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(3))
        layer.var_weight.copy_(torch.randn(3))
        layer.weight.copy_(torch.rand(c) + 0.5)
        layer.bias.copy_(torch.randn(c))
    return layer


def _reference_grads(layer, x, grad_out, **ref_kwargs):
    params = [p.detach().clone().requires_grad_()
              for p in (layer.mean_weight, layer.var_weight, layer.weight,
                        layer.bias)]
    xr = x.detach().clone().requires_grad_()
    y, bm, bv = reference_sn(xr, *params, eps=layer.eps, **ref_kwargs)
    y.backward(grad_out)
    return y.detach(), bm.detach(), bv.detach(), xr.grad, [p.grad
                                                            for p in params]


@pytest.mark.parametrize('rank', sorted(SHAPES))
@pytest.mark.parametrize('using_bn', [True, False])
def test_train_forward_backward_and_running_stats(rank, using_bn):
    shape = SHAPES[rank]
    layer = _layer(shape[1], using_bn=using_bn, momentum=0.3)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    grad_out = torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    y.backward(grad_out)
    ref_y, bm, bv, ref_gx, ref_gp = _reference_grads(
        layer, x, grad_out, using_bn=using_bn)
    torch.testing.assert_close(y, ref_y)
    torch.testing.assert_close(x.grad, ref_gx)
    for p, g in zip((layer.mean_weight, layer.var_weight, layer.weight,
                     layer.bias), ref_gp):
        torch.testing.assert_close(p.grad, g)
    if using_bn:
        torch.testing.assert_close(layer.running_mean, 0.3 * bm)
        torch.testing.assert_close(layer.running_var, 0.7 + 0.3 * bv)
        assert int(layer.num_batches_tracked) == 1
    else:
        assert layer.running_mean is None and layer.running_var is None
        # IN/LN only: eval equals train exactly.
        layer.eval()
        torch.testing.assert_close(layer(x), y)
    if rank == 2:  # no IN branch for (N, C) input
        mean_w, var_w = layer.mixing_weights(flat=True)
        assert mean_w[0] == 0 and var_w[0] == 0
    if not using_bn:
        assert layer.ratios()['mean']['bn'] == 0


@pytest.mark.parametrize('rank', sorted(SHAPES))
def test_eval_uses_running_bn_and_per_sample_in_ln(rank):
    shape = SHAPES[rank]
    c = shape[1]
    layer = _layer(c)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(c))
        layer.running_var.copy_(torch.rand(c) + 0.2)
    layer.eval()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(shape, dtype=torch.float64)
    layer(x).backward(grad_out)
    ref_y, _, _, ref_gx, ref_gp = _reference_grads(
        layer, x, grad_out, running_mean=layer.running_mean,
        running_var=layer.running_var)
    torch.testing.assert_close(layer(x), ref_y)
    torch.testing.assert_close(x.grad, ref_gx)
    torch.testing.assert_close(layer.mean_weight.grad, ref_gp[0])
    # Per-sample statistics: each sample's output is independent of the rest.
    if rank > 2:
        torch.testing.assert_close(layer(x[:1]), layer(x)[:1])


@pytest.mark.parametrize('rank', [2, 3, 4, 5])
@pytest.mark.parametrize('training', [True, False])
def test_gradcheck(rank, training):
    shape = tuple(max(2, s // 2) for s in SHAPES[rank])
    layer = _layer(shape[1])
    layer.train(training)
    if not training:
        with torch.no_grad():
            layer.running_var.uniform_(0.5, 1.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    inputs = (x, layer.mean_weight, layer.var_weight, layer.weight,
              layer.bias)

    def run(x, *unused):
        return layer(x)

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


def test_momentum_none_is_cumulative_average():
    layer = _layer(3, momentum=None)
    batches = [torch.randn(4, 3, 5, dtype=torch.float64) for _ in range(3)]
    stats = []
    for x in batches:
        layer(x)
        stats.append(reference_sn(x, layer.mean_weight, layer.var_weight,
                                  None, None)[1:])
    torch.testing.assert_close(layer.running_mean,
                               torch.stack([m for m, _ in stats]).mean(0))
    torch.testing.assert_close(layer.running_var,
                               torch.stack([v for _, v in stats]).mean(0))


def test_batch_average_mode_leaves_buffers_alone():
    layer = _layer(3, using_moving_average=False)
    layer(torch.randn(4, 3, 5, dtype=torch.float64))
    assert torch.equal(layer.running_mean, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(layer.running_var, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize('shape', [(4, 6, 1, 1), (1, 6, 5, 5), (1, 6),
                                   (1, 6, 1, 1), (1, 1, 1, 1), (3, 6, 1)])
def test_degenerate_inputs_give_no_nan(shape):
    layer = SwitchableNorm(shape[1])
    for training in (True, False):
        layer.train(training)
        for x in (torch.randn(shape), torch.full(shape, 3.0)):
            x = x.requires_grad_()
            y = layer(x)
            y.square().sum().backward()
            assert torch.isfinite(y).all(), (shape, training)
            assert torch.isfinite(x.grad).all()
            assert torch.isfinite(layer.mean_weight.grad).all()
            assert torch.isfinite(layer.running_var).all()


def test_constant_input_maps_to_bias():
    layer = SwitchableNorm(4)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(4.0))
    y = layer(torch.full((2, 4, 3, 3), 7.0))
    # x * scale + shift with scale = 1/sqrt(eps): float32 rounding of 7 * 316
    torch.testing.assert_close(y, torch.arange(4.0).view(1, 4, 1, 1)
                               .expand_as(y), atol=1e-3, rtol=0)


def test_one_by_one_map_matches_reference():
    layer = _layer(5)
    x = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    ref = reference_sn(x, layer.mean_weight, layer.var_weight, layer.weight,
                       layer.bias)[0]
    torch.testing.assert_close(layer(x), ref)


def test_autocast_keeps_statistics_in_float32():
    layer = SwitchableNorm(8)
    x = torch.randn(4, 8, 16, 16) * 50 + 200
    expected = layer(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    # bf16 input rounding only (~0.4% of 200 relative to std 50 ~ 2%);
    # statistics computed in bf16 would be far off.
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        layer(xb).float().square().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()


@pytest.mark.parametrize('kwargs,exc,words', [
    (dict(momentum=1.5), ValueError, 'momentum'),
    (dict(momentum=-0.1), ValueError, 'momentum'),
    (dict(eps=-1e-5), ValueError, 'eps'),
    (dict(eps=float('nan')), ValueError, 'eps'),
    (dict(using_bn='yes'), TypeError, 'using_bn'),
    (dict(num_groups=4), TypeError, 'num_groups'),
])
def test_bad_options_are_named(kwargs, exc, words):
    with pytest.raises(exc, match=f'SwitchableNorm.*{words}'):
        SwitchableNorm(8, **kwargs)
    with pytest.raises(exc, match='allowed|must be'):
        SwitchableNorm(8, **kwargs)


def test_bad_num_features():
    with pytest.raises(ValueError, match='SwitchableNorm: num_features'):
        SwitchableNorm(0)


@pytest.mark.parametrize('x,words', [
    (torch.randn(2, 8, 3, 3, 3, 3), 'rank 2-5'),
    (torch.randn(8), 'rank 2-5'),
    (torch.randn(2, 4, 3, 3), 'num_features=8'),
    (torch.randint(0, 3, (2, 8, 3, 3)), 'floating point'),
    (torch.randn(2, 8, 0, 3), 'without elements'),
])
def test_bad_input_is_named(x, words):
    with pytest.raises((ValueError, TypeError), match='SwitchableNorm.*'):
        SwitchableNorm(8)(x)
    with pytest.raises((ValueError, TypeError), match=words):
        SwitchableNorm(8)(x)


def test_state_dict_round_trip():
    layer = _layer(6)
    layer(torch.randn(4, 6, 3, 3, dtype=torch.float64))
    state = layer.state_dict()
    assert set(state) == {'weight', 'bias', 'running_mean', 'running_var',
                          'num_batches_tracked', 'mean_weight', 'var_weight'}
    assert state['mean_weight'].shape == (3,)
    clone = SwitchableNorm(6).double()
    clone.load_state_dict(state)
    clone.eval()
    layer.eval()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(clone(x), layer(x))


def test_bn_checkpoint_loads_with_only_mixing_weights_missing():
    bn_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    bn_model(torch.randn(4, 3, 8, 8))
    sn_model = nn.Sequential(nn.Conv2d(3, 8, 3), SwitchableNorm(8))
    result = sn_model.load_state_dict(bn_model.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ['1.mean_weight', '1.var_weight']
    assert not result.unexpected_keys
    torch.testing.assert_close(sn_model[1].running_var,
                               bn_model[1].running_var)


def test_registered_and_built_by_mmcv_from_every_scope():
    from mmcv.cnn import build_norm_layer
    from mmengine.registry import DefaultScope

    # mmaction2 1.2.0 cannot import its models without mmnorm's entry point
    import mmnorm.mmaction  # noqa: F401
    for scope in ('mmdet', 'mmseg', 'mmaction', None):
        ctx = (DefaultScope.overwrite_default_scope(scope) if scope
               else DefaultScope.overwrite_default_scope(None))
        with ctx:
            name, layer = build_norm_layer(dict(type='SN', momentum=0.003),
                                           16, postfix=1)
        assert isinstance(layer, SwitchableNorm)
        assert name == 'bn1' and layer.momentum == 0.003
    name, layer = build_norm_layer(dict(type='SN', requires_grad=False), 4)
    assert not any(p.requires_grad for p in layer.parameters())


def test_float32_statistics_exact_for_offset_input():
    """E[x^2] - E[x]^2 in float32 loses the variance at mean/std ~ 300;
    SN's two-pass moments must not."""
    layer = SwitchableNorm(4)
    x = torch.randn(3, 4, 32, 32, dtype=torch.float64) + 1000.0
    ref = reference_sn(x, layer.mean_weight.double(),
                       layer.var_weight.double(), None, None)[0]
    torch.testing.assert_close(layer(x.float()).double(), ref, atol=2e-3,
                               rtol=0)


def test_output_allows_inplace_activation():
    layer = SwitchableNorm(4)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = nn.ReLU(inplace=True)(layer(x))
    y.sum().backward()
    ref = x.detach().clone().requires_grad_()
    nn.functional.relu(SwitchableNorm(4)(ref)).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


@pytest.mark.parametrize('make_input', [
    lambda: torch.randn(3, 4, 5, 5),
    lambda: torch.randn(3, 4, 5, 5).to(memory_format=torch.channels_last),
    lambda: torch.randn(3, 4, 1, 5).expand(3, 4, 5, 5),
    lambda: torch.randn(3, 5, 5, 4).permute(0, 3, 1, 2),
])
def test_any_memory_layout_and_broadcast_gradients(make_input):
    """y.sum() hands backward an expanded gradient; inputs may be
    channels_last, permuted or expanded."""
    layer = SwitchableNorm(4).double()
    x = make_input().double().requires_grad_()
    layer(x).sum().backward()
    ref = x.detach().clone().contiguous().requires_grad_()
    SwitchableNorm(4).double()(ref).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, ref.grad)
    # and against the independent reference
    xr = x.detach().clone().contiguous().requires_grad_()
    reference_sn(xr, layer.mean_weight, layer.var_weight, layer.weight,
                 layer.bias)[0].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
