"""mmnorm's entry point for mmsegmentation.

Put it in a config's ``custom_imports`` (``imports=['mmnorm.mmseg']``): it
registers mmnorm's layers and imports mmseg's models. mmseg-specific parts
register into mmseg's own registries from here.
"""
import mmseg.models  # noqa: F401

import mmnorm  # noqa: F401  (registers the norm layers)
