"""The SSN radius schedule hook inside a real mmengine Runner."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader

from mmnorm import SparseSwitchableNorm, SSNRadiusHook


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = SparseSwitchableNorm(4)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.norm(self.conv(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class RecordRadius(Hook):
    priority = 'LOW'  # after SSNRadiusHook (NORMAL)

    def __init__(self):
        self.seen = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen.append(float(runner.model.norm.radius))


def _runner(tmp_path, train_cfg, hook_cfg, recorder):
    data = [dict(inputs=torch.randn(3, 6, 6)) for _ in range(8)]
    return Runner(
        model=Toy(), work_dir=str(tmp_path),
        train_dataloader=DataLoader(data, batch_size=2),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[hook_cfg, recorder], default_scope=None,
        default_hooks=dict(checkpoint=None))


@pytest.mark.parametrize('train_cfg', [
    dict(by_epoch=False, max_iters=8),
    dict(by_epoch=True, max_epochs=2),  # 4 iterations per epoch
])
def test_linear_schedule_over_training(tmp_path, train_cfg):
    recorder = RecordRadius()
    _runner(tmp_path, train_cfg, dict(type='SSNRadiusHook'),
            recorder).train()
    assert recorder.seen == pytest.approx([i / 8 for i in range(8)])


def test_ramp_reaches_max_early(tmp_path):
    recorder = RecordRadius()
    _runner(tmp_path, dict(by_epoch=False, max_iters=8),
            dict(type='SSNRadiusHook', ramp=0.5), recorder).train()
    assert recorder.seen == pytest.approx([0, .25, .5, .75, 1, 1, 1, 1])


def test_bad_arguments():
    with pytest.raises(ValueError, match='SSNRadiusHook: ramp'):
        SSNRadiusHook(ramp=0)
