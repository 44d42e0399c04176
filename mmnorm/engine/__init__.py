"""Training-time machinery: hooks and post-training tools."""
from .hooks import (
    KalmanChainHook,
    PopulationStatsHook,
    SNRatioLoggerHook,
    SSNRadiusHook,
)
from .optim import sn_paramwise_cfg
from .optim_wrapper import (
    AmpMixingWeightClipOptimWrapper,
    MixingWeightClipOptimWrapper,
)
from .population import recompute_population_stats

__all__ = ['AmpMixingWeightClipOptimWrapper', 'KalmanChainHook',
           'MixingWeightClipOptimWrapper',
           'PopulationStatsHook',
           'SNRatioLoggerHook', 'SSNRadiusHook', 'recompute_population_stats',
           'sn_paramwise_cfg']
