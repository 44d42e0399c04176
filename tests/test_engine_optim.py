"""The recommended optimizer settings keep weight decay off the lambdas."""
import pytest
from torch import nn

from mmnorm import SwitchableNorm, sn_paramwise_cfg


@pytest.mark.parametrize('lr_mult', [1.0, 0.1])
def test_sn_paramwise_cfg_removes_decay_from_mixing_weights(lr_mult):
    from mmengine.optim import build_optim_wrapper
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=sn_paramwise_cfg(lambda_lr_mult=lr_mult)))
    by_param = {id(p): g for g in wrapper.optimizer.param_groups
                for p in g['params']}
    sn = model[1]
    for p in (sn.mean_weight, sn.var_weight):
        assert by_param[id(p)]['weight_decay'] == 0
        assert by_param[id(p)]['lr'] == pytest.approx(0.1 * lr_mult)
    assert by_param[id(model[0].weight)]['weight_decay'] == 1e-4
    assert by_param[id(sn.weight)]['weight_decay'] == 1e-4


def test_norm_decay_mult_reaches_sn_gamma_beta():
    from mmengine.optim import build_optim_wrapper
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        paramwise_cfg=sn_paramwise_cfg(norm_decay_mult=0.0)))
    by_param = {id(p): g for g in wrapper.optimizer.param_groups
                for p in g['params']}
    assert by_param[id(model[1].weight)]['weight_decay'] == 0
    assert by_param[id(model[1].bias)]['weight_decay'] == 0
    assert by_param[id(model[0].weight)]['weight_decay'] == 1e-4


def test_config_fragment_matches_python_helper():
    import os

    from mmengine.config import Config
    path = os.path.join(os.path.dirname(__file__), '..', 'configs', '_base_',
                        'sn_paramwise.py')
    cfg = Config.fromfile(path)
    assert cfg.sn_optim_wrapper.paramwise_cfg.to_dict() == sn_paramwise_cfg()


def test_lambda_clipping_touches_only_the_mixing_weights():
    import torch
    from mmengine.optim import build_optim_wrapper

    from mmnorm import SparseSwitchableNorm
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4),
                          SparseSwitchableNorm(4))
    wrapper = build_optim_wrapper(model, dict(
        type='MixingWeightClipOptimWrapper', lambda_max_norm=1.0,
        optimizer=dict(type='SGD', lr=1.0)))
    lambdas = [model[1].mean_weight, model[1].var_weight,
               model[2].mean_weight, model[2].var_weight]
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    wrapper.step()
    moved = torch.cat([(before[id(p)] - p.detach()).flatten()
                       for p in lambdas])
    torch.testing.assert_close(moved.norm(), torch.tensor(1.0))  # lr 1
    conv_step = before[id(model[0].weight)] - model[0].weight.detach()
    torch.testing.assert_close(conv_step, torch.full_like(conv_step, 3.0))


def test_ssn_recipe_fragment():
    import os

    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    path = os.path.join(os.path.dirname(__file__), '..', 'configs', '_base_',
                        'ssn_recipe.py')
    cfg = Config.fromfile(path)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))
    wrapper = build_optim_wrapper(model, dict(
        cfg.ssn_optim_wrapper, optimizer=dict(type='SGD', lr=0.1,
                                          weight_decay=1e-4)))
    group = {id(p): g for g in wrapper.optimizer.param_groups
             for p in g['params']}[id(model[1].mean_weight)]
    assert group['lr'] == pytest.approx(0.01) and group['weight_decay'] == 0
    assert cfg.ssn_custom_hooks[0].type == 'SSNRadiusHook'
