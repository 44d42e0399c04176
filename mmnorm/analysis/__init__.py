"""Reading what SN layers learned: ratios from models, checkpoints, logs."""
from .ratios import (
    average_by_stage,
    collect_ratios,
    dominant,
    ratios_from_state_dict,
    stage_of,
    summary_table,
)

__all__ = ['average_by_stage', 'collect_ratios', 'dominant',
           'ratios_from_state_dict', 'stage_of', 'summary_table']
