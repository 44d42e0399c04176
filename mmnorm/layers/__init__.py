"""mmnorm's normalization layers, one normalizer per module."""
from .ibn import IBN
from .kn import KalmanNorm
from .sn import SwitchableNorm
from .ssn import SparseSwitchableNorm
from .sw import (
    SwitchableWhitening,
    SyncSwitchableWhitening,
    convert_sync_sw,
    revert_sync_sw,
)
from .sync import (
    SyncSparseSwitchableNorm,
    SyncSwitchableNorm,
    convert_sync_sn,
    revert_sync_sn,
)

__all__ = ['IBN', 'KalmanNorm', 'SparseSwitchableNorm', 'SwitchableNorm',
           'SyncSparseSwitchableNorm', 'SyncSwitchableNorm',
           'convert_sync_sn', 'revert_sync_sn',
           'SwitchableWhitening', 'SyncSwitchableWhitening',
           'convert_sync_sw', 'revert_sync_sw']
