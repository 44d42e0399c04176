"""Load mmengine runner checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and
mmengine 0.10.7 calls it without the argument. Its own checkpoints then fail
to load (``--resume``, ``tools/test.py``): they pickle the message hub's
``HistoryBuffer`` objects and numpy scalars. The tempting workaround,
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, lets any checkpoint file run code.

:func:`install` instead adds exactly the globals such checkpoints need to
torch's weights-only allow-list: numpy's array/scalar reconstruction and
dtypes, and mmengine's ``HistoryBuffer``. A ``HistoryBuffer`` pickles its
statistics methods as ``getattr(HistoryBuffer, 'mean')``; allowing the real
``builtins.getattr`` would let a file reach anything, so the name is mapped
to :func:`history_buffer_getattr`, which only returns those methods.
Delete this module once mmengine passes ``weights_only`` itself.
"""
from __future__ import annotations

import contextlib
import pickle
import sys
from typing import Any, Iterator

import numpy as np
import torch

# The built-in statistics; custom ones registered with
# HistoryBuffer.register_statistics are allowed too.
_BUILTIN_STATISTICS = ('min', 'max', 'current', 'mean')


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to ``HistoryBuffer``'s statistics methods."""
    from mmengine.logging import HistoryBuffer
    allowed = set(_BUILTIN_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmnorm safe checkpoint loading: refusing getattr({obj!r}, '
        f'{name!r}); only HistoryBuffer statistics methods are allowed')


def _numpy_globals() -> list:
    core = getattr(np, '_core', None) or np.core
    multiarray = core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
        np.uint16, np.uint32, np.uint64, np.float16, np.float32,
        np.float64)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray,
            np.dtype, *dtype_classes]


def install() -> None:
    """Allow-list what mmengine runner checkpoints contain (idempotent)."""
    from mmengine.logging import HistoryBuffer
    torch.serialization.add_safe_globals(
        [*_numpy_globals(), HistoryBuffer,
         (history_buffer_getattr, 'builtins.getattr')])


@contextlib.contextmanager
def refuse_unsafe_checkpoints() -> Iterator[None]:
    """Turn a checkpoint that weights-only loading rejects into a clear
    exit message (the tools' behaviour); nothing in it has run."""
    try:
        yield
    except pickle.UnpicklingError as error:
        reason = str(error).split('WeightsUnpickler error:')[-1].strip()
        reason = reason.split('Check the documentation')[0].strip()
        print('mmnorm: refused to load a checkpoint: it holds objects that '
              'weights-only loading does not allow, which could run code '
              f'when unpickled. Nothing from it was executed.\n{reason}',
              file=sys.stderr)
        raise SystemExit(1) from None
