"""The four row passes of moment normalization as Triton kernels.

For an input viewed as ``(N, C, M)``, row ``r = n * C + c`` holds the
``M`` elements ``x[n, c, :]``. mmnorm's layers need four passes over such
rows (the same as the CPU kernel in ``mmnorm/ops/csrc/moment_norm.cpp``):

=====================================  =====================================
:func:`row_moments`                    ``mean_r``, biased ``var_r``
:func:`row_affine`                     ``y = (x - s_r) * a_r + b_r``
:func:`row_grad_sums`                  ``sum_m dy``, ``sum_m dy (x - s_r)``
:func:`row_grad_input`                 ``dx = dy a_r + (x - s_r) b_r + c_r``
=====================================  =====================================

Design (details and the bytes moved per pass in ``docs/triton_kernels.md``):

* Every kernel takes the strides of each big tensor, so sliced, expanded
  (stride 0) and channels_last inputs are read in place, in their own
  dtype; nothing is copied or cast on the host. Outputs are contiguous
  ``(N, C, M)``. When ``stride(0) == C * stride(1)`` (or ``N == 1`` or
  ``C == 1``) the ``(N, C)`` dims are merged into one row dim.
* A program works on 2D tiles of ``BLOCK_R`` rows by ``BLOCK_M`` columns
  (short rows: many rows per tile) and loops over tiles, so the grid stays
  bounded. For channels_last inputs (``stride(1) == 1``) the tile rows are
  consecutive channels, the contiguous direction in memory.
* Reductions accumulate in float32 (float64 for float64 input), lane by
  lane, with one cross-lane reduction per row tile at the end. The moments
  are centred: sums of ``x - k`` and ``(x - k)^2`` around ``k``, the mean
  of the first tile, so a row whose mean is ``1e4`` standard deviations
  from zero keeps its variance. The gradient sums are centred on the
  caller's ``s_r`` (the row mean).
* Long rows with few rows are split over several programs (grid axis 1);
  each writes a partial ``(k, mean - k, var)`` or partial sums to a small
  buffer that one tiny kernel (moments, by Chan's parallel formula) or a
  ``sum`` per output (gradient sums) combines.
  Every grid and block size is a function of the shapes only: no host
  synchronisation anywhere.

Only long-stable ``triton.language`` calls are used (Triton 3.6 to 3.9).
CPU tensors are accepted only under ``TRITON_INTERPRET=1`` (the tests).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

try:  # Triton ships with PyTorch's CUDA wheels; mmnorm never installs it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ['is_available', 'row_moments', 'row_affine', 'row_grad_sums',
           'row_grad_input']

#: ``TRITON_INTERPRET`` as ``@triton.jit`` read it when this module loaded.
INTERPRET = os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COEF_DTYPES = (torch.float32, torch.float64)
_INT32_LIMIT = 2**31 - 1
# Most programs along a row of a split reduction, and the partial buffers'
# width.
_MAX_SPLIT = 256
#: (programs to aim for, most programs in a grid) for non-CUDA tensors run
#: by the interpreter; the tests lower them to exercise the loops.
INTERPRET_PROGRAMS = (8, 64)


def is_available() -> bool:
    """Whether Triton imports (then CUDA tensors can use these kernels)."""
    return triton is not None


# torch.library.triton_op traces its body with wrap_triton enabled and
# needs the kernels wrapped then; in eager mode the plain kernel launches
# without the wrapper's overhead.
_WRAP = getattr(torch.library, 'wrap_triton', None)
try:
    from torch._library.triton import is_wrap_triton_enabled as _wrapping
except ImportError:  # pragma: no cover - other torch versions
    _wrapping = None
_wrapped: dict = {}


def _launch(kernel):
    """``kernel``, or ``torch.library.wrap_triton(kernel)`` while a
    ``triton_op`` is being traced (always, if torch cannot tell)."""
    if _WRAP is None or (_wrapping is not None and not _wrapping()):
        return kernel
    if kernel not in _wrapped:
        _wrapped[kernel] = _WRAP(kernel)
    return _wrapped[kernel]


def _run(kernel, grid: tuple, device: torch.device, *args, **kwargs):
    """Launches ``kernel`` on ``device`` (Triton launches on the current
    CUDA device, which may be another one)."""
    if (device.type == 'cuda' and device.index is not None
            and device.index != torch.cuda.current_device()):
        with torch.cuda.device(device):
            _launch(kernel)[grid](*args, **kwargs)
    else:
        _launch(kernel)[grid](*args, **kwargs)


# ---------------------------------------------------------------------------
# Kernels. Shared argument conventions:
#   C          rows per "sample" after merging (the tile rows run over it)
#   M          elements per row
#   s*N, s*C, s*M  strides of a big tensor along (N, C, M) in elements
#   c_blocks   cdiv(C, BLOCK_R); row tile t is (t // c_blocks, t % c_blocks)
#   IDX64      offsets in int64 (some offset or the numel exceeds int32)

if triton is not None:

    @triton.jit
    def _tile_rows(t, c_blocks, C, BLOCK_R: tl.constexpr,
                   IDX64: tl.constexpr):
        """Sample index, channel indices, row indices and row mask of row
        tile ``t``."""
        n = t // c_blocks
        c = (t % c_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        if IDX64:
            n = n.to(tl.int64)
            c = c.to(tl.int64)
        return n, c, n * C + c, c < C

    @triton.jit
    def _moments_kernel(x_ptr, mean_ptr, var_ptr, k_ptr, C, M, sxN, sxC,
                        sxM, n_row_tiles, c_blocks, chunk, S,
                        BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
                        IDX64: tl.constexpr, SPLIT: tl.constexpr):
        # Program (p, s) reduces columns [s * chunk, (s + 1) * chunk) of row
        # tiles p, p + P, ... and writes, at r * S + s, the biased variance
        # of that part of row r to var_ptr and its mean to mean_ptr. The
        # sums are taken around k = the mean of the part's first tile
        # (within a few standard deviations / sqrt(BLOCK_M) of the part's
        # mean: no cancellation, however far the mean is from zero). A
        # SPLIT kernel stores the mean minus k and k itself (k_ptr) for
        # _combine_moments_kernel.
        acc_t = mean_ptr.dtype.element_ty
        s = tl.program_id(1)
        col_start = s * chunk
        col_end = tl.minimum(col_start + chunk, M)
        count = (col_end - col_start).to(acc_t)
        m_idx = tl.arange(0, BLOCK_M)
        for t in range(tl.program_id(0), n_row_tiles, tl.num_programs(0)):
            n, c, r, row_ok = _tile_rows(t, c_blocks, C, BLOCK_R, IDX64)
            base = n * sxN + c * sxC
            # The first tile gives k (one reduction) ...
            cols = col_start + m_idx
            if IDX64:
                cols = cols.to(tl.int64)
            mask = row_ok[:, None] & (cols < col_end)[None, :]
            v = tl.load(x_ptr + base[:, None] + cols[None, :] * sxM,
                        mask=mask, other=0.0).to(acc_t)
            first = tl.minimum(col_end - col_start, BLOCK_M).to(acc_t)
            k = tl.sum(v, axis=1) / first
            d = tl.where(mask, v - k[:, None], 0.0)
            acc1 = d
            acc2 = d * d
            # ... and the others are summed lane by lane around it.
            for m0 in range(col_start + BLOCK_M, col_end, BLOCK_M):
                cols = m0 + m_idx
                if IDX64:
                    cols = cols.to(tl.int64)
                mask = row_ok[:, None] & (cols < col_end)[None, :]
                v = tl.load(x_ptr + base[:, None] + cols[None, :] * sxM,
                            mask=mask, other=0.0).to(acc_t)
                d = tl.where(mask, v - k[:, None], 0.0)
                acc1 += d
                acc2 += d * d
            mean = tl.sum(acc1, axis=1) / count
            m2 = tl.sum(acc2, axis=1) - mean * mean * count
            out = r * S + s
            if SPLIT:
                tl.store(k_ptr + out, k, mask=row_ok)
            else:
                mean = mean + k
            tl.store(mean_ptr + out, mean, mask=row_ok)
            tl.store(var_ptr + out, tl.maximum(m2, 0.0) / count,
                     mask=row_ok)

    @triton.jit
    def _combine_moments_kernel(k_ptr, pmean_ptr, pvar_ptr, mean_ptr,
                                var_ptr, R, M, chunk, S,
                                BLOCK_R: tl.constexpr,
                                BLOCK_S: tl.constexpr):
        # Merges the S parts (k, mean - k, var) of each row, part s having
        # min(chunk, M - s * chunk) elements (Chan et al.), around the first
        # part's k: k_s - k_0 of nearby values is exact, so a large common
        # mean cancels.
        acc_t = mean_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        parts = tl.arange(0, BLOCK_S)
        row_ok = rows < R
        mask = row_ok[:, None] & (parts < S)[None, :]
        offs = rows[:, None] * S + parts[None, :]
        k0 = tl.load(k_ptr + rows * S, mask=row_ok, other=0.0)
        pk = tl.load(k_ptr + offs, mask=mask, other=0.0)
        pmean = tl.load(pmean_ptr + offs, mask=mask, other=0.0)
        pvar = tl.load(pvar_ptr + offs, mask=mask, other=0.0)
        count = tl.minimum(M - parts * chunk, chunk)
        count = tl.where(parts < S, count, 0).to(acc_t)
        dev = tl.where(mask, (pk - k0[:, None]) + pmean, 0.0)
        total = M.to(acc_t)
        mean = tl.sum(dev * count[None, :], axis=1) / total
        dev = tl.where(mask, dev - mean[:, None], 0.0)
        m2 = tl.sum((pvar + dev * dev) * count[None, :], axis=1)
        tl.store(mean_ptr + rows, k0 + mean, mask=row_ok)
        tl.store(var_ptr + rows, m2 / total, mask=row_ok)

    @triton.jit
    def _grad_sums_kernel(dy_ptr, x_ptr, s_ptr, sum_ptr, sumx_ptr, C, M,
                          sgN, sgC, sgM, sxN, sxC, sxM, n_row_tiles,
                          c_blocks, chunk, S, BLOCK_R: tl.constexpr,
                          BLOCK_M: tl.constexpr, IDX64: tl.constexpr):
        # Program (p, s): over columns [s * chunk, (s + 1) * chunk) of row
        # tiles p, p + P, ..., writes sum dy to sum_ptr[r * S + s] and
        # sum dy * (x - s_r) to sumx_ptr[r * S + s].
        acc_t = sum_ptr.dtype.element_ty
        s = tl.program_id(1)
        col_start = s * chunk
        col_end = tl.minimum(col_start + chunk, M)
        m_idx = tl.arange(0, BLOCK_M)
        for t in range(tl.program_id(0), n_row_tiles, tl.num_programs(0)):
            n, c, r, row_ok = _tile_rows(t, c_blocks, C, BLOCK_R, IDX64)
            shift = tl.load(s_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            g_base = n * sgN + c * sgC
            x_base = n * sxN + c * sxC
            acc_g = tl.zeros([BLOCK_R, BLOCK_M], dtype=acc_t)
            acc_gx = tl.zeros([BLOCK_R, BLOCK_M], dtype=acc_t)
            for m0 in range(col_start, col_end, BLOCK_M):
                cols = m0 + m_idx
                if IDX64:
                    cols = cols.to(tl.int64)
                mask = row_ok[:, None] & (cols < col_end)[None, :]
                g = tl.load(dy_ptr + g_base[:, None] + cols[None, :] * sgM,
                            mask=mask, other=0.0).to(acc_t)
                v = tl.load(x_ptr + x_base[:, None] + cols[None, :] * sxM,
                            mask=mask, other=0.0).to(acc_t)
                acc_g += g
                acc_gx += g * (v - shift[:, None])
            out = r * S + s
            tl.store(sum_ptr + out, tl.sum(acc_g, axis=1), mask=row_ok)
            tl.store(sumx_ptr + out, tl.sum(acc_gx, axis=1), mask=row_ok)

    @triton.jit
    def _affine_kernel(x_ptr, s_ptr, a_ptr, b_ptr, y_ptr, C, M, sxN, sxC,
                       sxM, n_tiles, m_blocks, c_blocks,
                       BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
                       IDX64: tl.constexpr, ACC64: tl.constexpr):
        # y[r, m] = (x[r, m] - s[r]) * a[r] + b[r], y contiguous (R, M).
        acc_t = tl.float64 if ACC64 else tl.float32
        m_idx = tl.arange(0, BLOCK_M)
        for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            n, c, r, row_ok = _tile_rows(t // m_blocks, c_blocks, C,
                                         BLOCK_R, IDX64)
            cols = (t % m_blocks) * BLOCK_M + m_idx
            if IDX64:
                cols = cols.to(tl.int64)
            mask = row_ok[:, None] & (cols < M)[None, :]
            shift = tl.load(s_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            scale = tl.load(a_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            offset = tl.load(b_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            v = tl.load(x_ptr + (n * sxN + c * sxC)[:, None]
                        + cols[None, :] * sxM, mask=mask,
                        other=0.0).to(acc_t)
            y = (v - shift[:, None]) * scale[:, None] + offset[:, None]
            tl.store(y_ptr + (r * M)[:, None] + cols[None, :],
                     y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_input_kernel(dy_ptr, x_ptr, s_ptr, a_ptr, b_ptr, c_ptr,
                           dx_ptr, C, M, sgN, sgC, sgM, sxN, sxC, sxM,
                           n_tiles, m_blocks, c_blocks,
                           BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
                           IDX64: tl.constexpr, ACC64: tl.constexpr):
        # dx[r, m] = dy[r, m] a[r] + (x[r, m] - s[r]) b[r] + c[r],
        # dx contiguous (R, M).
        acc_t = tl.float64 if ACC64 else tl.float32
        m_idx = tl.arange(0, BLOCK_M)
        for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            n, c, r, row_ok = _tile_rows(t // m_blocks, c_blocks, C,
                                         BLOCK_R, IDX64)
            cols = (t % m_blocks) * BLOCK_M + m_idx
            if IDX64:
                cols = cols.to(tl.int64)
            mask = row_ok[:, None] & (cols < M)[None, :]
            shift = tl.load(s_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            ca = tl.load(a_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            cb = tl.load(b_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            cc = tl.load(c_ptr + r, mask=row_ok, other=0.0).to(acc_t)
            g = tl.load(dy_ptr + (n * sgN + c * sgC)[:, None]
                        + cols[None, :] * sgM, mask=mask,
                        other=0.0).to(acc_t)
            v = tl.load(x_ptr + (n * sxN + c * sxC)[:, None]
                        + cols[None, :] * sxM, mask=mask,
                        other=0.0).to(acc_t)
            dx = (g * ca[:, None] + (v - shift[:, None]) * cb[:, None]
                  + cc[:, None])
            tl.store(dx_ptr + (r * M)[:, None] + cols[None, :],
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Host side: checks, layout and launch parameters (shapes only, no syncs).


def _need_triton(op: str) -> None:
    if triton is None:
        raise RuntimeError(
            f'mmnorm.ops.triton_rows.{op}: Triton is not installed; use the '
            'CPU kernel or the composed PyTorch path instead')


def _check_big(op: str, name: str, t: Tensor,
               like: Optional[Tensor] = None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 3:
        raise ValueError(
            f'mmnorm.ops.triton_rows.{op}: {name} must be a 3D (N, C, M) '
            f'tensor, got {getattr(t, "shape", type(t).__name__)}')
    if t.dtype not in _DTYPES:
        raise TypeError(
            f'mmnorm.ops.triton_rows.{op}: {name} must be float16, bfloat16, '
            f'float32 or float64, got {t.dtype}')
    if t.device.type != 'cuda' and not INTERPRET:
        raise ValueError(
            f'mmnorm.ops.triton_rows.{op}: {name} must be a CUDA tensor '
            f'(got {t.device}); CPU tensors run only under '
            'TRITON_INTERPRET=1')
    if like is not None and (t.shape != like.shape
                             or t.device != like.device):
        raise ValueError(
            f'mmnorm.ops.triton_rows.{op}: {name} must have the shape and '
            f'device of x {tuple(like.shape)} on {like.device}, got '
            f'{tuple(t.shape)} on {t.device}')


def _coef(op: str, name: str, t: Tensor, x: Tensor) -> Tensor:
    rows = x.shape[0] * x.shape[1]
    if (not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != rows
            or t.dtype not in _COEF_DTYPES or t.device != x.device):
        raise ValueError(
            f'mmnorm.ops.triton_rows.{op}: {name} must be a float32 or '
            f'float64 vector of N*C = {rows} values on {x.device}, got '
            f'{getattr(t, "dtype", type(t).__name__)} '
            f'{tuple(getattr(t, "shape", ()))}')
    return t.contiguous()  # no-op for the (N*C,) vectors the layers pass


def _out_dtype(op: str, x: Tensor, out_dtype) -> torch.dtype:
    if out_dtype is None:
        return x.dtype
    if out_dtype not in _DTYPES:
        raise TypeError(
            f'mmnorm.ops.triton_rows.{op}: out_dtype must be float16, '
            f'bfloat16, float32 or float64, got {out_dtype}')
    return out_dtype


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(tensors: list[Tensor]) -> tuple[int, list[tuple[int, int, int]]]:
    """``(C', strides)``: the (N, C) dims merged into one row dim of C'
    rows where every tensor allows it (N' = N * C // C'), and each tensor's
    strides along (N', C', M)."""
    n, c, _ = tensors[0].shape
    strides = [tuple(t.stride()) for t in tensors]
    if n == 1:
        return c, [(0, sc, sm) for _, sc, sm in strides]
    if c == 1:
        return n, [(0, sn, sm) for sn, _, sm in strides]
    if all(sn == c * sc for sn, sc, _ in strides):
        return n * c, [(0, sc, sm) for _, sc, sm in strides]
    return c, strides


def _needs_int64(tensors: list[Tensor]) -> bool:
    for t in tensors:
        if t.numel() > _INT32_LIMIT:
            return True
        span = sum((size - 1) * stride
                   for size, stride in zip(t.shape, t.stride()))
        if span > _INT32_LIMIT:
            return True
    return False


def _next_pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()


@functools.cache
def _sm_count(index: Optional[int]) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(device: torch.device) -> tuple[int, int]:
    """(programs to aim for, most programs in one grid)."""
    if device.type == 'cuda':
        sms = _sm_count(device.index)
        return 8 * sms, 32 * sms
    return INTERPRET_PROGRAMS


def _tiles(rows: int, cols: int, n_samples: int, channel_rows: bool,
           itemsize: int, target: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_M, num_warps) by shape rules.

    About 4096 elements a tile (2048 in float64); rows first when the
    rows are the contiguous direction (channels_last), else columns
    first. Tiles shrink (to 1024 elements) while there are fewer row
    tiles than ``target`` programs and a row cannot be split (short rows).
    """
    tile = 4096 if itemsize <= 4 else 2048
    if channel_rows:
        block_r = min(_next_pow2(rows), 64)
        block_m = min(_next_pow2(cols), max(tile // block_r, 1))
    else:
        block_m = min(_next_pow2(cols), tile)
        block_r = min(_next_pow2(rows), max(tile // block_m, 1))
    while (block_r > 1 and block_r * block_m > 1024
           and n_samples * -(-rows // block_r) < target):
        block_r //= 2
    size = block_r * block_m
    num_warps = 8 if size >= 4096 else 4 if size >= 1024 else (
        2 if size >= 256 else 1)
    return block_r, block_m, num_warps


def _layout(x: Tensor, others: list[Tensor], target: int):
    """Rows, strides and tiles for the big tensors ``[x, *others]``."""
    n, c, m = x.shape
    rows, strides = _rows([x, *others])
    n_samples = n * c // rows
    # Tile rows along the channels when they are x's contiguous direction.
    channel_rows = strides[0][1] == 1 and strides[0][2] != 1 and m > 1
    tiles = _tiles(rows, m, n_samples, channel_rows, x.element_size(),
                   target)
    return rows, n_samples, strides, tiles


def _split(n_row_tiles: int, cols: int, block_m: int,
           target: int) -> tuple[int, int]:
    """(chunk, S): columns per program of a row and programs per row."""
    blocks = -(-cols // block_m)
    split = 1
    if n_row_tiles < target and blocks > 1:
        split = min(-(-target // n_row_tiles), blocks, _MAX_SPLIT)
    chunk = -(-blocks // split) * block_m
    return chunk, -(-cols // chunk)


# ---------------------------------------------------------------------------
# The four passes.


def row_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each row of ``x``.

    .. math:: \\mu_r = \\frac1M \\sum_m x_{rm}, \\qquad
              \\sigma^2_r = \\frac1M \\sum_m (x_{rm} - \\mu_r)^2

    Args:
        x: ``(N, C, M)``, any strides, float16/bfloat16/float32/float64,
            ``M >= 1`` unless ``N * C == 0``.

    Returns:
        ``(mean, var)``, each ``(N * C,)`` contiguous, float32 (float64 for
        float64 ``x``).
    """
    _need_triton('row_moments')
    _check_big('row_moments', 'x', x)
    n, c, m = x.shape
    acc = _acc_dtype(x)
    mean = torch.empty(n * c, dtype=acc, device=x.device)
    var = torch.empty(n * c, dtype=acc, device=x.device)
    if n * c == 0:
        return mean, var
    if m == 0:
        raise ValueError('mmnorm.ops.triton_rows.row_moments: rows of x '
                         'must not be empty (M = 0)')
    target, max_programs = _programs(x.device)
    rows, n_samples, strides, (block_r, block_m, warps) = _layout(
        x, [], target)
    c_blocks = -(-rows // block_r)
    n_row_tiles = n_samples * c_blocks
    chunk, split = _split(n_row_tiles, m, block_m, target)
    if split == 1:
        pmean, pvar, k = mean, var, mean  # k unused
    else:  # partial (mean - k, var, k), each flat (N*C, S)
        size = n * c * split
        parts = torch.empty(3 * size, dtype=acc, device=x.device)
        pmean, pvar, k = parts[:size], parts[size:2 * size], parts[2 * size:]
    grid = (min(n_row_tiles, max_programs), split)
    _run(_moments_kernel, grid, x.device, x, pmean, pvar, k, rows, m,
         *strides[0], n_row_tiles, c_blocks, chunk, split,
         BLOCK_R=block_r, BLOCK_M=block_m, IDX64=_needs_int64([x]),
         SPLIT=split > 1, num_warps=warps)
    if split > 1:
        block_s = _next_pow2(split)
        block = max(1, 1024 // block_s)
        _run(_combine_moments_kernel, (-(-(n * c) // block),), x.device,
             k, pmean, pvar, mean, var, n * c, m, chunk, split,
             BLOCK_R=block, BLOCK_S=block_s, num_warps=4)
    return mean, var


def row_affine(x: Tensor, shift: Tensor, scale: Tensor, offset: Tensor,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``y[n, c, m] = (x[n, c, m] - shift[r]) * scale[r] + offset[r]``.

    Args:
        x: ``(N, C, M)``, any strides, float16/bfloat16/float32/float64.
        shift, scale, offset: ``(N * C,)`` float32 or float64, indexed by
            ``r = n * C + c``.
        out_dtype: the output's dtype; ``x.dtype`` by default.

    Returns:
        ``(N, C, M)`` contiguous. Computed in float32 (float64 for float64
        ``x``).
    """
    op = 'row_affine'
    _need_triton(op)
    _check_big(op, 'x', x)
    shift = _coef(op, 'shift', shift, x)
    scale = _coef(op, 'scale', scale, x)
    offset = _coef(op, 'offset', offset, x)
    y = torch.empty(x.shape, dtype=_out_dtype(op, x, out_dtype),
                    device=x.device)
    if x.numel() == 0:
        return y
    target, max_programs = _programs(x.device)
    rows, n_samples, strides, (block_r, block_m, warps) = _layout(
        x, [], target)
    c_blocks = -(-rows // block_r)
    m_blocks = -(-x.shape[2] // block_m)
    n_tiles = n_samples * c_blocks * m_blocks
    _run(_affine_kernel, (min(n_tiles, max_programs),), x.device, x,
         shift, scale, offset, y, rows, x.shape[2], *strides[0], n_tiles,
         m_blocks, c_blocks, BLOCK_R=block_r, BLOCK_M=block_m,
         IDX64=_needs_int64([x, y]), ACC64=x.dtype == torch.float64,
         num_warps=warps)
    return y


def row_grad_sums(dy: Tensor, x: Tensor,
                  shift: Tensor) -> tuple[Tensor, Tensor]:
    """Row sums of the backward: ``sum_m dy`` and
    ``sum_m dy * (x - shift[r])``.

    Args:
        dy: ``(N, C, M)`` like ``x``, any strides (e.g. expanded, stride 0),
            any of the four float dtypes (read as it is).
        x: ``(N, C, M)``, any strides, float16/bfloat16/float32/float64.
        shift: ``(N * C,)`` float32 or float64, the centre (the row mean).

    Returns:
        ``(sum_dy, sum_dy_xc)``, each ``(N * C,)`` contiguous, float32
        (float64 for float64 ``x``).
    """
    op = 'row_grad_sums'
    _need_triton(op)
    _check_big(op, 'x', x)
    _check_big(op, 'dy', dy, x)
    shift = _coef(op, 'shift', shift, x)
    n, c, m = x.shape
    acc = _acc_dtype(x)
    if n * c == 0 or m == 0:
        return (torch.zeros(n * c, dtype=acc, device=x.device),
                torch.zeros(n * c, dtype=acc, device=x.device))
    target, max_programs = _programs(x.device)
    rows, n_samples, strides, (block_r, block_m, warps) = _layout(
        x, [dy], target)
    c_blocks = -(-rows // block_r)
    n_row_tiles = n_samples * c_blocks
    chunk, split = _split(n_row_tiles, m, block_m, target)
    # Partial sums (N*C, S), S = 1 unless rows are split; the two outputs
    # never share storage (as torch.library ops require).
    sum_dy = torch.empty(n * c, split, dtype=acc, device=x.device)
    sum_dyx = torch.empty(n * c, split, dtype=acc, device=x.device)
    grid = (min(n_row_tiles, max_programs), split)
    _run(_grad_sums_kernel, grid, x.device, dy, x, shift, sum_dy, sum_dyx,
         rows, m, *strides[1], *strides[0], n_row_tiles, c_blocks, chunk,
         split, BLOCK_R=block_r, BLOCK_M=block_m,
         IDX64=_needs_int64([x, dy]), num_warps=warps)
    if split == 1:
        return sum_dy.view(n * c), sum_dyx.view(n * c)
    return sum_dy.sum(dim=1), sum_dyx.sum(dim=1)


def row_grad_input(dy: Tensor, x: Tensor, shift: Tensor, a: Tensor,
                   b: Tensor, c: Tensor,
                   out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``dx = dy * a[r] + (x - shift[r]) * b[r] + c[r]``.

    Args:
        dy: ``(N, C, M)`` like ``x``, any strides (e.g. expanded, stride 0),
            any of the four float dtypes (read as it is).
        x: ``(N, C, M)``, any strides, float16/bfloat16/float32/float64.
        shift, a, b, c: ``(N * C,)`` float32 or float64.
        out_dtype: the output's dtype; ``x.dtype`` by default.

    Returns:
        ``(N, C, M)`` contiguous. Computed in float32 (float64 for float64
        ``x``).
    """
    op = 'row_grad_input'
    _need_triton(op)
    _check_big(op, 'x', x)
    _check_big(op, 'dy', dy, x)
    shift = _coef(op, 'shift', shift, x)
    a = _coef(op, 'a', a, x)
    b = _coef(op, 'b', b, x)
    c = _coef(op, 'c', c, x)
    dx = torch.empty(x.shape, dtype=_out_dtype(op, x, out_dtype),
                     device=x.device)
    if x.numel() == 0:
        return dx
    target, max_programs = _programs(x.device)
    rows, n_samples, strides, (block_r, block_m, warps) = _layout(
        x, [dy], target)
    c_blocks = -(-rows // block_r)
    m_blocks = -(-x.shape[2] // block_m)
    n_tiles = n_samples * c_blocks * m_blocks
    _run(_grad_input_kernel, (min(n_tiles, max_programs),), x.device, dy,
         x, shift, a, b, c, dx, rows, x.shape[2], *strides[1], *strides[0],
         n_tiles, m_blocks, c_blocks, BLOCK_R=block_r, BLOCK_M=block_m,
         IDX64=_needs_int64([x, dy, dx]), ACC64=x.dtype == torch.float64,
         num_warps=warps)
    return dx
