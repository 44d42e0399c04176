"""Backbone building blocks shared by the per-toolkit entry points."""
from .ibn_resnet import IBN_A_STAGES, apply_ibn_a, ibn_a_variant

__all__ = ['IBN_A_STAGES', 'apply_ibn_a', 'ibn_a_variant']
