"""Backbone building blocks shared by the per-toolkit entry points."""
from .ibn_resnet import (
    IBN_A_STAGES,
    IBN_B_STAGES,
    apply_ibn_a,
    apply_ibn_b,
    ibn_a_variant,
    ibn_b_variant,
)
from .kalman_chain import wire_kalman_chains, wire_resnet
from .kn_resnet import kn_variant
from .sw_resnet import SW_STAGES, apply_sw, sw_variant

__all__ = ['IBN_A_STAGES', 'IBN_B_STAGES', 'apply_ibn_a', 'apply_ibn_b',
           'ibn_a_variant', 'ibn_b_variant', 'kn_variant',
           'wire_kalman_chains', 'wire_resnet', 'SW_STAGES', 'apply_sw',
           'sw_variant']
