"""mmnorm: learning-to-normalize layers for the OpenMMLab toolkits.

``import mmnorm`` registers every mmnorm normalization layer in mmengine's
root ``MODELS`` registry, where ``build_norm_layer`` finds it from every
toolkit's scope, and mmnorm's hooks in the root ``HOOKS`` registry. It
imports no toolkit (mmdet, mmseg, mmaction2); their extras live in
``mmnorm.mmdet``, ``mmnorm.mmseg`` and ``mmnorm.mmaction``.
"""
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from .compat import (
    checkpoint,
    is_norm_layer,
    patches,
    register_bn_loader,
    register_norm_layer,
    register_sync_pair,
)
from .converters import convert_norms, ibn_from_bn, revert_norms
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
from .layers.fixed import FixedSourceNorm
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
    if not is_norm_layer(_cls):  # a layer module may register itself
        # what the patched BN-keyed toolkit paths treat like BN
        register_norm_layer(_cls, bn_shaped=issubclass(_cls, _BatchNorm))
register_norm_layer(FixedSourceNorm, bn_shaped=True)
register_bn_loader(IBN, ibn_from_bn)  # BN checkpoints split over IN / BN
patches.install()  # every toolkit patch, now or when the toolkit loads
checkpoint.install()

__all__ = ['IBN', 'KalmanNorm', 'NORM_LAYERS', 'KalmanChainHook',
           'PopulationStatsHook', 'SSNRadiusHook',
           'SparseSwitchableNorm', 'SwitchableNorm',
           'SyncSparseSwitchableNorm', 'SyncSwitchableNorm', '__version__',
           'convert_norms', 'convert_sync_sn', 'recompute_population_stats',
           'register_norm_layer', 'register_sync_pair', 'revert_norms',
           'revert_sync_sn', 'sn_paramwise_cfg', 'SwitchableWhitening',
           'SyncSwitchableWhitening', 'convert_sync_sw', 'revert_sync_sw']
