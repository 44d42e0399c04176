"""Make mmaction2 1.2.0 importable.

The published mmaction2 1.2.0 (wheel and sdist) has two packaging bugs
(upstream issue 2714):

* the package ``mmaction/models/localizers/drn/`` is missing, while
  ``mmaction/models/localizers/__init__.py`` imports ``DRN`` from it, so
  ``import mmaction.models`` fails;
* ``mmaction/utils/dependency.py`` imports ``importlib_metadata``, which the
  package does not declare.

:func:`make_importable` fixes both without touching site-packages, and only
when they are broken: it aliases the standard library's
:mod:`importlib.metadata` when ``importlib_metadata`` is absent, and registers
placeholder modules for the missing DRN localizer (building a ``DRN``
raises an ``ImportError`` that says why). A fixed mmaction2 release is left
alone. Delete this module once mmnorm pins such a release.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import types

_DRN_PACKAGE = 'mmaction.models.localizers.drn'


class MissingDRN:
    """Stands in for mmaction2's DRN localizer, absent from 1.2.0."""

    def __init__(self, *args, **kwargs) -> None:
        raise ImportError(
            'DRN is not available: the mmaction2 1.2.0 package ships without '
            'mmaction/models/localizers/drn (upstream issue 2714); mmnorm '
            'only made the rest of mmaction2 importable.')


def _drn_missing() -> bool:
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, 'models', 'localizers', 'drn', 'drn.py')
    return not os.path.exists(path)


def make_importable() -> list[str]:
    """Apply the fixes that this installation needs.

    Returns:
        What was fixed: any of ``'importlib_metadata'`` and ``'drn'``.
    """
    fixed = []
    if importlib.util.find_spec('importlib_metadata') is None \
            and 'importlib_metadata' not in sys.modules:
        sys.modules['importlib_metadata'] = importlib.metadata
        fixed.append('importlib_metadata')
    if _DRN_PACKAGE not in sys.modules and _drn_missing():
        package = types.ModuleType(_DRN_PACKAGE)
        package.__path__ = []  # a package, so '.drn.drn' resolves
        module = types.ModuleType(f'{_DRN_PACKAGE}.drn')
        module.DRN = MissingDRN
        package.drn = module
        sys.modules[_DRN_PACKAGE] = package
        sys.modules[module.__name__] = module
        fixed.append('drn')
    return fixed
