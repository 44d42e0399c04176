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

from torch import Tensor, nn

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


def _residual_body(block: nn.Module, x: Tensor) -> Tensor:
    """A toolkit ResNet block (mmdet's or mmseg's ``BasicBlock`` /
    ``Bottleneck``) up to and including the residual addition, i.e. its
    forward without the final ReLU."""
    identity = x
    out = block.relu(block.norm1(block.conv1(x)))
    bottleneck = hasattr(block, 'conv3')
    plugins = bottleneck and block.with_plugins
    if plugins:
        out = block.forward_plugin(out, block.after_conv1_plugin_names)
    out = block.norm2(block.conv2(out))
    if bottleneck:
        out = block.relu(out)
        if plugins:
            out = block.forward_plugin(out, block.after_conv2_plugin_names)
        out = block.norm3(block.conv3(out))
        if plugins:
            out = block.forward_plugin(out, block.after_conv3_plugin_names)
    if block.downsample is not None:
        identity = block.downsample(x)
    return out + identity


def ibn_b_block(base: type) -> type:
    """A subclass of a toolkit block class that, once given an ``IN``
    module, applies it after the residual addition and before the final
    ReLU (IBN-b). Without ``IN`` it is the base block."""

    def forward(self, x: Tensor) -> Tensor:
        instance_norm = getattr(self, 'IN', None)
        if instance_norm is None:
            return base.forward(self, x)
        return self.relu(instance_norm(_residual_body(self, x)))

    return type(f'IBNb{base.__name__}', (base,),
                {'forward': forward, '__module__': __name__,
                 '__doc__': f'{base.__name__} with an optional IBN-b IN.'})


#: The authors' placement for IBN-b: after the last block of stages 1-2.
IBN_B_STAGES = (True, True, False, False)


def apply_ibn_b(resnet: nn.Module,
                stages: Sequence[bool] = IBN_B_STAGES) -> int:
    """IBN-b in place: the stem norm becomes ``InstanceNorm2d`` (affine),
    and the last block of each chosen stage gets an ``IN`` after its
    residual addition. The ResNet must be built with :func:`ibn_b_block`
    blocks (see :func:`ibn_b_variant`). Returns the number of IN layers."""
    if getattr(resnet, 'deep_stem', False):
        raise ValueError('IBN-b needs the 7x7 stem (deep_stem=False)')
    stem = getattr(resnet, resnet.norm1_name)
    setattr(resnet, resnet.norm1_name,
            nn.InstanceNorm2d(stem.num_features, affine=True))
    inserted = 1
    for layer_name, enabled in zip(resnet.res_layers, stages):
        if enabled:
            last = getattr(resnet, layer_name)[-1]
            channels = (last.conv3 if hasattr(last, 'conv3')
                        else last.conv2).out_channels
            last.IN = nn.InstanceNorm2d(channels, affine=True)
            inserted += 1
    resnet._freeze_stages()
    return inserted


def ibn_b_variant(base: type, name: str) -> type:
    """A subclass of a toolkit ``ResNet`` class with IBN-b: same arguments
    plus ``ibn_b_stages`` (per stage, whether its last block gets an IN;
    default stages 1-2). Keys follow the authors' checkpoints:
    ``bn1.{weight,bias}`` (the stem IN), ``layerX.Y.IN.{weight,bias}``."""
    arch = {depth: (ibn_b_block(block), blocks)
            for depth, (block, blocks) in base.arch_settings.items()}

    def __init__(self, *args, ibn_b_stages: Sequence[bool] = IBN_B_STAGES,
                 **kwargs) -> None:
        base.__init__(self, *args, **kwargs)
        apply_ibn_b(self, ibn_b_stages)

    return type(name, (base,), {'__init__': __init__, 'arch_settings': arch,
                                '__doc__': ibn_b_variant.__doc__,
                                '__module__': __name__})
