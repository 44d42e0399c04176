"""mmnorm's entry point for mmaction2.

Put it in a config's ``custom_imports`` (``imports=['mmnorm.mmaction']``):
it registers mmnorm's layers, makes mmaction2 1.2.0 importable (see
:mod:`mmnorm.compat.mmaction`), imports mmaction2's models and lets their
2D->3D inflation load ImageNet weights into SN layers
(:mod:`mmnorm.models.inflate`, which also provides ``GN3d``).
"""
import mmnorm  # noqa: F401  (registers the norm layers)
from mmnorm.compat.mmaction import make_importable

make_importable()

import mmaction.models  # noqa: E402,F401

from mmnorm.models import inflate  # noqa: E402

inflate.install()  # 2D->3D inflation of ImageNet weights into SN layers
mmaction.registry.MODELS.register_module('GN3d', module=inflate.GroupNorm3d)
