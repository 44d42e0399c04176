"""mmnorm.convert_norms / revert_norms on a torchvision-style ResNet written
here (no torchvision, no toolkit)."""
import copy

import pytest
import torch
from torch import nn

import mmnorm
from mmnorm import (
    IBN,
    KalmanNorm,
    SparseSwitchableNorm,
    SwitchableNorm,
    SyncSwitchableNorm,
    convert_norms,
    convert_sync_sn,
    revert_norms,
)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock layout and names."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """torchvision naming (conv1, bn1, layerX.Y, fc) with a BatchNorm1d
    head, 8 and 16 channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 6)
        self.head_bn = nn.BatchNorm1d(6)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.head_bn(self.fc(x.mean((2, 3))))


def _bn_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture
def resnet():
    """A BN ResNet with non-trivial affine parameters and statistics."""
    model = TinyResNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 12, 12) * 2 + 0.3)
    return model


def _per_channel(layer, name):
    """A norm layer's per-channel entry, IBN's two parts put together."""
    if isinstance(layer, IBN):
        parts = [getattr(layer.BN, name)]
        if name in ('weight', 'bias'):
            parts.insert(0, getattr(layer.IN, name))
        elif layer.in_first:
            return getattr(layer.BN, name)
        if not layer.in_first:
            parts.reverse()
        return torch.cat(parts)
    return getattr(layer, name)


@pytest.mark.parametrize('cfg,cls', [
    (dict(type='SN'), SwitchableNorm),
    (dict(type='SSN'), SparseSwitchableNorm),
    (dict(type='KN'), KalmanNorm),
    (dict(type='IBN', ratio=0.5), IBN),
])
def test_every_bn_becomes_the_layer_with_its_parameters_and_statistics(
        resnet, cfg, cls):
    reference = copy.deepcopy(resnet)
    resnet.layer1[0].bn1.weight.requires_grad_(False)
    resnet.layer1[0].bn1.bias.requires_grad_(False)
    resnet.layer2.eval()
    if cls is IBN:  # IBN is a 2D layer: leave the BatchNorm1d head alone
        resnet.head_bn = nn.Identity()
    model = convert_norms(resnet, cfg)
    names = [n for n in _bn_names(reference) if n != 'head_bn'
             or cls is not IBN]
    for name in names:
        old, new = reference.get_submodule(name), model.get_submodule(name)
        assert type(new) is cls, name
        assert new.converted_from is type(old)
        for entry in ('weight', 'bias'):
            torch.testing.assert_close(_per_channel(new, entry),
                                       getattr(old, entry), rtol=0, atol=0)
        tracked = ['running_mean', 'running_var']
        if cls is IBN:  # only the BN part keeps statistics
            k = new.in_channels
            for entry in tracked:
                torch.testing.assert_close(new.BN.__getattr__(entry),
                                           getattr(old, entry)[k:])
        else:
            for entry in tracked:
                torch.testing.assert_close(getattr(new, entry),
                                           getattr(old, entry))
            assert int(new.num_batches_tracked) == 3
        assert (new.BN if cls is IBN else new).eps == old.eps
        assert new.training is not name.startswith('layer2')
    assert not any(p.requires_grad
                   for p in model.layer1[0].bn1.parameters())
    assert all(p.requires_grad for p in model.layer1[0].bn2.parameters())
    assert all(not m.training for m in model.layer2.modules())
    if cls in (SwitchableNorm, SparseSwitchableNorm):  # default mixing
        assert model.bn1.mean_weight.tolist() == [1.0, 1.0, 1.0]
    model.train()(torch.randn(2, 3, 12, 12))  # it runs


def test_bn_ratio_one_is_bn_exactly_and_reverts_exactly(resnet):
    """SN whose mixing weights are BN alone computes BN in inference; the
    reverse gives back BatchNorm2d/1d with identical outputs."""
    resnet.eval()
    x = torch.randn(3, 3, 12, 12)
    expected = resnet(x)
    sn = convert_norms(copy.deepcopy(resnet), dict(type='SN'), bn_ratio=1.0)
    assert all(type(sn.get_submodule(n)) is SwitchableNorm
               for n in _bn_names(resnet))
    torch.testing.assert_close(sn(x), expected, rtol=1e-5, atol=1e-5)
    back = revert_norms(sn)
    for name in _bn_names(resnet):
        old, new = resnet.get_submodule(name), back.get_submodule(name)
        assert type(new) is type(old)
        for key, value in old.state_dict().items():
            torch.testing.assert_close(new.state_dict()[key], value,
                                       rtol=0, atol=0)
    torch.testing.assert_close(back(x), expected, rtol=0, atol=0)


def test_reverting_mixed_layers_is_refused_unless_asked(resnet):
    sn = convert_norms(copy.deepcopy(resnet))
    with pytest.raises(ValueError, match="do not compute BatchNorm.*'bn1'"):
        revert_norms(sn)
    # SSN fixed to BN/BN is exact; the plain SN layers are kept
    ssn = SparseSwitchableNorm(8)
    ssn.load_state_dict(resnet.bn1.state_dict(), strict=False)
    with torch.no_grad():
        ssn.mean_choice.fill_(2)
        ssn.var_choice.fill_(2)
    assert ssn.fixed
    sn.bn1 = ssn
    kept = revert_norms(sn, strict=False)
    assert type(kept.bn1) is nn.BatchNorm2d
    assert type(kept.layer1[0].bn1) is SwitchableNorm
    torch.testing.assert_close(kept.bn1.running_var, resnet.bn1.running_var)


def test_group_norm_and_sync_bn_only_on_request():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8),
                          nn.SyncBatchNorm(8))
    with torch.no_grad():
        model[1].weight.uniform_()
    untouched = convert_norms(copy.deepcopy(model))
    assert type(untouched[1]) is nn.GroupNorm
    assert type(untouched[2]) is nn.SyncBatchNorm
    done = convert_norms(copy.deepcopy(model), dict(type='SyncSN'),
                         sync_bn=True, group_norm=True)
    assert type(done[1]) is SyncSwitchableNorm
    assert type(done[2]) is SyncSwitchableNorm
    torch.testing.assert_close(done[1].weight, model[1].weight)
    assert done[2].converted_from is nn.SyncBatchNorm
    done[2].mean_weight.data.copy_(torch.tensor([-1e4, -1e4, 0.0]))
    done[2].var_weight.data.copy_(torch.tensor([-1e4, -1e4, 0.0]))
    back = revert_norms(done, strict=False)
    assert type(back[2]) is nn.SyncBatchNorm
    assert type(back[1]) is SyncSwitchableNorm


def test_unknown_type_is_a_clear_error():
    with pytest.raises(ValueError, match="'NoSuchNorm' is not a registered"):
        convert_norms(nn.BatchNorm2d(4), dict(type='NoSuchNorm'))


def test_a_lone_bn_and_mmnorm_layers():
    new = convert_norms(nn.BatchNorm2d(4))
    assert type(new) is SwitchableNorm
    sn = SwitchableNorm(4)
    assert convert_norms(sn) is sn  # already an mmnorm layer


def test_convert_sync_sn_keeps_the_same_tensors():
    model = nn.Sequential(SwitchableNorm(4), SparseSwitchableNorm(4))
    model[0].weight.requires_grad_(False)
    weight = model[0].weight
    synced = convert_sync_sn(model)
    assert synced[0].weight is weight and not synced[0].weight.requires_grad
    assert synced[0].process_group is None
    reverted = mmnorm.revert_sync_sn(synced)
    assert type(reverted[0]) is SwitchableNorm
    assert 'process_group' not in reverted[0].__dict__
