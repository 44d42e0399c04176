"""mmnorm's normalization layers, one normalizer per module."""
from .sn import SwitchableNorm

__all__ = ['SwitchableNorm']
