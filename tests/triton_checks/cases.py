"""Cases for mmnorm.ops.triton_rows against a float64 reference.

Shared by the interpreter run (``interpret_check.py``, CPU tensors under
``TRITON_INTERPRET=1``) and the CUDA tests in ``tests/test_ops_triton.py``.
Every case returns a list of failure messages (empty when it passes); the
reference is plain float64 torch on the same input values.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from mmnorm.ops import triton_rows as tr

# (relative error bound of the float32 statistics, of an output stored in
# the dtype) per input dtype.
STAT_TOL = {torch.float64: 1e-12, torch.float32: 2e-6,
            torch.float16: 2e-6, torch.bfloat16: 2e-6}
OUT_TOL = {torch.float64: 1e-12, torch.float32: 2e-6,
           torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _rel(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max(|want|), in float64."""
    got, want = got.double(), want.double()
    scale = want.abs().max().clamp_min(1e-300)
    return float((got - want).abs().max() / scale)


def _check(name: str, got: Tensor, want: Tensor, tol: float,
           dtype: Optional[torch.dtype] = None,
           scale: Optional[Tensor] = None) -> list[str]:
    """Shape, dtype, contiguity and error of ``got``; the error is relative
    to ``max |want|``, or elementwise to ``scale`` (e.g. the sum of the
    absolute terms of a sum)."""
    errors = []
    if tuple(got.shape) != tuple(want.shape):
        return [f'{name}: shape {tuple(got.shape)} != {tuple(want.shape)}']
    if dtype is not None and got.dtype != dtype:
        errors.append(f'{name}: dtype {got.dtype} != {dtype}')
    if not got.is_contiguous():
        errors.append(f'{name}: not contiguous')
    if got.numel() and not torch.isfinite(got).all():
        errors.append(f'{name}: not finite')
    elif got.numel():
        if scale is None:
            err = _rel(got, want)
        else:
            err = float(((got.double().cpu() - want.cpu()).abs()
                         / scale.cpu().clamp_min(1e-300)).max())
        if not err <= tol:
            errors.append(f'{name}: relative error {err:.3g} > {tol:.3g}')
    return errors


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_all_passes(x: Tensor, dy: Tensor, label: str) -> list[str]:
    """Runs the four passes on ``x``/``dy`` (any strides, same shape) and
    compares each with float64 torch."""
    n, c, m = x.shape
    acc = _acc(x)
    x64 = x.double()
    dy64 = dy.double()
    errors = []
    mean, var = tr.row_moments(x)
    want_mean = x64.mean(dim=2).reshape(-1)
    want_var = x64.var(dim=2, unbiased=False).reshape(-1)
    errors += _check('mean', mean, want_mean, STAT_TOL[x.dtype], acc,
                     scale=x64.abs().mean(dim=2).reshape(-1))
    # Variance error relative to each row's own variance.
    if var.shape == want_var.shape and var.numel():
        err = float(((var.double() - want_var).abs()
                     / want_var.clamp_min(1e-30)).max())
        if not err <= 1e-5 * (1 if x.dtype != torch.float64 else 1e-7):
            errors.append(f'var: relative error {err:.3g}')
    else:
        errors.append(f'var: shape {tuple(var.shape)}')
    # Coefficients as a layer would pass them: centred on the row mean.
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + m)
    rows = n * c
    shift = want_mean.to(acc).to(x.device)
    a = torch.randn(rows, generator=gen, dtype=torch.float64)
    b = torch.randn(rows, generator=gen, dtype=torch.float64)
    cc = torch.randn(rows, generator=gen, dtype=torch.float64)
    a, b, cc = (t.to(acc).to(x.device) for t in (a, b, cc))
    s64 = shift.double().view(n, c, 1)

    def col(t):
        return t.double().view(n, c, 1)

    y = tr.row_affine(x, shift, a, b)
    want_y = (x64 - s64) * col(a) + col(b)
    errors += _check('affine', y, want_y, OUT_TOL[x.dtype], x.dtype)
    if x.dtype != torch.float32:
        y32 = tr.row_affine(x, shift, a, b, out_dtype=torch.float32)
        tol = STAT_TOL[x.dtype] if x.dtype != torch.float64 else 2e-6
        errors += _check('affine(out_dtype=float32)', y32, want_y, tol,
                         torch.float32)

    sum_dy, sum_dyxc = tr.row_grad_sums(dy, x, shift)
    errors += _check('sum_dy', sum_dy, dy64.sum(dim=2).reshape(-1),
                     STAT_TOL[x.dtype], acc,
                     scale=dy64.abs().sum(dim=2).reshape(-1))
    terms = dy64 * (x64 - s64)
    errors += _check('sum_dy_xc', sum_dyxc, terms.sum(dim=2).reshape(-1),
                     STAT_TOL[x.dtype], acc,
                     scale=terms.abs().sum(dim=2).reshape(-1))

    for name, pair in (('moments', (mean, var)),
                       ('grad_sums', (sum_dy, sum_dyxc))):
        if (pair[0].untyped_storage().data_ptr()
                == pair[1].untyped_storage().data_ptr()):
            errors.append(f'{name}: the two outputs share storage')

    dx = tr.row_grad_input(dy, x, shift, a, b, cc)
    want_dx = dy64 * col(a) + (x64 - s64) * col(b) + col(cc)
    errors += _check('grad_input', dx, want_dx, OUT_TOL[x.dtype], x.dtype)
    if x.dtype == torch.float32:
        dx16 = tr.row_grad_input(dy, x, shift, a, b, cc,
                                 out_dtype=torch.bfloat16)
        errors += _check('grad_input(out_dtype=bfloat16)', dx16, want_dx,
                         OUT_TOL[torch.bfloat16], torch.bfloat16)
    return [f'{label}: {e}' for e in errors]


def _layouts(device: str, dtype: torch.dtype) -> dict[str, Callable]:
    """Named builders of (x, dy) pairs covering the shapes and strides."""

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64).to(device, dtype)

    def plain(shape):
        return lambda: (rand(*shape), rand(*shape))

    def sliced():
        x = rand(3, 11, 53)[:, 1::2, 3:44]  # (3, 5, 41), strides (583, 106, 1)
        return x, rand(3, 5, 41)

    def expanded_dy():  # autograd's gradient of y.sum()
        x = rand(2, 6, 29)
        return x, torch.ones((), dtype=dtype, device=device).expand(2, 6, 29)

    def expanded_x():  # one sample broadcast over the batch: stride 0
        x = rand(1, 4, 33).expand(3, 4, 33)
        return x, rand(1, 1, 33).expand(3, 4, 33)

    def channels_last():
        x = rand(2, 48, 5, 7).contiguous(memory_format=torch.channels_last)
        dy = rand(2, 48, 5, 7).contiguous(memory_format=torch.channels_last)
        return x.view(2, 48, 35), dy.view(2, 48, 35)

    def channels_last_mixed():  # channels_last x, contiguous dy
        x = rand(3, 20, 4, 3).contiguous(memory_format=torch.channels_last)
        return x.view(3, 20, 12), rand(3, 20, 12)

    def transposed():  # rows strided, columns not contiguous
        return rand(9, 2, 5).permute(1, 2, 0), rand(2, 5, 9)

    def dy_float32():  # a gradient in another dtype than x
        return rand(2, 3, 45), torch.randn(2, 3, 45).to(device)

    return {
        'one_element_rows': plain((2, 3, 1)),
        'nc_input': plain((7, 13, 1)),
        'non_pow2': plain((3, 5, 37)),
        'long_rows_split': plain((1, 2, 70_000)),
        'long_rows_mid': plain((2, 3, 9_001)),
        'many_short_rows': plain((4, 750, 5)),
        'sliced': sliced,
        'expanded_dy': expanded_dy,
        'expanded_x': expanded_x,
        'channels_last': channels_last,
        'channels_last_mixed': channels_last_mixed,
        'transposed': transposed,
        'dy_float32': dy_float32,
    }


DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Layouts left out per dtype under the interpreter, where long rows cost
# seconds: the long and many-row cases run in float32 (all), float16 and
# bfloat16 (the split one); float64 runs the short ones.
INTERPRETER_SKIPS = {
    torch.float16: ('long_rows_mid',),
    torch.bfloat16: ('long_rows_mid', 'many_short_rows'),
    torch.float64: ('long_rows_split', 'long_rows_mid', 'many_short_rows'),
}


def correctness(device: str, dtypes=DTYPES,
                names: Optional[list[str]] = None,
                skips: Optional[dict] = None) -> list[str]:
    """Every layout (or those in ``names``) in every dtype but ``skips``;
    returns the failures."""
    errors = []
    for dtype in dtypes:
        for name, build in _layouts(device, dtype).items():
            if names is not None and name not in names:
                continue
            if name in (skips or {}).get(dtype, ()):
                continue
            torch.manual_seed(sum(map(ord, name)))
            x, dy = build()
            errors += check_all_passes(x, dy, f'{name}/{dtype}')
    return errors


def looping_grid(device: str) -> list[str]:
    """Few programs looping over many row tiles and column tiles, with the
    int64 offsets forced on (as for inputs beyond 2**31 elements)."""
    saved = tr.INTERPRET_PROGRAMS, tr._needs_int64
    tr.INTERPRET_PROGRAMS = (4, 3)
    tr._needs_int64 = lambda tensors: True
    try:
        errors = []
        for shape in ((4, 750, 5), (1, 3, 20_000)):
            x = torch.randn(*shape).to(device)
            errors += check_all_passes(x, torch.randn(*shape).to(device),
                                       f'looping_int64/{shape}')
        return errors
    finally:
        tr.INTERPRET_PROGRAMS, tr._needs_int64 = saved


def empty(device: str) -> list[str]:
    """Empty inputs give empty (or zero-sum) outputs without a launch."""
    errors = []
    for shape in ((0, 4, 9), (2, 0, 9), (2, 3, 0)):
        x = torch.randn(*shape, device=device)
        s = torch.zeros(shape[0] * shape[1], device=device)
        if shape[2]:
            mean, var = tr.row_moments(x)
            if mean.shape != (0,) or var.shape != (0,):
                errors.append(f'empty {shape}: moments {mean.shape}')
        y = tr.row_affine(x, s, s, s)
        dx = tr.row_grad_input(x, x, s, s, s, s)
        sdy, sdyx = tr.row_grad_sums(x, x, s)
        if y.shape != shape or dx.shape != shape:
            errors.append(f'empty {shape}: outputs {y.shape} {dx.shape}')
        if sdy.shape != s.shape or sdy.abs().sum() or sdyx.abs().sum():
            errors.append(f'empty {shape}: sums {sdy} {sdyx}')
    return errors


def precision(device: str, cpu_ops=None, ratio: float = 1e4,
              shape=(2, 2, 70_000)) -> tuple[list[str], dict]:
    """float32 rows whose mean is ``ratio`` standard deviations from zero:
    relative error of the variance and of ``sum dy (x - mean)`` against
    float64, bounded, and no worse than the CPU kernel's (``cpu_ops`` =
    ``torch.ops.mmnorm`` when it loads)."""
    gen = torch.Generator().manual_seed(7)
    x = (ratio + torch.randn(*shape, generator=gen,
                             dtype=torch.float64)).float()
    dy = torch.randn(*shape, generator=gen, dtype=torch.float64).float()
    x64, dy64 = x.double(), dy.double()
    want_var = x64.var(dim=2, unbiased=False).reshape(-1)
    shift = x64.mean(dim=2).reshape(-1).float()
    want_sum = (dy64 * (x64 - shift.double().view(*shape[:2], 1))).sum(
        dim=2).reshape(-1)

    def errs(var, sdyx):
        return (float(((var.double().cpu() - want_var) / want_var)
                      .abs().max()),
                _rel(sdyx.cpu(), want_sum))

    _, var = tr.row_moments(x.to(device))
    _, sdyx = tr.row_grad_sums(dy.to(device), x.to(device), shift.to(device))
    got = errs(var, sdyx)
    report = {'ratio': ratio, 'triton_var': got[0], 'triton_sum': got[1]}
    errors = []
    if not got[0] < 1e-4 or not got[1] < 1e-4:
        errors.append(f'precision at {ratio}: {got}')
    if cpu_ops is not None:
        rows = x.reshape(-1, shape[2])
        _, cvar = cpu_ops.row_moments(rows)
        _, csum = cpu_ops.row_grad_sums(dy.reshape(-1, shape[2]), rows,
                                        shift)
        ref = errs(cvar, csum)
        report.update(cpu_var=ref[0], cpu_sum=ref[1])
        # As good as the CPU kernel (up to a rounding-level floor).
        for what, mine, theirs in (('var', got[0], ref[0]),
                                   ('sum_dy_xc', got[1], ref[1])):
            if not mine <= max(theirs, 1e-6):
                errors.append(f'precision at {ratio}: {what} error {mine:.3g}'
                              f' worse than the CPU kernel {theirs:.3g}')
    return errors, report


def errors_raised(device: str) -> list[str]:
    """Bad arguments raise errors naming the function and the argument."""
    x = torch.randn(2, 3, 4, device=device)
    s = torch.zeros(6, device=device)
    calls = {
        'x': lambda: tr.row_moments(x[0]),
        'shift': lambda: tr.row_affine(x, s[:5], s, s),
        'dy': lambda: tr.row_grad_sums(x[:1], x, s),
        'out_dtype': lambda: tr.row_affine(x, s, s, s,
                                           out_dtype=torch.int32),
    }
    errors = []
    for arg, call in calls.items():
        try:
            call()
        except (ValueError, TypeError) as error:
            if arg not in str(error) or 'triton_rows' not in str(error):
                errors.append(f'unclear error for {arg}: {error}')
        else:
            errors.append(f'no error for a bad {arg}')
    return errors


_SYNC_OPS = ('_local_scalar_dense', 'item', 'nonzero', 'is_nonzero',
             'equal', 'tolist')


def no_host_syncs(device: str) -> list[str]:
    """The launchers read no tensor value on the host: on CUDA,
    ``torch.cuda.set_sync_debug_mode('error')`` around every pass (split
    and unsplit); everywhere, a dispatch mode counting the ops that read a
    tensor's value back (``.item()``, ``nonzero``, ...)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Count(TorchDispatchMode):

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in _SYNC_OPS:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    def run_all():
        for shape in ((3, 5, 37), (1, 2, 9_000)):
            x = torch.randn(*shape, device=device)
            dy = torch.randn(*shape, device=device)
            s = torch.zeros(shape[0] * shape[1], device=device)
            tr.row_moments(x)
            tr.row_affine(x, s, s, s)
            tr.row_grad_sums(dy, x, s)
            tr.row_grad_input(dy, x, s, s, s, s)

    errors = []
    cuda = torch.device(device).type == 'cuda'
    if cuda:
        run_all()  # compile first: the first launch may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
    try:
        with Count():
            run_all()
    except RuntimeError as error:
        errors.append(f'a launcher synchronised: {error}')
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    if seen:
        errors.append(f'host reads in the launchers: {sorted(set(seen))}')
    return errors


def beyond_int32(device: str) -> list[str]:
    """float16 ``(2, 16, 2**26 + 3)``: more than 2**31 elements, so the
    launchers take int64 offsets; every pass checked row by row against
    float64 (a few rows, to bound the reference's memory)."""
    n, c, m = 2, 16, 2**26 + 3
    x = torch.empty(n, c, m, device=device, dtype=torch.float16)
    x.normal_(3.0, 1.0)
    dy = x.flip(2)  # a second big tensor (flip copies)
    rows = n * c
    shift = torch.full((rows,), 3.0, device=device)
    coef = torch.linspace(0.5, 1.5, rows, device=device)
    if not tr._needs_int64([x]):
        return ['the test tensor does not need int64 offsets']
    mean, var = tr.row_moments(x)
    y = tr.row_affine(x, shift, coef, coef)
    sdy, sdyx = tr.row_grad_sums(dy, x, shift)
    dx = tr.row_grad_input(dy, x, shift, coef, coef, coef)
    errors = []
    for r in (0, 17, rows - 1):
        xr = x[r // c, r % c].double()
        gr = dy[r // c, r % c].double()
        a = float(coef[r])
        checks = {
            'mean': (mean[r], xr.mean(), 1e-6),
            'var': (var[r], xr.var(unbiased=False), 1e-5),
            'sum_dy': (sdy[r], gr.sum(), 1e-6 * float(gr.abs().sum())),
            'sum_dy_xc': (sdyx[r], (gr * (xr - 3.0)).sum(),
                          1e-6 * float((gr * (xr - 3.0)).abs().sum())),
        }
        for name, (got, want, tol) in checks.items():
            if not abs(float(got) - float(want)) <= tol * (
                    1 if name.startswith('sum') else abs(float(want))):
                errors.append(f'beyond_int32 row {r}: {name} {float(got)} '
                              f'vs {float(want)}')
        want_y = ((xr - 3.0) * a + a).half()
        want_dx = (gr * a + (xr - 3.0) * a + a).half()
        if not torch.equal(y[r // c, r % c], want_y):
            err = float((y[r // c, r % c].double() - want_y.double())
                        .abs().max())
            if err > 1e-2:
                errors.append(f'beyond_int32 row {r}: affine error {err}')
        err = float((dx[r // c, r % c].double() - want_dx.double())
                    .abs().max())
        if err > 2e-2:
            errors.append(f'beyond_int32 row {r}: grad_input error {err}')
    return errors
