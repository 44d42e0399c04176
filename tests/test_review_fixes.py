"""Regressions found in review: each test reproduces a reported bug."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmnorm import SparseSwitchableNorm, SwitchableNorm
from mmnorm.deploy import collapse_fixed_norms
from mmnorm.layers.fixed import FixedSourceNorm


def test_eval_forward_then_training_forward_then_backward():
    layer = SwitchableNorm(3)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    layer.eval()
    y1 = layer(x)
    layer.train()
    y2 = layer(x)  # updates the running buffers in place
    (y1.sum() + y2.sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('training', [True, False])
def test_empty_batch_gives_empty_output_and_zero_gradients(training):
    layer = SwitchableNorm(3).train(training)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert layer.mean_weight.grad is not None
    assert torch.count_nonzero(layer.mean_weight.grad) == 0
    assert torch.equal(layer.running_mean, torch.zeros(3))


def test_zero_eps_is_refused():
    with pytest.raises(ValueError, match='SwitchableNorm: eps must be'):
        SwitchableNorm(3, eps=0.0)


def test_torch_sync_conversion_passes_the_process_group_to_sn():
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', rank=0, world_size=1,
                            init_method=f'tcp://127.0.0.1:{port}')
    try:
        group = dist.new_group([0])
        model = nn.Sequential(nn.BatchNorm2d(4), SwitchableNorm(4))
        out = nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
        assert out[0].process_group is group
        assert out[1].process_group is group
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
@pytest.mark.parametrize('choice', [(2, 2), (0, 2)])
def test_collapse_keeps_the_model_dtype(dtype, choice):
    layer = SparseSwitchableNorm(4)
    layer.mean_choice.fill_(choice[0])
    layer.var_choice.fill_(choice[1])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer).to(dtype).eval()
    collapse_fixed_norms(model)
    y = model(torch.randn(2, 3, 8, 8, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y.float()).all()


def test_fixed_source_norm_trains_in_bfloat16():
    layer = FixedSourceNorm(4, 2, 2).to(torch.bfloat16)
    layer(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16))
    assert layer.running_mean.dtype == torch.bfloat16


def test_fuse_conv_bn_imported_before_mmnorm_still_refuses():
    code = (
        'from mmcv.cnn import fuse_conv_bn\n'
        'import torch, mmnorm\n'
        'from torch import nn\n'
        'm = nn.Sequential(nn.Conv2d(3, 4, 3), mmnorm.SwitchableNorm(4))\n'
        'try:\n'
        '    fuse_conv_bn(m.eval())\n'
        'except ValueError as e:\n'
        '    print("refused:", e)\n'
        'print(type(m[1]).__name__)\n')
    out = subprocess.run([sys.executable, '-c', code], check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ)).stdout
    assert 'refused:' in out and 'SwitchableNorm' in out.splitlines()[-1]


def test_ssn_freezes_with_norm_eval_but_not_in_validation():
    layer = SparseSwitchableNorm(4)
    layer.set_radius(0.95)
    layer.eval()  # what norm_eval=True does during training
    with torch.no_grad():  # validation: never records
        layer(torch.randn(2, 4, 3, 3))
    assert not layer.mean_fixed
    layer(torch.randn(2, 4, 3, 3))  # a training step in eval mode
    assert layer.fixed
