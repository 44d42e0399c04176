"""Real mmdet / mmseg / mmaction2 models with SN everywhere train a step."""
import pytest
import torch

import mmnorm
from mmnorm import SwitchableNorm

pytest.importorskip('mmcv.ops')


def _sn_layers(module):
    return {n: m for n, m in module.named_modules()
            if isinstance(m, SwitchableNorm)}


def _plots(model, out_dir):
    """The ratio figures and table work on every toolkit's models."""
    from mmnorm.analysis import collect_ratios, summary_table
    from mmnorm.analysis.plots import plot_depth, plot_stages
    records = collect_ratios(model)
    paths = plot_depth(records, str(out_dir / 'depth'))
    paths += plot_stages(records, str(out_dir / 'stages'))
    assert all(p.endswith(('.png', '.svg')) for p in paths)
    assert summary_table(records).count('\n') == len(records) + 1


def _check_trained(model, loss, parts):
    assert torch.isfinite(loss), loss
    layers = _sn_layers(model)
    for part in parts:
        mine = {n: m for n, m in layers.items() if n.startswith(part)}
        assert mine, f'no SN layer in {part}'
        for name, layer in mine.items():
            for p in (layer.mean_weight, layer.var_weight):
                assert p.grad is not None, name
                assert torch.isfinite(p.grad).all(), name
            assert any(p.grad.abs().sum() > 0 for p in
                       (layer.mean_weight, layer.var_weight)), name


@pytest.mark.parametrize('kind', ['faster', 'mask'])
def test_mmdet_two_stage_detector_with_sn(kind, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from toolkit_models import detection_batch, detector_cfg, train_step

    import mmnorm.mmdet  # noqa: F401
    register_all_modules()
    model = MODELS.build(detector_cfg(kind).model)
    loss = train_step(model, detection_batch(with_mask=kind == 'mask'))
    parts = ['backbone', 'neck', 'roi_head.bbox_head']
    if kind == 'mask':
        parts.append('roi_head.mask_head')
    _check_trained(model, loss, parts)
    # the stem, every bottleneck norm and the projection shortcuts
    assert len(_sn_layers(model.backbone)) == 1 + 16 * 3 + 4
    _plots(model, tmp_path)


def test_mmdet_norm_eval_keeps_backbone_sn_in_eval_mode():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from toolkit_models import detection_batch, detector_cfg, train_step

    import mmnorm.mmdet  # noqa: F401
    register_all_modules()
    model = MODELS.build(detector_cfg('faster', norm_eval=True).model)
    before = {n: m.running_mean.clone()
              for n, m in _sn_layers(model.backbone).items()}
    train_step(model, detection_batch(with_mask=False))
    for name, layer in _sn_layers(model.backbone).items():
        assert not layer.training, name
        assert torch.equal(layer.running_mean, before[name]), name
    assert all(m.training for m in _sn_layers(model.neck).values())


def test_mmdet_zero_init_residual_zeroes_last_sn_of_each_block():
    from mmdet.models.backbones import ResNet
    backbone = ResNet(50, norm_cfg=dict(type='SN'), zero_init_residual=True)
    backbone.init_weights()
    blocks = [b for layer in (backbone.layer1, backbone.layer2,
                              backbone.layer3, backbone.layer4)
              for b in layer]
    assert len(blocks) == 16
    for block in blocks:
        assert isinstance(block.norm3, SwitchableNorm)
        assert torch.count_nonzero(block.norm3.weight) == 0
        assert torch.count_nonzero(block.norm1.weight) > 0


def test_mmseg_pspnet_with_sn_including_1x1_pooling_branch(tmp_path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from toolkit_models import segmentation_batch, segmentor_cfg, train_step

    import mmnorm.mmseg  # noqa: F401
    register_all_modules()
    model = MODELS.build(segmentor_cfg().model)
    pooled = [n for n, m in _sn_layers(model.decode_head).items()
              if n.startswith('psp_modules.0')]
    assert pooled, 'the 1x1 pooling branch should hold an SN layer'
    loss = train_step(model, segmentation_batch())
    _check_trained(model, loss, ['backbone', 'decode_head', 'auxiliary_head',
                                 'decode_head.psp_modules.0'])
    _plots(model, tmp_path)


def test_mmaction_i3d_with_sn(tmp_path):
    from mmaction.registry import MODELS
    from mmaction.utils import register_all_modules
    from toolkit_models import recognition_batch, recognizer_cfg, train_step

    import mmnorm.mmaction  # noqa: F401
    register_all_modules()
    model = MODELS.build(recognizer_cfg().model)
    loss = train_step(model, recognition_batch())
    _check_trained(model, loss, ['backbone'])
    conv_norms = [m for m in model.backbone.modules()
                  if isinstance(m, SwitchableNorm)]
    assert len(conv_norms) == 53
    _plots(model, tmp_path)


def test_import_mmnorm_imports_no_toolkit():
    import subprocess
    import sys
    code = ('import sys, mmnorm; '
            "bad = [m for m in ('mmdet', 'mmseg', 'mmaction') "
            'if m in sys.modules]; '
            'assert not bad, bad; '
            "from mmengine.registry import MODELS; "
            "assert MODELS.get('SN') is mmnorm.SwitchableNorm")
    subprocess.run([sys.executable, '-c', code], check=True)
    assert mmnorm.NORM_LAYERS['SN'] is SwitchableNorm
