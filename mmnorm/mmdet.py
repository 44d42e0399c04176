"""mmnorm's entry point for mmdet.

Put it in a config's ``custom_imports`` (``imports=['mmnorm.mmdet']``): it
registers mmnorm's layers and imports mmdet's models. mmdet-specific parts
(backbones, hooks) register into mmdet's own registries from here, so users
without mmseg or mmaction2 are never affected by them.
"""
import mmdet.models  # noqa: F401

import mmnorm  # noqa: F401  (registers the norm layers)
