"""mmnorm's normalization layers, one normalizer per module."""
from .sn import SwitchableNorm
from .ssn import SparseSwitchableNorm

__all__ = ['SparseSwitchableNorm', 'SwitchableNorm']
