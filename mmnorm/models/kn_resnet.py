"""KN ResNets: a toolkit ResNet (mmdet's or mmseg's) with Kalman
Normalization chained through the whole backbone."""
from __future__ import annotations

from typing import Optional

from .kalman_chain import wire_resnet

#: the default norm of a KN backbone
KN_NORM_CFG = dict(type='KN', requires_grad=True)


def kn_variant(base: type, name: str) -> type:
    """A subclass of a toolkit ``ResNet``/``ResNeXt`` class whose norm layers
    default to ``KN`` and are chained by
    :func:`mmnorm.models.kalman_chain.wire_resnet` (stem, every block,
    downsampling shortcuts). It takes the base class's arguments, so
    ``depth``, ``deep_stem``, ``dilations``/``strides``, ``frozen_stages``,
    ``norm_eval``, ``zero_init_residual`` and ``init_cfg`` work as usual;
    ``norm_cfg`` sets the KN options (e.g. ``group_size``,
    ``prior_weight``)."""

    def __init__(self, *args, norm_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        if kwargs.get('with_cp'):
            # a recomputed block would see no predecessor statistics (the
            # chain is cleared after the forward) and normalize differently
            raise ValueError(f'{name}: with_cp=True is not supported; the '
                             'KN chain is not recomputed by checkpointing')
        base.__init__(self, *args, norm_cfg=dict(norm_cfg or KN_NORM_CFG),
                      **kwargs)
        wire_resnet(self)

    doc = (f'{base.__module__}.{base.__name__} with chained Kalman '
           'Normalization (see :func:`mmnorm.models.kn_resnet.kn_variant`).')
    return type(name, (base,), {'__init__': __init__, '__doc__': doc,
                                '__module__': __name__})
