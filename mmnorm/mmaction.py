"""mmnorm's entry point for mmaction2.

Put it in a config's ``custom_imports`` (``imports=['mmnorm.mmaction']``):
it registers mmnorm's layers, makes mmaction2 1.2.0 importable (see
:mod:`mmnorm.compat.mmaction`) and imports mmaction2's models.
"""
import mmnorm  # noqa: F401  (registers the norm layers)
from mmnorm.compat.mmaction import make_importable

make_importable()

import mmaction.models  # noqa: E402,F401
