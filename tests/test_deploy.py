"""Collapsing fixed SSN layers into minimal exact modules."""
import itertools

import pytest
import torch
from torch import nn

from mmnorm import SparseSwitchableNorm, SwitchableNorm
from mmnorm.deploy import collapse_fixed_norms, format_report
from mmnorm.layers.fixed import FixedSourceNorm


def _fixed_ssn(c, mean_choice, var_choice, rank=4):
    layer = SparseSwitchableNorm(c)
    shape = {2: (6, c), 3: (3, c, 7), 4: (3, c, 5, 5), 5: (2, c, 3, 4, 4)}
    for _ in range(3):  # non-trivial running statistics
        layer(torch.randn(shape[rank]) * 2 + 1)
    layer.mean_choice.fill_(mean_choice)
    layer.var_choice.fill_(var_choice)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer.eval()


@pytest.mark.parametrize('mean_choice,var_choice',
                         list(itertools.product(range(3), range(3))))
def test_all_nine_pairs_collapse_exactly(mean_choice, var_choice):
    model = nn.Sequential(nn.Conv2d(3, 6, 3),
                          _fixed_ssn(6, mean_choice, var_choice))
    x = torch.randn(2, 3, 9, 9)
    expected = model.eval()(x)
    report = collapse_fixed_norms(model)
    assert len(report) == 1
    new = model[1]
    if mean_choice == var_choice == 2:
        assert type(new) is nn.BatchNorm2d
    else:
        assert isinstance(new, FixedSourceNorm)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert report[0].max_abs_diff < 1e-4
    assert report[0].became in format_report(report)


@pytest.mark.parametrize('rank', [2, 3, 5])
def test_other_ranks(rank):
    layer = _fixed_ssn(4, 1, 2, rank=rank)
    model = nn.Sequential(layer)
    report = collapse_fixed_norms(model)
    assert report[0].became == 'FixedSourceNorm'
    bn_layer = nn.Sequential(_fixed_ssn(4, 2, 2, rank=rank))
    report = collapse_fixed_norms(bn_layer)
    assert report[0].became == {2: 'BatchNorm1d', 3: 'BatchNorm1d',
                                5: 'BatchNorm3d'}[rank]


def test_fixed_source_norm_trains_like_the_frozen_ssn():
    ssn = _fixed_ssn(5, 0, 2).train()
    fixed = FixedSourceNorm(5, 0, 2)
    fixed.load_state_dict({k: v for k, v in ssn.state_dict().items()
                           if k in fixed.state_dict()})
    x = torch.randn(4, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ssn.double()
    fixed.double()
    ssn(x).sum().backward()
    fixed(x2).sum().backward()
    torch.testing.assert_close(fixed(x2), ssn(x))
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(fixed.running_mean, ssn.running_mean)


def test_unfixed_layers_are_left_alone_unless_hardened():
    model = nn.Sequential(SwitchableNorm(4), SparseSwitchableNorm(4))
    model(torch.randn(2, 4, 3, 3))
    assert collapse_fixed_norms(model) == []
    report = collapse_fixed_norms(model, harden_sn=True)
    assert [r.name for r in report] == ['0']
    assert report[0].source == 'SN (hardened)'
