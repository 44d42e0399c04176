"""mmnorm's normalization layers, one normalizer per module."""
from .ibn import IBN
from .sn import SwitchableNorm
from .ssn import SparseSwitchableNorm
from .sync import (
    SyncSparseSwitchableNorm,
    SyncSwitchableNorm,
    convert_sync_sn,
    revert_sync_sn,
)

__all__ = ['IBN', 'SparseSwitchableNorm', 'SwitchableNorm',
           'SyncSparseSwitchableNorm', 'SyncSwitchableNorm',
           'convert_sync_sn', 'revert_sync_sn']
