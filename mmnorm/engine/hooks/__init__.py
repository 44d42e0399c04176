"""mmengine hooks, registered in the root ``HOOKS`` registry."""
from .kalman_chain_hook import KalmanChainHook
from .population_stats_hook import PopulationStatsHook
from .ratio_logger_hook import SNRatioLoggerHook
from .ssn_radius_hook import SSNRadiusHook

__all__ = ['KalmanChainHook', 'PopulationStatsHook', 'SNRatioLoggerHook',
           'SSNRadiusHook']
