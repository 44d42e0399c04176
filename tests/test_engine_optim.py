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


# --- mixed precision (``tools/train.py --amp``) ---------------------------

def _ssn_recipe():
    import os

    from mmengine.config import Config
    path = os.path.join(os.path.dirname(__file__), '..', 'configs', '_base_',
                        'ssn_recipe.py')
    return Config.fromfile(path).ssn_optim_wrapper


def test_amp_wrapper_type_mapping():
    from mmnorm.engine.optim_wrapper import amp_optim_wrapper_type
    assert amp_optim_wrapper_type(None) == 'AmpOptimWrapper'
    assert amp_optim_wrapper_type('OptimWrapper') == 'AmpOptimWrapper'
    assert (amp_optim_wrapper_type('MixingWeightClipOptimWrapper')
            == 'AmpMixingWeightClipOptimWrapper')
    assert (amp_optim_wrapper_type('AmpMixingWeightClipOptimWrapper')
            == 'AmpMixingWeightClipOptimWrapper')
    with pytest.raises(ValueError, match='MyWrapper.*no mixed-precision'):
        amp_optim_wrapper_type('MyWrapper')


def test_train_tool_amp_maps_the_ssn_recipe(monkeypatch, tmp_path):
    """``build_cfg`` of ``tools/train.py --amp`` on an SSN-recipe config."""
    import importlib.util
    import os

    import torch
    tools = os.path.join(os.path.dirname(__file__), '..', 'tools')
    recipe = os.path.abspath(os.path.join(tools, '..', 'configs', '_base_',
                                          'ssn_recipe.py'))
    cfg_path = tmp_path / 'cfg.py'
    cfg_path.write_text(
        f'_base_ = [{recipe!r}]\n'
        "optim_wrapper = dict(type='OptimWrapper', optimizer=dict("
        "type='SGD', lr=0.1))\n"
        'optim_wrapper.update(_base_.ssn_optim_wrapper)\n')
    spec = importlib.util.spec_from_file_location(
        'mmnorm_train_tool', os.path.join(tools, 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = train.build_cfg(train.parse_args(
        [str(cfg_path), '--amp', '--work-dir', str(tmp_path)]))
    assert cfg.optim_wrapper.type == 'AmpMixingWeightClipOptimWrapper'
    assert cfg.optim_wrapper.lambda_max_norm == 1.0
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg_path.write_text("optim_wrapper = dict(optimizer=dict(type='SGD', "
                        'lr=0.1))\n')
    cfg = train.build_cfg(train.parse_args([str(cfg_path), '--amp']))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'


def _amp_model():
    import torch

    from mmnorm import SparseSwitchableNorm
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), SwitchableNorm(8),
                         nn.Conv2d(8, 8, 3), SparseSwitchableNorm(8),
                         nn.Flatten(), nn.LazyLinear(2))


def _build_amp_wrapper(model, monkeypatch, **extra):
    """The SSN recipe's wrapper as ``--amp`` builds it, with a real CPU
    ``GradScaler`` in place of mmengine's (which disables itself without
    CUDA)."""
    import warnings

    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    from mmnorm.engine.optim_wrapper import (
        AmpMixingWeightClipOptimWrapper,
        amp_optim_wrapper_type,
    )
    cfg = _ssn_recipe().to_dict()
    cfg.update(type=amp_optim_wrapper_type(cfg['type']),
               loss_scale='dynamic',
               optimizer=dict(type='SGD', lr=1.0, weight_decay=0.0),
               **extra)
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    with warnings.catch_warnings():  # torch may say CUDA is unavailable
        warnings.simplefilter('ignore')
        wrapper = build_optim_wrapper(model, cfg)
    assert isinstance(wrapper, AmpMixingWeightClipOptimWrapper)
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 16)
    return wrapper


def _lambdas(model):
    return [model[1].mean_weight, model[1].var_weight,
            model[3].mean_weight, model[3].var_weight]


def _loss(model, x, target):
    import torch
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    return torch.nn.functional.cross_entropy(out.float(), target) * 50


@pytest.mark.parametrize('clip_grad', [None, dict(max_norm=0.5)])
def test_amp_ssn_recipe_clips_unscaled_lambda_gradients(monkeypatch,
                                                       clip_grad):
    import copy

    import torch
    model = _amp_model()
    x, target = torch.randn(4, 3, 9, 9), torch.tensor([0, 1, 1, 0])
    model(x)  # materialise the lazy layer
    reference = copy.deepcopy(model)
    extra = {} if clip_grad is None else dict(clip_grad=dict(clip_grad))
    wrapper = _build_amp_wrapper(model, monkeypatch, **extra)

    # independent: unscaled gradients of the same autocast step
    _loss(reference, x, target).backward()
    expected = {id(p): q.grad.clone() for p, q in
                zip(model.parameters(), reference.parameters())}
    lam = torch.cat([expected[id(p)].flatten() for p in _lambdas(model)])
    assert lam.norm() > 1.0  # the clipping acts
    for p in _lambdas(model):
        expected[id(p)] *= 1.0 / (lam.norm() + 1e-6)
    if clip_grad is not None:
        total = torch.cat([g.flatten() for g in expected.values()]).norm()
        assert total > clip_grad['max_norm']
        for g in expected.values():
            g *= clip_grad['max_norm'] / (total + 1e-6)
    before = [p.detach().clone() for p in model.parameters()]

    wrapper.backward(_loss(model, x, target))  # scaled by 2**16
    big = max(p.grad.abs().max() for p in model.parameters())
    assert big > 1e3  # the gradients really were scaled
    wrapper.step()  # raises if unscale_ ran twice
    for p in model.parameters():
        torch.testing.assert_close(p.grad, expected[id(p)], rtol=1e-4,
                                   atol=1e-7)
    clipped = torch.cat([p.grad.flatten() for p in _lambdas(model)])
    if clip_grad is None:
        torch.testing.assert_close(clipped.norm(), torch.tensor(1.0))
    lr = {id(p): g['lr'] for g in wrapper.optimizer.param_groups
          for p in g['params']}
    for b, p in zip(before, model.parameters()):  # SGD took the step
        torch.testing.assert_close(b - p.detach(), lr[id(p)] * p.grad)
    assert lr[id(model[1].mean_weight)] == pytest.approx(0.1)  # lr_mult
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 16
    # running statistics stay float32 under autocast
    for layer in (model[1], model[3]):
        assert layer.running_mean.dtype == torch.float32
        assert layer.running_var.dtype == torch.float32
        assert torch.isfinite(layer.running_var).all()


def test_amp_step_is_skipped_on_overflow(monkeypatch):
    import torch
    model = _amp_model()
    x, target = torch.randn(4, 3, 9, 9), torch.tensor([0, 1, 1, 0])
    model(x)
    wrapper = _build_amp_wrapper(model, monkeypatch)
    before = [p.detach().clone() for p in model.parameters()]
    wrapper.backward(_loss(model, x, target))
    model[1].mean_weight.grad[0] = float('inf')
    wrapper.step()
    for b, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), b)
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 15
    # the next, finite step goes through, with one unscale_ again
    wrapper.zero_grad()
    wrapper.backward(_loss(model, x, target))
    wrapper.step()
    assert not torch.equal(model[0].weight.detach(), before[0])


def test_amp_wrapper_rejects_bad_lambda_max_norm(monkeypatch):
    with pytest.raises(ValueError, match='AmpMixingWeightClipOptimWrapper: '
                       'lambda_max_norm must be > 0'):
        _build_amp_wrapper(_amp_model(), monkeypatch, lambda_max_norm=0.0)


def test_train_tool_amp_builds_the_runner_and_its_wrapper(monkeypatch,
                                                          tmp_path):
    """``tools/train.py --amp`` on an SSN-recipe config, up to the built
    Runner and the optimizer wrapper it makes (no toolkit needed)."""
    import importlib.util
    import os
    import warnings

    import torch
    from mmengine.model import BaseModel
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.registry import MODELS

    from mmnorm import SparseSwitchableNorm
    from mmnorm.engine.optim_wrapper import AmpMixingWeightClipOptimWrapper

    @MODELS.register_module(name='AmpToySSNNet', force=True)
    class AmpToySSNNet(BaseModel):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.norm = SparseSwitchableNorm(8)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return self.norm(self.conv(inputs))

    tools = os.path.join(os.path.dirname(__file__), '..', 'tools')
    recipe = os.path.abspath(os.path.join(tools, '..', 'configs', '_base_',
                                          'ssn_recipe.py'))
    cfg_path = tmp_path / 'cfg.py'
    cfg_path.write_text(
        f'_base_ = [{recipe!r}]\n'
        "default_scope = 'mmengine'\n"
        "model = dict(type='AmpToySSNNet')\n"
        "optim_wrapper = dict(type='OptimWrapper', optimizer=dict("
        "type='SGD', lr=0.1, weight_decay=1e-4))\n"
        'optim_wrapper.update(_base_.ssn_optim_wrapper)\n'
        "train_dataloader = dict(batch_size=1, dataset=dict(type='X'), "
        "sampler=dict(type='DefaultSampler'))\n"
        'train_cfg = dict(by_epoch=False, max_iters=1)\n'
        'custom_hooks = _base_.ssn_custom_hooks\n')
    spec = importlib.util.spec_from_file_location(
        'mmnorm_train_tool', os.path.join(tools, 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with monkeypatch.context() as patch:  # --amp refuses a CPU machine
        patch.setattr(torch.cuda, 'is_available', lambda: True)
        cfg = train.build_cfg(train.parse_args(
            [str(cfg_path), '--amp', '--work-dir', str(tmp_path / 'w')]))
    runner = train.build_runner(cfg, 'none')
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        wrapper = runner.build_optim_wrapper(runner.cfg.optim_wrapper)
    assert isinstance(wrapper, AmpMixingWeightClipOptimWrapper)
    assert wrapper.lambda_max_norm == 1.0
    group = {id(p): g for g in wrapper.optimizer.param_groups
             for p in g['params']}[id(runner.model.norm.mean_weight)]
    assert group['lr'] == pytest.approx(0.01) and group['weight_decay'] == 0
