"""Pure tensor math of mmnorm's normalizers (no OpenMMLab imports)."""
from .moment_norm import instance_moments, moment_norm
from .switchable import BRANCHES, SwitchableMix, masked_softmax

__all__ = ['BRANCHES', 'SwitchableMix', 'instance_moments', 'masked_softmax',
           'moment_norm']
