"""The BN-only conversions refuse mmnorm layers instead of breaking them."""
import pytest
import torch
from torch import nn

import mmnorm  # noqa: F401  (installs the guards)
from mmnorm import SwitchableNorm

pytest.importorskip('mmcv')


def _sn_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))


def _bn_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _mixed_model():
    from mmnorm import SparseSwitchableNorm
    return nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4),
                         nn.BatchNorm2d(4), SparseSwitchableNorm(4))


def test_mmengine_sync_bn_turns_sn_into_sync_sn_and_bn_into_sync_bn():
    from mmengine.model import convert_sync_batchnorm
    from mmengine.runner import runner as runner_module

    from mmnorm import SyncSparseSwitchableNorm, SyncSwitchableNorm
    for convert in (convert_sync_batchnorm,
                    runner_module.convert_sync_batchnorm):
        model = _mixed_model()
        with torch.no_grad():
            model[1].mean_weight.copy_(torch.tensor([3.0, 1.0, 0.0]))
        converted = convert(model)
        assert type(converted[1]) is SyncSwitchableNorm
        assert type(converted[2]) is nn.SyncBatchNorm
        assert type(converted[3]) is SyncSparseSwitchableNorm
        assert converted[1].mean_weight.tolist() == [3.0, 1.0, 0.0]
    converted = convert_sync_batchnorm(_bn_model())
    assert isinstance(converted[1], nn.SyncBatchNorm)


def test_torch_convert_sync_batchnorm_handles_sn():
    from mmnorm import SyncSwitchableNorm
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(_mixed_model())
    assert type(converted[1]) is SyncSwitchableNorm
    assert type(converted[2]) is nn.SyncBatchNorm
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(_bn_model())
    assert isinstance(converted[1], nn.SyncBatchNorm)


def test_fuse_conv_bn_refuses_sn_and_still_fuses_bn():
    import mmcv.cnn
    from mmcv.cnn import fuse_conv_bn
    for fuse in (fuse_conv_bn, mmcv.cnn.utils.fuse_conv_bn):
        model = _sn_model().eval()
        with pytest.raises(ValueError, match='fuse_conv_bn.*SN|fuse'):
            fuse(model)
        assert isinstance(model[1], SwitchableNorm)  # model unchanged
    model = _bn_model().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    fused = fuse_conv_bn(model)
    assert isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_conv_module_efficient_conv_bn_eval_refuses_sn():
    from mmcv.cnn import ConvModule
    with pytest.raises(ValueError, match='efficient_conv_bn_eval'):
        ConvModule(3, 4, 3, norm_cfg=dict(type='SN'),
                   efficient_conv_bn_eval=True)
    # default (off) still builds, and BN may still use the feature
    ConvModule(3, 4, 3, norm_cfg=dict(type='SN'))
    bn = ConvModule(3, 4, 3, norm_cfg=dict(type='BN'),
                    efficient_conv_bn_eval=True)
    assert bn.efficient_conv_bn_eval_forward is not None


def test_mmengine_efficient_conv_bn_eval_refuses_sn():
    from mmengine.model.efficient_conv_bn_eval import (
        turn_on_efficient_conv_bn_eval,
    )
    holder = nn.Module()
    holder.backbone = _sn_model()
    with pytest.raises(ValueError, match='efficient_conv_bn_eval'):
        turn_on_efficient_conv_bn_eval(holder, 'backbone')


def test_install_is_idempotent():
    from mmengine.model import convert_sync_batchnorm

    from mmnorm.compat import guards, patches
    guards.install()
    patches.install()
    from mmengine.model import convert_sync_batchnorm as again
    assert again is convert_sync_batchnorm
    assert {'sync-bn', 'torch-sync-bn', 'fuse-conv-bn',
            'efficient-conv-bn-eval'} <= set(patches.applied())


def test_without_the_patch_fuse_conv_bn_silently_changes_sn_models():
    """Where mmcv breaks SN models (drop the patch once this fails)."""
    import importlib

    from mmnorm.compat import patches

    # the package attribute fuse_conv_bn is the function, not the module
    fuse_module = importlib.import_module('mmcv.cnn.utils.fuse_conv_bn')
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4))
    model.train()(torch.randn(4, 3, 8, 8))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    patches.uninstall(('fuse-conv-bn',))
    try:
        assert not patches.is_applied('fuse-conv-bn')
        fused = fuse_module.fuse_conv_bn(model)
        assert isinstance(fused[1], nn.Identity)
        assert (fused(x) - expected).abs().max() > 1e-2
    finally:
        patches.install()
    assert patches.is_applied('fuse-conv-bn')
