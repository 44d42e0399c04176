"""Which mmnorm entry point a config needs, from its ``default_scope``."""
from __future__ import annotations

import importlib
from typing import Optional

ENTRY_POINTS = {'mmdet': 'mmnorm.mmdet', 'mmseg': 'mmnorm.mmseg',
                'mmaction': 'mmnorm.mmaction'}


def import_entry_point(default_scope: Optional[str]) -> Optional[str]:
    """Import mmnorm's entry point for the toolkit a config runs in.

    ``mmnorm.mmaction`` in particular must come before mmaction2's models
    (see :mod:`mmnorm.compat.mmaction`). Returns the module imported, or
    ``None`` for configs of other scopes.
    """
    module = ENTRY_POINTS.get(default_scope or '')
    if module is not None:
        importlib.import_module(module)
    return module
