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
