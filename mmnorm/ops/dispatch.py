"""The one place that decides how mmnorm normalizes a given tensor.

Every SN-family layer asks :func:`backend_for` which implementation runs
for its input, and nothing else in mmnorm looks at devices, compilers or
Triton. The answer is one of:

``'export'``
    ONNX / TorchScript tracing or ``torch.export`` is running: plain
    PyTorch ops that every exporter understands (:mod:`mmnorm.ops.plain`),
    no custom op in the graph.
``'cpu_kernel'``
    a CPU tensor and mmnorm's compiled library (``mmnorm/ops/csrc``) is
    loaded: the whole layer is ``torch.ops.mmnorm.switchable_norm``.
``'triton'``
    a CUDA tensor, the library is loaded and Triton imports: the same
    library op, whose CUDA kernels are the Triton row passes of
    :mod:`mmnorm.ops.triton_rows` (registered by :mod:`mmnorm.ops.library`).
``'composed'``
    anything else (no C++ compiler, no Triton, another device, or the
    switch below off): stock PyTorch ops, with the fewest passes over the
    big tensor that they allow.

Within the composed path one more choice depends on the device, made
here too (:func:`composed_moments`): how the per-row moments are taken.

The public switch is :data:`mmnorm.ops._kernel.ENABLED` (environment
variable ``MMNORM_NO_KERNEL=1`` turns it off before import): off, every
tensor takes the composed path. Under ``torch.compile`` the switch is
guarded on, so flipping it recompiles instead of running a stale graph.
The library is loaded (and built the first time) when a layer is
constructed, never inside traced code: see :func:`prepare`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import _kernel

EXPORT = 'export'
CPU_KERNEL = 'cpu_kernel'
TRITON = 'triton'
COMPOSED = 'composed'
BACKENDS = (EXPORT, CPU_KERNEL, TRITON, COMPOSED)

#: composed-path moments: ``torch.var_mean`` (one read of the input)
VAR_MEAN = 'var_mean'
#: composed-path moments: the mean, then the norm of the centred rows
#: (two reads, one temporary write)
TWO_PASS = 'two_pass'

_triton_state: dict[str, bool] = {}


def triton_available() -> bool:
    """Triton imports (it ships with PyTorch's CUDA wheels; mmnorm never
    installs it). Checked once per process."""
    if 'ok' not in _triton_state:
        try:
            from . import triton_rows
            _triton_state['ok'] = bool(triton_rows.is_available())
        except Exception:  # an absent or broken Triton: composed path
            _triton_state['ok'] = False
    return _triton_state['ok']


def is_exporting() -> bool:
    """An exporter (ONNX, TorchScript, ``torch.export``) traces the model."""
    return (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
            or torch.compiler.is_exporting())


def prepare() -> Optional[Any]:
    """Load (and if needed build) the compiled library now, outside any
    trace; called by every layer's constructor. Returns the op namespace
    or ``None``."""
    library = _kernel.get()
    if library is not None:
        triton_available()
    return library


def backend_for(x: Tensor) -> str:
    """Name of the path that normalizes ``x`` (one of :data:`BACKENDS`)."""
    if is_exporting():
        return EXPORT
    device = x.device.type
    if device == 'cpu':
        return CPU_KERNEL if _kernel.get() is not None else COMPOSED
    if device == 'cuda' and _kernel.get() is not None \
            and triton_available():
        return TRITON
    return COMPOSED


def composed_moments(x: Tensor) -> str:
    """How the composed path takes the per-row mean and variance of ``x``.

    :data:`VAR_MEAN` reads the input once (the minimum). On the CPU,
    though, ``var_mean`` runs a scalar Welford loop, measured 8-16x slower
    on the benchmark shapes than :data:`TWO_PASS`, whose three vectorized
    ops (``mean``; ``batch_norm`` in inference mode for the centred rows;
    ``vector_norm``) are as accurate (``native_group_norm``'s moments,
    faster still, lose 3.5e-4 of the variance at a mean 1e4 standard
    deviations from zero, where these lose 2e-6).
    """
    return TWO_PASS if x.device.type == 'cpu' else VAR_MEAN
