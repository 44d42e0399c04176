"""Turn a toolkit ResNet (mmdet's or mmseg's) into IBN-Net-a in place.

IBN-a (Pan et al., 2018) replaces the first normalizer of every residual
block in stages 1-3 by an :class:`~mmnorm.layers.IBN` layer (half IN, half
BN); the stem, the other normalizers, the shortcuts and stage 4 keep BN.
Working on an already built toolkit ResNet keeps everything users expect
from it (``frozen_stages``, ``norm_eval``, ``dilations``/``strides``,
``plugins``, ``zero_init_residual``, ``init_cfg``), and the attribute names
(``layerX.Y.bn1.IN``, ``layerX.Y.bn1.BN``) equal the authors' checkpoints'.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..layers.ibn import IBN

#: The authors' placement for IBN-a: stages 1-3.
IBN_A_STAGES = ('a', 'a', 'a', None)


def apply_ibn_a(resnet: nn.Module,
                ibn_cfg: Sequence[Optional[str]] = IBN_A_STAGES,
                ratio: float = 0.5) -> int:
    """Put IBN layers into the first norm of every block of the stages
    whose ``ibn_cfg`` entry is ``'a'``.

    Args:
        resnet: an mmdet or mmseg ``ResNet``/``ResNeXt`` (needs
            ``res_layers`` and blocks with ``norm1_name``).
        ibn_cfg: one entry per stage, ``'a'`` or ``None``.
        ratio: IN share of the channels.

    Returns:
        The number of IBN layers inserted.
    """
    if len(ibn_cfg) < len(resnet.res_layers):
        raise ValueError(f'ibn_cfg has {len(ibn_cfg)} entries for '
                         f'{len(resnet.res_layers)} stages')
    inserted = 0
    for layer_name, kind in zip(resnet.res_layers, ibn_cfg):
        if kind is None:
            continue
        if kind != 'a':
            raise ValueError(f"ibn_cfg entries must be 'a' or None, got "
                             f'{kind!r}')
        for block in getattr(resnet, layer_name):
            old = getattr(block, block.norm1_name)
            setattr(block, block.norm1_name,
                    IBN(old.num_features, ratio=ratio, eps=old.eps,
                        momentum=old.momentum))
            inserted += 1
    # the new modules must honour frozen_stages like the ones they replace
    resnet._freeze_stages()
    return inserted


def ibn_a_variant(base: type, name: str) -> type:
    """A subclass of a toolkit ``ResNet``/``ResNeXt`` class with IBN-a.

    The subclass takes the base class's arguments plus ``ibn_cfg`` (per
    stage ``'a'`` or ``None``, default stages 1-3) and ``ibn_ratio`` (IN
    share of the channels, default 0.5). It keeps the base class's 7x7 stem
    unless ``deep_stem=True`` is passed, so the authors' ImageNet weights
    fit.
    """

    def __init__(self, *args, ibn_cfg: Sequence[Optional[str]] = IBN_A_STAGES,
                 ibn_ratio: float = 0.5, **kwargs) -> None:
        base.__init__(self, *args, **kwargs)
        apply_ibn_a(self, ibn_cfg, ibn_ratio)

    doc = (f'{base.__module__}.{base.__name__} with IBN-a blocks (see '
           ':func:`mmnorm.models.ibn_resnet.ibn_a_variant`).')
    return type(name, (base,), {'__init__': __init__, '__doc__': doc,
                                '__module__': __name__})
