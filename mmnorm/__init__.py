"""mmnorm: learning-to-normalize layers for the OpenMMLab toolkits.

``import mmnorm`` registers every mmnorm normalization layer in mmengine's
root ``MODELS`` registry, where ``build_norm_layer`` finds it from every
toolkit's scope, and mmnorm's hooks in the root ``HOOKS`` registry. It
imports no toolkit (mmdet, mmseg, mmaction2); their extras live in
``mmnorm.mmdet``, ``mmnorm.mmseg`` and ``mmnorm.mmaction``.
"""
from mmengine.registry import MODELS

from .compat import checkpoint, guards
from .engine import (
    KalmanChainHook,
    PopulationStatsHook,
    SSNRadiusHook,
    recompute_population_stats,
    sn_paramwise_cfg,
)
from .layers import (
    IBN,
    KalmanNorm,
    SparseSwitchableNorm,
    SwitchableNorm,
    SwitchableWhitening,
    SyncSparseSwitchableNorm,
    SyncSwitchableNorm,
    SyncSwitchableWhitening,
    convert_sync_sn,
    convert_sync_sw,
    revert_sync_sn,
    revert_sync_sw,
)
from .version import __version__

#: type name in configs -> layer class
NORM_LAYERS = {
    'SN': SwitchableNorm,
    'SSN': SparseSwitchableNorm,
    'SyncSN': SyncSwitchableNorm,
    'SyncSSN': SyncSparseSwitchableNorm,
    'IBN': IBN,
    'KN': KalmanNorm,
    'SW': SwitchableWhitening,
    'SyncSW': SyncSwitchableWhitening,
}

for _name, _cls in NORM_LAYERS.items():
    if MODELS.module_dict.get(_name) is not _cls:  # importing twice is fine
        MODELS.register_module(_name, module=_cls)
guards.install()
checkpoint.install()

__all__ = ['IBN', 'KalmanNorm', 'NORM_LAYERS', 'KalmanChainHook',
           'PopulationStatsHook', 'SSNRadiusHook',
           'SparseSwitchableNorm', 'SwitchableNorm',
           'SyncSparseSwitchableNorm', 'SyncSwitchableNorm', '__version__',
           'convert_sync_sn', 'recompute_population_stats', 'revert_sync_sn',
           'sn_paramwise_cfg']
