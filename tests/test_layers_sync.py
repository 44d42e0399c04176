"""SyncSN across 2 gloo processes equals SN on the concatenated batch."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from dist_utils import init_group

from mmnorm import (
    SwitchableNorm,
    SyncSparseSwitchableNorm,
    SyncSwitchableNorm,
    convert_sync_sn,
    revert_sync_sn,
)

SPLITS = (2, 3)  # ranks hold different batch sizes



def _params(layer):
    torch.manual_seed(7)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(3))
        layer.var_weight.copy_(torch.randn(3))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer


def _data(shape):
    torch.manual_seed(3)
    return (torch.randn(shape, dtype=torch.float64) * 2 + 1,
            torch.randn(shape, dtype=torch.float64))


def _worker(rank, world, out_dir, shape):
    import torch.distributed as dist
    init_group(rank, world, out_dir)
    x_all, g_all = _data(shape)
    start = sum(SPLITS[:rank])
    x = x_all[start:start + SPLITS[rank]].clone().requires_grad_()
    layer = _params(SyncSwitchableNorm(shape[1], momentum=0.5).double())
    y = layer(x)
    y.backward(g_all[start:start + SPLITS[rank]])
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    torch.save(dict(y=y.detach(), x_grad=x.grad, grads=grads,
                    running_mean=layer.running_mean,
                    running_var=layer.running_var),
               os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.parametrize('shape', [(5, 4, 3, 3), (5, 4)])
def test_two_processes_equal_single_process_on_concatenated_batch(
        tmp_path, shape):
    mp.spawn(_worker, args=(2, str(tmp_path), shape), nprocs=2)

    x_all, g_all = _data(shape)
    x_all.requires_grad_()
    ref = _params(SwitchableNorm(shape[1], momentum=0.5).double())
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
        torch.testing.assert_close(out['running_var'], ref.running_var)
        start += size


def test_single_process_sync_sn_is_sn():
    x, g = _data((4, 4, 3, 3))
    sync = _params(SyncSwitchableNorm(4).double())
    plain = _params(SwitchableNorm(4).double())
    torch.testing.assert_close(sync(x), plain(x))


def test_convert_and_revert_keep_state():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                _params(SwitchableNorm(4)))
    model[1].weight.requires_grad_(False)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = convert_sync_sn(model)
    assert type(converted[1]) is SyncSwitchableNorm
    assert not converted[1].training
    assert not converted[1].weight.requires_grad
    torch.testing.assert_close(converted(x), expected)
    reverted = revert_sync_sn(converted)
    assert type(reverted[1]) is SwitchableNorm
    torch.testing.assert_close(reverted(x), expected)


def test_registered_names():
    from mmcv.cnn import build_norm_layer
    assert isinstance(build_norm_layer(dict(type='SyncSN'), 4)[1],
                      SyncSwitchableNorm)
    assert isinstance(build_norm_layer(dict(type='SyncSSN'), 4)[1],
                      SyncSparseSwitchableNorm)


def _empty_rank_worker(rank, world, out_dir):
    import torch.distributed as dist
    init_group(rank, world, out_dir)
    layer = _params(SyncSwitchableNorm(4, momentum=0.5).double())
    x_all, g_all = _data((3, 4, 3, 3))
    # rank 1 holds no sample (e.g. no positive RoI for a mask head)
    x = (x_all if rank == 0 else x_all[:0]).clone().requires_grad_()
    g = g_all if rank == 0 else g_all[:0]
    y = layer(x)
    y.backward(g)
    torch.save(dict(y=y.detach(), running_mean=layer.running_mean,
                    grad=layer.mean_weight.grad.clone()),
               os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def test_a_rank_with_an_empty_batch_does_not_hang_and_agrees(tmp_path):
    mp.spawn(_empty_rank_worker, args=(2, str(tmp_path)), nprocs=2,
             join=True)
    x_all, g_all = _data((3, 4, 3, 3))
    ref = _params(SwitchableNorm(4, momentum=0.5).double())
    y_ref = ref(x_all)
    y_ref.backward(g_all)
    full = torch.load(tmp_path / '0.pt', weights_only=True)
    empty = torch.load(tmp_path / '1.pt', weights_only=True)
    torch.testing.assert_close(full['y'], y_ref.detach())
    torch.testing.assert_close(full['grad'], ref.mean_weight.grad)
    torch.testing.assert_close(full['running_mean'], ref.running_mean)
    torch.testing.assert_close(empty['running_mean'], ref.running_mean)
    assert empty['y'].shape[0] == 0
    assert torch.count_nonzero(empty['grad']) == 0


def _counting_all_reduce(counter):
    import torch.distributed as dist
    original = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        counter.append(tensor.dtype)
        return original(tensor, *args, **kwargs)
    return all_reduce


PRECISION_SHAPE = (5, 4, 6, 6)
PRECISION_MEAN = 1e4  # mean / std of the input


def _precision_data():
    torch.manual_seed(11)
    x = torch.randn(PRECISION_SHAPE, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2, 4).view(1, 4, 1, 1) + PRECISION_MEAN
    return x.float(), torch.randn(PRECISION_SHAPE)


def _checks_worker(rank, world, out_dir):
    """Collectives, host reads, precision and the all-empty case."""
    import torch.distributed as dist
    from test_host_syncs import HostReads
    init_group(rank, world, out_dir)
    calls = []
    dist.all_reduce = _counting_all_reduce(calls)
    result = {}
    # one all-reduce per direction, no host read, SyncSN and SyncSSN
    for cls in (SyncSwitchableNorm, SyncSparseSwitchableNorm):
        for shape in ((2 + rank, 4, 5, 5), (3 + rank, 4)):
            layer = _params(cls(4, momentum=None))
            if cls is SyncSparseSwitchableNorm:
                layer.set_radius(0.3)
            x = torch.randn(shape, requires_grad=True)
            with HostReads() as mode:
                y = layer(x)
                forward_calls = len(calls)
                y.backward(torch.randn_like(y))
            result[f'{cls.__name__}{len(shape)}'] = (
                forward_calls, len(calls) - forward_calls, mode.calls)
            calls.clear()
    # precision: float32 input 1e4 standard deviations from zero
    x_all, g_all = _precision_data()
    start = sum(SPLITS[:rank])
    part = slice(start, start + SPLITS[rank])
    x = x_all[part].clone().requires_grad_()
    layer = _params(SyncSwitchableNorm(4, momentum=1.0))
    y = layer(x)
    y.backward(g_all[part])
    result['precision'] = dict(
        y=y.detach(), x_grad=x.grad, running_var=layer.running_var.clone(),
        running_mean=layer.running_mean.clone(),
        lambda_grad=layer.var_weight.grad.clone())
    dist.all_reduce(result['precision']['lambda_grad'])
    # no rank has a sample: buffers unchanged, everything finite
    layer = _params(SyncSwitchableNorm(4, momentum=None))
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    calls.clear()
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    result['empty'] = dict(
        before=before, after=layer.state_dict(), calls=len(calls),
        grads=[p.grad.clone() for p in layer.parameters()])
    torch.save(result, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def test_one_collective_each_way_precision_and_all_empty_ranks(tmp_path):
    mp.spawn(_checks_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f'{r}.pt', weights_only=True)
               for r in range(2)]
    for result in results:
        for name in ('SyncSwitchableNorm4', 'SyncSwitchableNorm2',
                     'SyncSparseSwitchableNorm4',
                     'SyncSparseSwitchableNorm2'):
            forward, backward, host_reads = result[name]
            assert (forward, backward, host_reads) == (1, 1, []), name

    # precision against float64 SN on the concatenated batch (the exact
    # answer), no worse than float32 SN in one process
    x_all, g_all = _precision_data()
    exact = _params(SwitchableNorm(4, momentum=1.0)).double()
    x64 = x_all.double().requires_grad_()
    y64 = exact(x64)
    y64.backward(g_all.double())
    single = _params(SwitchableNorm(4, momentum=1.0))
    x32 = x_all.clone().requires_grad_()
    y32 = single(x32)
    y32.backward(g_all)

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    sync = {key: torch.cat([r['precision'][key] for r in results])
            for key in ('y', 'x_grad')}
    prec = results[0]['precision']
    errors = dict(
        y=(rel(sync['y'], y64.detach()), rel(y32.detach(), y64.detach())),
        x_grad=(rel(sync['x_grad'], x64.grad), rel(x32.grad, x64.grad)),
        running_var=(rel(prec['running_var'], exact.running_var),
                     rel(single.running_var, exact.running_var)),
        running_mean=(rel(prec['running_mean'], exact.running_mean),
                      rel(single.running_mean, exact.running_mean)),
        lambda_grad=(rel(prec['lambda_grad'], exact.var_weight.grad),
                     rel(single.var_weight.grad, exact.var_weight.grad)))
    # the synchronized statistics are as precise as one process's (their
    # error comes from the float32 IN moments; uncentred float32 sums would
    # lose the variance entirely at this mean / std)
    for key in ('running_mean', 'running_var'):
        sync_error, single_error = errors[key]
        assert sync_error <= max(2 * single_error, 1e-7), (key, errors)
    assert errors['running_var'][0] < 1e-4, errors
    # outputs and gradients: the precision of the per-row passes
    for key in ('y', 'x_grad', 'lambda_grad'):
        assert errors[key][0] < 1e-3, (key, errors)
    for r in results:
        torch.testing.assert_close(r['precision']['running_var'],
                                   prec['running_var'], rtol=0, atol=0)

    for result in results:
        empty = result['empty']
        assert empty['calls'] == 2  # forward and backward
        for key, value in empty['before'].items():
            assert torch.equal(empty['after'][key], value), key
        for grad in empty['grads']:
            assert torch.isfinite(grad).all() and not grad.any()
