"""Compile every kernel of mmnorm.ops.triton_rows for real CUDA targets.

Runs without a GPU (Triton's own LLVM and ptxas), in a process without
``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` gives no
compilable kernel). For each kernel and each dtype specialization the
launchers use, ``triton.compile`` must produce PTX and a cubin for sm_80
and sm_90; prints one JSON object with the results and exits 1 on any
failure.

Usage: python tests/triton_checks/compile_check.py [ARCH ...]
"""
from __future__ import annotations

import json
import os
import sys
import time

if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
    sys.exit('compile_check.py must run without TRITON_INTERPRET')

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from mmnorm.ops import triton_rows as tr  # noqa: E402

X_TYPES = ('fp16', 'bf16', 'fp32', 'fp64')


def _acc(x_type: str) -> str:
    return 'fp64' if x_type == 'fp64' else 'fp32'


def specializations():
    """(kernel, pointer types by argument, constexprs, num_warps)."""
    specs = []
    tile = {'BLOCK_R': 2, 'BLOCK_M': 2048}
    for xt in X_TYPES:
        acc = _acc(xt)
        # int32 offsets for every dtype; the int64 ones (inputs beyond
        # 2**31 elements) for float16, the dtype of such big inputs.
        for idx64 in (False, True) if xt == 'fp16' else (False,):
            for split in (False, True):
                specs.append((tr._moments_kernel,
                              {'x_ptr': xt, 'mean_ptr': acc,
                               'var_ptr': acc, 'k_ptr': acc},
                              {**tile, 'IDX64': idx64, 'SPLIT': split}, 8))
            specs.append((tr._grad_sums_kernel,
                          {'dy_ptr': xt, 'x_ptr': xt, 's_ptr': acc,
                           'sum_ptr': acc, 'sumx_ptr': acc},
                          {**tile, 'IDX64': idx64}, 8))
            specs.append((tr._affine_kernel,
                          {'x_ptr': xt, 's_ptr': acc, 'a_ptr': acc,
                           'b_ptr': acc, 'y_ptr': xt},
                          {**tile, 'IDX64': idx64,
                           'ACC64': xt == 'fp64'}, 8))
            specs.append((tr._grad_input_kernel,
                          {'dy_ptr': xt, 'x_ptr': xt, 's_ptr': acc,
                           'a_ptr': acc, 'b_ptr': acc, 'c_ptr': acc,
                           'dx_ptr': xt},
                          {**tile, 'IDX64': idx64,
                           'ACC64': xt == 'fp64'}, 8))
        if xt == 'fp16':
            # Triton turns integer arguments equal to 1 into constants:
            # contiguous rows (stride 1), channels_last (channel stride 1),
            # rows of one element, a single row or part.
            ones = (('sxM',), ('sxC',), ('M', 'chunk', 'S', 'sxM', 'sxC'))
            for names in ones:
                one = dict.fromkeys(names, 1)
                specs.append((tr._moments_kernel,
                              {'x_ptr': xt, 'mean_ptr': acc,
                               'var_ptr': acc, 'k_ptr': acc},
                              {**tile, **one, 'IDX64': False,
                               'SPLIT': False}, 8))
                specs.append((tr._affine_kernel,
                              {'x_ptr': xt, 's_ptr': acc, 'a_ptr': acc,
                               'b_ptr': acc, 'y_ptr': xt},
                              {**tile, **{k: 1 for k in names
                                          if k in ('sxM', 'sxC', 'M')},
                               'IDX64': False, 'ACC64': False}, 8))
            for names in (('sgM', 'sxM'), ('M', 'chunk', 'S')):
                specs.append((tr._grad_sums_kernel,
                              {'dy_ptr': xt, 'x_ptr': xt, 's_ptr': acc,
                               'sum_ptr': acc, 'sumx_ptr': acc},
                              {**tile, **dict.fromkeys(names, 1),
                               'IDX64': False}, 8))
            specs.append((tr._grad_input_kernel,
                          {'dy_ptr': xt, 'x_ptr': xt, 's_ptr': acc,
                           'a_ptr': acc, 'b_ptr': acc, 'c_ptr': acc,
                           'dx_ptr': xt},
                          {**tile, 'sgM': 1, 'sxM': 1, 'IDX64': False,
                           'ACC64': False}, 8))
        if xt in ('fp32', 'fp64'):  # combining runs in the stats' dtype
            specs.append((tr._combine_moments_kernel,
                          {'k_ptr': acc, 'pmean_ptr': acc, 'pvar_ptr': acc,
                           'mean_ptr': acc, 'var_ptr': acc},
                          {'BLOCK_R': 4, 'BLOCK_S': 256}, 4))
    return specs


def _source(kernel, pointers: dict, constexprs: dict):
    """An ASTSource for this Triton: 3.3+ takes every argument in the
    signature ('constexpr' for the constexprs) and constexprs by name;
    older ones want them by index only."""
    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = 'constexpr'
        elif name in pointers:
            signature[name] = '*' + pointers[name]
        else:
            signature[name] = 'i32'
    try:
        return triton.compiler.ASTSource(fn=kernel, signature=signature,
                                         constexprs=constexprs)
    except (TypeError, AssertionError, ValueError):
        by_index = {(names.index(k),): v for k, v in constexprs.items()}
        plain = {k: v for k, v in signature.items() if v != 'constexpr'}
        return triton.compiler.ASTSource(fn=kernel, signature=plain,
                                         constexprs=by_index)


def main(archs: list[int]) -> int:
    results = []
    failed = 0
    for arch in archs:
        target = GPUTarget('cuda', arch, 32)
        for kernel, pointers, constexprs, warps in specializations():
            label = (f'{kernel.__name__}[{",".join(pointers.values())}]'
                     f'{constexprs} sm_{arch}')
            start = time.time()
            try:
                compiled = triton.compile(
                    _source(kernel, pointers, constexprs), target=target,
                    options={'num_warps': warps})
                ptx = compiled.asm.get('ptx', '')
                cubin = compiled.asm.get('cubin', b'')
                ok = ('.entry' in ptx and f'sm_{arch}' in ptx
                      and len(cubin) > 0)
                error = None if ok else 'no PTX entry or cubin'
            except Exception as exc:  # report every failure, not the first
                ok, error = False, f'{type(exc).__name__}: {exc}'[:2000]
            failed += not ok
            results.append({'kernel': label, 'ok': ok, 'error': error,
                            'seconds': round(time.time() - start, 2)})
    print(json.dumps({'triton': triton.__version__, 'failed': failed,
                      'results': results}))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main([int(a) for a in sys.argv[1:]] or [80, 90]))
