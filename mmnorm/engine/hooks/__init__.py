"""mmengine hooks, registered in the root ``HOOKS`` registry."""
from .population_stats_hook import PopulationStatsHook

__all__ = ['PopulationStatsHook']
