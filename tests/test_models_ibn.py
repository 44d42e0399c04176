"""IBN-a backbones for mmdet and mmseg."""
import pytest
import torch
from torch import nn

from mmnorm import IBN

pytest.importorskip('mmcv.ops')


def _instance_norms(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.InstanceNorm2d)}


@pytest.mark.parametrize('toolkit', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('depth,blocks', [(18, (2, 2, 2)), (50, (3, 4, 6)),
                                          (101, (3, 4, 23))])
def test_structure_matches_ibn_net_a(toolkit, depth, blocks):
    from toolkit_models import build_in_scope
    model = build_in_scope(toolkit, dict(type='ResNetIBN', depth=depth))
    norms = _instance_norms(model)
    # the first norm of every block in stages 1-3, half of its channels
    assert len(norms) == sum(blocks)
    expected = {}
    for stage, count in enumerate(blocks, start=1):
        for i in range(count):
            expected[f'layer{stage}.{i}.bn1.IN'] = 32 * 2 ** (stage - 1)
    assert {n: m.num_features for n, m in norms.items()} == expected
    keys = model.state_dict().keys()
    assert 'layer1.0.bn1.IN.weight' in keys
    assert 'layer1.0.bn1.BN.running_mean' in keys
    assert 'layer4.0.bn1.running_mean' in keys  # stage 4 stays BN
    assert 'bn1.running_mean' in keys  # 7x7 stem with BN
    assert model.conv1.kernel_size == (7, 7)


def test_frozen_stages_norm_eval_and_zero_init_residual():
    from toolkit_models import build_in_scope
    model = build_in_scope('mmdet', dict(
        type='ResNetIBN', depth=50, frozen_stages=1, norm_eval=True,
        zero_init_residual=True))
    model.init_weights()
    model.train()
    ibn = model.layer1[0].bn1
    assert isinstance(ibn, IBN)
    assert not any(p.requires_grad for p in ibn.parameters())  # frozen
    assert model.layer2[0].bn1.IN.weight.requires_grad
    assert not model.layer2[0].bn1.BN.training  # norm_eval reaches the BN
    assert torch.count_nonzero(model.layer2[0].bn3.weight) == 0


def test_resnext_ibn_a():
    from toolkit_models import build_in_scope
    model = build_in_scope('mmdet', dict(type='ResNeXtIBN', depth=50,
                                         groups=32, base_width=4))
    assert len(_instance_norms(model)) == 13


def test_faster_rcnn_with_ibn_backbone_trains_a_step():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from toolkit_models import detection_batch, ibn_detector_cfg, train_step

    import mmnorm.mmdet  # noqa: F401
    register_all_modules()
    model = MODELS.build(ibn_detector_cfg().model)
    loss = train_step(model, detection_batch(with_mask=False))
    assert torch.isfinite(loss)
    assert model.backbone.layer2[0].bn1.IN.weight.grad.abs().sum() > 0


def test_deeplabv3_with_ibn_backbone_trains_a_step():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from toolkit_models import (
        ibn_segmentor_cfg,
        segmentation_batch,
        train_step,
    )

    import mmnorm.mmseg  # noqa: F401
    register_all_modules()
    model = MODELS.build(ibn_segmentor_cfg().model)
    assert model.backbone.conv1.kernel_size == (7, 7)  # not the V1c stem
    loss = train_step(model, segmentation_batch())
    assert torch.isfinite(loss)
    assert model.backbone.layer1[0].bn1.IN.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('toolkit', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('depth,last', [(18, (1, 1)), (50, (2, 3))])
def test_ibn_b_structure_and_block_equivalence(toolkit, depth, last):
    from toolkit_models import build_in_scope
    model = build_in_scope(toolkit, dict(type='ResNetIBNb', depth=depth))
    model.eval()
    keys = set(model.state_dict())
    # the authors' keys: IN stem, IN after the last block of stages 1-2
    assert {'bn1.weight', 'bn1.bias'} <= keys and 'bn1.running_mean' \
        not in keys
    assert {f'layer1.{last[0]}.IN.weight', f'layer2.{last[1]}.IN.weight'} \
        <= keys
    assert len(_instance_norms(model)) == 3
    # the re-implemented block body equals the toolkit's forward
    block = model.layer2[-1]
    instance_norm = block.IN
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    del block.IN
    plain = block(x)
    block.IN = nn.Identity()
    torch.testing.assert_close(block(x), plain)
    block.IN = instance_norm
    out = torch.relu(instance_norm(_pre_activation(block, x)))
    torch.testing.assert_close(block(x), out)


def _pre_activation(block, x):
    """The block's value before its final (in-place) ReLU, captured from
    the toolkit's own forward: independent of mmnorm's re-implementation."""
    import copy
    plain = copy.deepcopy(block)
    del plain.IN
    inputs = []
    plain.relu.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].clone()))
    plain(x)
    return inputs[-1]


def test_faster_rcnn_with_ibn_b_backbone_trains_a_step():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from toolkit_models import detection_batch, ibn_detector_cfg, train_step

    import mmnorm.mmdet  # noqa: F401
    register_all_modules()
    cfg = ibn_detector_cfg()
    cfg.model.backbone.type = 'ResNetIBNb'
    cfg.model.backbone.frozen_stages = -1
    model = MODELS.build(cfg.model)
    loss = train_step(model, detection_batch(with_mask=False))
    assert torch.isfinite(loss)
    assert model.backbone.layer1[-1].IN.weight.grad.abs().sum() > 0
