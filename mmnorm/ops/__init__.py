"""Pure tensor math of mmnorm's normalizers (no OpenMMLab imports)."""
from . import dispatch
from .moment_norm import instance_moments, moment_norm, switchable_norm
from .switchable import BRANCHES, SwitchableMix, masked_softmax

__all__ = ['BRANCHES', 'SwitchableMix', 'dispatch', 'instance_moments',
           'masked_softmax', 'moment_norm', 'switchable_norm']
