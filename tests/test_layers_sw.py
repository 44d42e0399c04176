"""Switchable Whitening against an independent float64 reference, its
gradients, its edge cases and its errors; SyncSW over 2 gloo processes."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from dist_utils import init_group
from mmengine.registry import MODELS

import mmnorm  # noqa: F401  (registers SW / SyncSW)
from mmnorm.layers.sw import (
    SwitchableWhitening,
    SyncSwitchableWhitening,
    convert_sync_sw,
    revert_sync_sw,
)


# ---------------------------------------------------------------- reference
def reference_sw(x, layer, running=None):
    """SW written from the paper's definitions, in float64: BW statistics
    straight from x over (N, S), IW per sample, Newton's iteration as
    printed, sources in the order [BW, IW, BN, IN, LN]."""
    x = x.double()
    n, ch = x.shape[:2]
    c = layer.num_pergroup
    g = ch // c
    xg = x.reshape(n, g, c, -1)
    m = xg.shape[-1]
    mu_i = xg.mean(-1, keepdim=True)
    di = xg - mu_i
    cov_i = torch.einsum('ngcm,ngdm->ngcd', di, di) / m
    if running is None:
        xb = xg.permute(1, 2, 0, 3).reshape(g, c, n * m)
        mu_b = xb.mean(-1, keepdim=True)
        db = xb - mu_b
        cov_b = torch.einsum('gcm,gdm->gcd', db, db) / (n * m)
    else:
        mu_b, cov_b = (t.double() for t in running)
    flat = x.reshape(n, -1)
    mu_ln = flat.mean(1).view(n, 1, 1, 1)
    var_ln = flat.var(1, unbiased=True).view(n, 1, 1, 1)
    eye = torch.eye(c, dtype=torch.float64)
    means = {'bw': mu_b, 'iw': mu_i, 'bn': mu_b, 'in': mu_i,
             'ln': mu_ln.expand(n, g, c, 1)}
    covs = {'bw': cov_b, 'iw': cov_i,
            'bn': torch.diag_embed(torch.diagonal(cov_b, 0, -2, -1)),
            'in': torch.diag_embed(torch.diagonal(cov_i, 0, -2, -1)),
            'ln': var_ln * eye}
    mean_w = layer.mean_weight.detach().double().softmax(0)
    var_w = (mean_w if layer.var_weight is None
             else layer.var_weight.detach().double().softmax(0))
    mu = sum(w * means[s] for w, s in zip(mean_w, layer.sources))
    cov = sum(w * covs[s] for w, s in zip(var_w, layer.sources)) + \
        layer.eps * eye
    out = torch.empty_like(xg)
    for i in range(n):
        for j in range(g):
            sigma = cov[i, j]
            tr = torch.trace(sigma)
            p = eye.clone()
            for _ in range(layer.T):
                p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (
                    sigma / tr)
            out[i, j] = p / tr.sqrt() @ (xg[i, j] - mu[i, j])
    y = out.reshape(x.shape)
    if layer.affine:
        shape = (1, ch) + (1,) * (x.dim() - 2)
        y = y * layer.weight.detach().double().view(shape) + \
            layer.bias.detach().double().view(shape)
    return y, mu_b, cov_b


def _randomize(layer, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5
                    + (1.0 if p is layer.weight else 0.0))
    return layer


def _input(shape, seed=2, scale=2.0, shift=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale \
        + shift


# ------------------------------------------------------------- correctness
@pytest.mark.parametrize('sw_type', [2, 3, 5])
@pytest.mark.parametrize('tie_weight', [False, True])
def test_train_and_eval_match_reference(sw_type, tie_weight):
    layer = _randomize(SwitchableWhitening(
        8, num_pergroup=4, sw_type=sw_type, tie_weight=tie_weight,
        momentum=0.3)).double()
    x = _input((3, 8, 4, 5))
    y = layer(x)
    y_ref, mu_b, cov_b = reference_sw(x, layer)
    torch.testing.assert_close(y, y_ref)
    # running buffers: PyTorch-convention momentum from mean 0 / cov I
    torch.testing.assert_close(layer.running_mean, 0.3 * mu_b)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(layer.running_cov, 0.7 * eye + 0.3 * cov_b)
    layer.eval()
    x2 = _input((2, 8, 3, 3), seed=5)
    y_ref, _, _ = reference_sw(
        x2, layer, running=(layer.running_mean, layer.running_cov))
    torch.testing.assert_close(layer(x2), y_ref)


@pytest.mark.parametrize('shape', [(2, 8, 7), (2, 8, 2, 3, 3), (5, 8)])
def test_other_ranks_match_reference(shape):
    layer = _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=5)
                       ).double()
    x = _input(shape)
    torch.testing.assert_close(layer(x), reference_sw(x, layer)[0])


def test_flat_input_is_a_one_by_one_map():
    layer = _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=3))
    x = _input((4, 8)).float()
    torch.testing.assert_close(layer(x), layer(x[..., None, None])[..., 0, 0])


def test_cumulative_average_with_momentum_none():
    layer = SwitchableWhitening(4, num_pergroup=2, momentum=None).double()
    stats = []
    for seed in (1, 2, 3):
        x = _input((2, 4, 3, 3), seed=seed)
        layer(x)
        stats.append(reference_sw(x, layer)[1:])
    torch.testing.assert_close(layer.running_mean,
                               sum(s[0] for s in stats) / 3)
    torch.testing.assert_close(layer.running_cov,
                               sum(s[1] for s in stats) / 3)


@pytest.mark.parametrize('sw_type', [2, 3, 5])
def test_gradcheck_float64(sw_type):
    layer = _randomize(SwitchableWhitening(
        4, num_pergroup=2, sw_type=sw_type)).double()
    x = _input((3, 4, 2, 3)).requires_grad_()
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
    layer.eval()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


def test_gradcheck_tied_weights_without_affine():
    layer = _randomize(SwitchableWhitening(
        4, num_pergroup=4, sw_type=3, tie_weight=True, affine=False,
        T=3)).double()
    x = _input((2, 4, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x),
                                    (x, *layer.parameters()))


def test_batch_whitening_gives_identity_covariance():
    layer = SwitchableWhitening(8, num_pergroup=4, T=40, eps=1e-9).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([30.0, -30.0]))
        layer.var_weight.copy_(torch.tensor([30.0, -30.0]))
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    x = torch.einsum('dc,nchw->ndhw', mixing, _input((6, 8, 6, 6)))
    y = layer(x)
    yg = y.reshape(6, 2, 4, 36).permute(1, 2, 0, 3).reshape(2, 4, -1)
    yc = yg - yg.mean(-1, keepdim=True)
    cov = yc @ yc.transpose(1, 2) / yg.shape[-1]
    torch.testing.assert_close(cov, torch.eye(4).expand(2, 4, 4).double(),
                               atol=1e-4, rtol=0)
    # ...while the input groups were strongly correlated
    xg = x.reshape(6, 2, 4, 36).permute(1, 2, 0, 3).reshape(2, 4, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    assert (xc @ xc.transpose(1, 2) / xg.shape[-1] - torch.eye(4)
            ).abs().max() > 0.5


def test_float32_close_to_float64_with_large_mean():
    layer = _randomize(SwitchableWhitening(16, num_pergroup=8))
    x = _input((2, 16, 8, 8), scale=1.0, shift=300.0)
    y32 = layer(x.float())
    y64 = layer.double()(x)
    torch.testing.assert_close(y32.double(), y64, atol=2e-3, rtol=1e-3)


def test_autocast_computes_in_float32():
    layer = _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=5))
    x = _input((2, 8, 6, 6)).float()
    ref = layer(x.bfloat16().float())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)
    x16 = x.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        layer(x16).float().square().sum().backward()
    assert x16.grad.dtype == torch.bfloat16
    assert torch.isfinite(x16.grad.float()).all()


# -------------------------------------------------------------- edge cases
@pytest.mark.parametrize('sw_type', [2, 3, 5])
@pytest.mark.parametrize('shape, constant', [
    ((4, 8, 1, 1), False), ((1, 8, 5, 5), False), ((1, 8, 1, 1), False),
    ((3, 8, 4, 4), True), ((2, 8), False), ((1, 8), False)])
def test_degenerate_inputs_stay_finite(sw_type, shape, constant):
    layer = _randomize(SwitchableWhitening(8, num_pergroup=4,
                                           sw_type=sw_type))
    x = (torch.full(shape, 3.0) if constant
         else _input(shape).float()).requires_grad_()
    for mode in (True, False):
        layer.train(mode)
        y = layer(x)
        y.square().sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        if constant and mode:  # nothing to whiten: the output is the bias
            torch.testing.assert_close(
                y, layer.bias.detach().view(1, 8, 1, 1).expand(shape))
        x.grad = None
    assert torch.isfinite(layer.running_cov).all()


def test_untrained_layer_in_eval_mode_is_finite():
    layer = SwitchableWhitening(8, num_pergroup=4).eval()
    y = layer(_input((2, 8, 3, 3)).float())
    assert torch.isfinite(y).all() and y.abs().max() < 1e2


def test_empty_batch_gives_empty_output_with_parameters_in_graph():
    layer = SwitchableWhitening(8, num_pergroup=4)
    y = layer(torch.randn(0, 8, 3, 3))
    assert y.shape == (0, 8, 3, 3)
    y.sum().backward()
    assert layer.weight.grad is not None


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize('kwargs, match', [
    (dict(num_features=10, num_pergroup=4), 'num_features=10 is not '
     'divisible by num_pergroup=4'),
    (dict(num_features=8, num_pergroup=0), 'num_pergroup must be a positive'),
    (dict(num_features=0), 'num_features must be a positive'),
    (dict(num_features=8, num_pergroup=4, sw_type=4), 'sw_type must be one '
     'of 2'),
    (dict(num_features=8, num_pergroup=4, T=0), r'T \(Newton iterations\)'),
    (dict(num_features=8, num_pergroup=4, T=2.5), r'T \(Newton'),
    (dict(num_features=8, num_pergroup=4, eps=0.0), 'eps must be'),
    (dict(num_features=8, num_pergroup=4, momentum=1.5), 'momentum must be'),
    (dict(num_features=8, num_pergroup=4, tie_weight=1), 'tie_weight must'),
    (dict(num_features=8, num_pergroup=4, affine='yes'), 'affine must'),
    (dict(num_features=8, num_pergroup=4, groups=2), "unknown argument"),
])
def test_bad_options_name_the_layer_and_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError),
                       match=f'SwitchableWhitening: {match}'):
        SwitchableWhitening(**kwargs)


@pytest.mark.parametrize('shape, match', [
    ((2, 8, 1, 1, 1, 1), 'expected input of rank 2-5'),
    ((2, 6, 3, 3), 'input has 6 channels'),
    ((2, 8, 0, 3), 'got an input without elements')])
def test_bad_input_is_refused(shape, match):
    with pytest.raises(ValueError, match=f'SwitchableWhitening: {match}'):
        SwitchableWhitening(8, num_pergroup=4)(torch.randn(shape))
    with pytest.raises(TypeError, match='floating point'):
        SwitchableWhitening(8, num_pergroup=4)(
            torch.ones(2, 8, 3, 3, dtype=torch.long))


# ------------------------------------------------------------ integration
def test_registry_builds_both_types_with_options():
    sw = MODELS.build(dict(type='SW', num_features=32, num_pergroup=8,
                           sw_type=3, T=4))
    assert type(sw) is SwitchableWhitening and sw.num_groups == 4
    sync = MODELS.build(dict(type='SyncSW', num_features=16))
    assert type(sync) is SyncSwitchableWhitening


def test_build_norm_layer_from_mmcv():
    cnn = pytest.importorskip('mmcv.cnn')
    name, layer = cnn.build_norm_layer(
        dict(type='SW', num_pergroup=8, requires_grad=False), 32, postfix=2)
    assert name == 'bn2' and isinstance(layer, SwitchableWhitening)
    assert not any(p.requires_grad for p in layer.parameters())


def test_bn_checkpoint_loads_as_diagonal_covariance():
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
    layer = SwitchableWhitening(8, num_pergroup=4)
    result = layer.load_state_dict(bn.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ['mean_weight', 'var_weight']
    torch.testing.assert_close(layer.running_mean.flatten(), bn.running_mean)
    torch.testing.assert_close(
        layer.running_cov, torch.diag_embed(bn.running_var.view(2, 4)))
    torch.testing.assert_close(layer.weight, bn.weight)


def test_convert_and_revert_sync_keep_state():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), _randomize(
        SwitchableWhitening(8, num_pergroup=4, sw_type=5, T=3)))
    model(torch.randn(2, 3, 4, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_sw(model)
    assert type(model[1]) is SyncSwitchableWhitening
    assert model[1].sw_type == 5 and model[1].T == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    x = torch.randn(2, 3, 4, 4)
    y_sync = model.eval()(x)  # no process group: SyncSW is SW
    model = revert_sync_sw(model)
    assert type(model[1]) is SwitchableWhitening
    torch.testing.assert_close(model(x), y_sync)


def test_sync_without_process_group_equals_sw():
    x = _input((3, 8, 3, 3)).requires_grad_()
    ref = _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=5)
                     ).double()
    sync = _randomize(SyncSwitchableWhitening(8, num_pergroup=4,
                                              sw_type=5)).double()
    grad = _input((3, 8, 3, 3), seed=9)
    y = sync(x)
    y.backward(grad)
    gx = x.grad.clone()
    x.grad = None
    y_ref = ref(x)
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, x.grad)


# ------------------------------------------------------------ distributed
SPLITS = (2, 3)  # unequal per-rank batches


def _make(cls):
    return _randomize(cls(8, num_pergroup=4, sw_type=5, momentum=0.5)
                      ).double()


def _data(shape):
    # mean far from zero: raw sums of outer products would cancel
    return _input(shape, seed=3, shift=50.0), _input(shape, seed=4)


def _worker(rank, world, out_dir, shape):
    import torch.distributed as dist
    init_group(rank, world, out_dir)
    x_all, g_all = _data(shape)
    start = sum(SPLITS[:rank])
    part = slice(start, start + SPLITS[rank])
    x = x_all[part].clone().requires_grad_()
    layer = _make(SyncSwitchableWhitening)
    y = layer(x)
    y.backward(g_all[part])
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    torch.save(dict(y=y.detach(), x_grad=x.grad, grads=grads,
                    running_mean=layer.running_mean,
                    running_cov=layer.running_cov),
               os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.parametrize('shape', [
    (5, 8, 3, 3), pytest.param((5, 8), marks=pytest.mark.slow)])
def test_two_processes_equal_single_process_on_concatenated_batch(
        tmp_path, shape):
    mp.spawn(_worker, args=(2, str(tmp_path), shape), nprocs=2)
    x_all, g_all = _data(shape)
    x_all.requires_grad_()
    ref = _make(SwitchableWhitening)
    y_ref = ref(x_all)
    y_ref.backward(g_all)
    start = 0
    for rank, size in enumerate(SPLITS):
        out = torch.load(tmp_path / f'{rank}.pt', weights_only=True)
        part = slice(start, start + size)
        torch.testing.assert_close(out['y'], y_ref[part].detach())
        torch.testing.assert_close(out['x_grad'], x_all.grad[part])
        for name, p in ref.named_parameters():
            torch.testing.assert_close(out['grads'][name], p.grad)
        torch.testing.assert_close(out['running_mean'], ref.running_mean)
        torch.testing.assert_close(out['running_cov'], ref.running_cov)
        start += size


def test_sync_bn_conversion_turns_sw_into_sync_sw():
    from mmengine.model import convert_sync_batchnorm
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8),
        _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=3)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_batchnorm(model)
    assert type(model[1]) is torch.nn.SyncBatchNorm
    assert type(model[2]) is SyncSwitchableWhitening
    assert model[2].sw_type == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    model = mmnorm.revert_sync_sn(model)  # every registered pair
    assert type(model[2]) is SwitchableWhitening
    assert not hasattr(model[2], 'process_group')


def test_registered_as_a_norm_layer_that_is_not_bn_shaped():
    from mmnorm.compat import registry
    for cls in (SwitchableWhitening, SyncSwitchableWhitening):
        info = registry.lookup(cls)
        assert info is not None and info.bn_shaped is False
    assert registry.sync_version(SwitchableWhitening) is \
        SyncSwitchableWhitening
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
    layer = SwitchableWhitening(8, num_pergroup=2)
    used = registry.bn_loader(layer)(layer, bn.state_dict(), '')
    assert sorted(used) == ['bias', 'num_batches_tracked', 'running_mean',
                            'running_var', 'weight']
    torch.testing.assert_close(
        layer.running_cov, torch.diag_embed(bn.running_var.view(4, 2)))


# ------------------------------------------------------------------ ratios
def test_ratio_records_and_plots_cover_sw_sources(tmp_path):
    from mmnorm.analysis import (
        average_by_stage,
        collect_ratios,
        ratios_from_state_dict,
        summary_table,
    )
    model = torch.nn.Module()
    model.layer1 = torch.nn.Sequential(
        mmnorm.SwitchableNorm(8),
        _randomize(SwitchableWhitening(8, num_pergroup=4, sw_type=5)),
        _randomize(SwitchableWhitening(8, num_pergroup=4, tie_weight=True)))
    records = collect_ratios(model)
    assert list(records) == ['layer1.0', 'layer1.1', 'layer1.2']
    five = records['layer1.1']
    assert list(five['mean']) == ['bw', 'iw', 'bn', 'in', 'ln']
    expected = model.layer1[1].var_weight.detach().softmax(0)
    assert list(five['var'].values()) == pytest.approx(expected.tolist())
    assert records['layer1.2']['var'] == records['layer1.2']['mean']
    from_state = ratios_from_state_dict(model.state_dict())
    for name, record in records.items():
        for kind in ('mean', 'var'):
            assert from_state[name][kind] == pytest.approx(record[kind])
    table = summary_table(records)
    assert table.splitlines()[0] == ('| layer | mean | IN | LN | BN | BW | '
                                     'IW | var | IN | LN | BN | BW | IW |')
    stage = average_by_stage(records)['layer1']
    assert sum(stage['mean'].values()) == pytest.approx(1.0)
    pytest.importorskip('matplotlib')
    from mmnorm.analysis.plots import plot_depth, plot_stages
    for plot in (plot_depth, plot_stages):
        paths = plot(records, str(tmp_path / plot.__name__))
        assert all(os.path.getsize(p) > 0 for p in paths)


def test_parameter_gradients_without_input_gradient():
    layer = _randomize(SwitchableWhitening(8, num_pergroup=4)).double()
    x = _input((3, 8, 4, 4))
    layer(x).square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(x.clone().requires_grad_()).square().sum().backward()
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_output_takes_in_place_ops():
    layer = SwitchableWhitening(8, num_pergroup=4)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    y = torch.relu_(layer(x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
