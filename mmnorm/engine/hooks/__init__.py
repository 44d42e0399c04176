"""mmengine hooks, registered in the root ``HOOKS`` registry."""
from .population_stats_hook import PopulationStatsHook
from .ratio_logger_hook import SNRatioLoggerHook
from .ssn_radius_hook import SSNRadiusHook

__all__ = ['PopulationStatsHook', 'SNRatioLoggerHook', 'SSNRadiusHook']
