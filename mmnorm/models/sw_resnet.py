"""Switchable Whitening ResNets for mmdet and mmseg (``ResNetSW``).

The SW paper's ImageNet ResNets whiten in two places: the stem norm, and
in every second block (block index 1, 3, ...; never the first block of a
stage) of stages 1-3 the norm after the 3x3 conv (``norm2`` of a
Bottleneck, ``norm1`` of a BasicBlock). Shortcuts and the other norms stay
as the backbone's ``norm_cfg`` builds them (BN). :func:`apply_sw` does this
to an already built toolkit ResNet in place, keeping the attribute names
(``bn1``, ``layerX.Y.bn2``), so the layout of a checkpoint converted by
``tools/model_converters/official_sw_to_mmnorm.py`` matches and
``frozen_stages``, ``zero_init_residual``, ``dilations``, ``plugins`` and
``init_cfg`` work as for the base class. ``norm_eval`` is honoured by
:func:`sw_variant`'s ``train`` (SW is not a ``_BatchNorm``).
"""
from __future__ import annotations

from typing import Optional, Sequence

from mmengine.registry import MODELS
from torch import nn

from ..layers.sw import SwitchableWhitening

#: The authors' placement: stages 1-3 (``stage_with_sw``).
SW_STAGES = (True, True, True, False)


def _build(sw_cfg: Optional[dict], channels: int) -> nn.Module:
    cfg = dict(type='SW')
    cfg.update(sw_cfg or {})
    if cfg['type'] not in ('SW', 'SyncSW'):
        raise ValueError(f"ResNetSW: sw_cfg type must be 'SW' or 'SyncSW', "
                         f"got {cfg['type']!r}")
    requires_grad = cfg.pop('requires_grad', True)
    layer = MODELS.build(dict(cfg, num_features=channels))
    for param in layer.parameters():
        param.requires_grad_(requires_grad)
    return layer


def _stem_norm_slot(resnet: nn.Module) -> tuple[nn.Module, str]:
    """(parent, attribute) of the stem's last norm."""
    if getattr(resnet, 'deep_stem', False):
        stem = resnet.stem
        norms = [i for i, m in enumerate(stem)
                 if isinstance(m, (nn.modules.batchnorm._NormBase,
                                   nn.GroupNorm, SwitchableWhitening))]
        return stem, str(norms[-1])
    return resnet, resnet.norm1_name


def apply_sw(resnet: nn.Module, sw_cfg: Optional[dict] = None,
             stage_with_sw: Sequence[bool] = SW_STAGES,
             sw_stem: bool = True) -> int:
    """Put SW layers into a toolkit ResNet the way the authors did.

    Args:
        resnet: an mmdet or mmseg ``ResNet`` / ``ResNetV1c`` / ``ResNetV1d``
            (a deep stem gets SW in its last norm).
        sw_cfg: the layer config, e.g. ``dict(type='SW', num_pergroup=16,
            sw_type=2, T=5)``; ``type`` may be ``'SyncSW'``;
            ``requires_grad=False`` freezes the new layers' parameters.
        stage_with_sw: one flag per stage.
        sw_stem: whiten the stem norm.

    Returns:
        The number of SW layers inserted.
    """
    stages = list(stage_with_sw)
    if len(stages) < len(resnet.res_layers) or not all(
            isinstance(s, bool) for s in stages):
        raise ValueError(
            f'ResNetSW: stage_with_sw needs one bool per stage '
            f'({len(resnet.res_layers)}), got {stage_with_sw!r}')
    inserted = 0
    if sw_stem:
        parent, attr = _stem_norm_slot(resnet)
        old = getattr(parent, attr)
        setattr(parent, attr, _build(sw_cfg, old.num_features))
        inserted += 1
    for layer_name, enabled in zip(resnet.res_layers, stages):
        if not enabled:
            continue
        blocks = getattr(resnet, layer_name)
        for index in range(1, len(blocks), 2):
            block = blocks[index]
            attr = (block.norm2_name if hasattr(block, 'conv3')
                    else block.norm1_name)
            old = getattr(block, attr)
            setattr(block, attr, _build(sw_cfg, old.num_features))
            inserted += 1
    resnet._freeze_stages()  # the new layers honour frozen_stages
    return inserted


def sw_variant(base: type, name: str) -> type:
    """A subclass of a toolkit ``ResNet`` class with SW layers.

    Takes the base class's arguments plus ``sw_cfg`` (the SW layer config,
    default ``dict(type='SW')``: 16 channels per group, ``sw_type=2``,
    ``T=5``), ``stage_with_sw`` (default stages 1-3) and ``sw_stem``
    (default True).
    """

    def __init__(self, *args, sw_cfg: Optional[dict] = None,
                 stage_with_sw: Sequence[bool] = SW_STAGES,
                 sw_stem: bool = True, **kwargs) -> None:
        base.__init__(self, *args, **kwargs)
        self.sw_cfg = dict(sw_cfg or {})
        apply_sw(self, sw_cfg, stage_with_sw, sw_stem)

    def train(self, mode: bool = True):
        base.train(self, mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, SwitchableWhitening):
                    module.eval()
        return self

    doc = (f'{base.__module__}.{base.__name__} with Switchable Whitening '
           '(see :func:`mmnorm.models.sw_resnet.sw_variant`).')
    return type(name, (base,), {'__init__': __init__, 'train': train,
                                '__doc__': doc, '__module__': __name__})
