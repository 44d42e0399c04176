"""Bandwidth of the Triton row kernels on a CUDA GPU (for the GPU check).

:func:`benchmark_rows` times each pass with CUDA events and reports the
bytes it must move (each big tensor once, see docs/triton_kernels.md), the
time, and the achieved bandwidth, beside ``torch.var_mean`` over the rows
as a stock reference for the moments pass. Nothing here runs in the
default test suite.

Usage: python tests/triton_checks/bench.py [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

# (N, C, M): detection (FPN P2 at 800x1333 / 4), segmentation, classification,
# video, 1x1 maps, few long rows.
SHAPES = ((2, 256, 200 * 336), (8, 512, 64 * 128), (32, 256, 56 * 56),
          (8, 64, 8 * 56 * 56), (256, 2048, 1), (2, 2, 1_000_000))


def _time(fn, warmup: int = 3, iters: int = 20) -> float:
    """Milliseconds per call (median of ``iters``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _passes(tr, x, dy, s) -> dict:
    """name -> (call, bytes it must move) for one input."""
    big = x.numel() * x.element_size()
    return {
        'moments': (lambda: tr.row_moments(x), big),
        'affine': (lambda: tr.row_affine(x, s, s, s), 2 * big),
        'grad_sums': (lambda: tr.row_grad_sums(dy, x, s), 2 * big),
        'grad_input': (lambda: tr.row_grad_input(dy, x, s, s, s, s),
                       3 * big),
        'torch_var_mean': (lambda: torch.var_mean(x, dim=2, correction=0),
                           big),
    }


def benchmark_rows(shapes=SHAPES, dtypes=(torch.float16, torch.bfloat16,
                                          torch.float32)) -> list[dict]:
    """One record per (shape, dtype, pass): bytes, ms, GB/s."""
    from mmnorm.ops import triton_rows as tr

    records = []
    for shape in shapes:
        n, c, m = shape
        rows = n * c
        for dtype in dtypes:
            x = torch.randn(*shape, device='cuda', dtype=dtype)
            dy = torch.randn(*shape, device='cuda', dtype=dtype)
            s = torch.randn(rows, device='cuda')
            passes = _passes(tr, x, dy, s)
            for name, (fn, nbytes) in passes.items():
                ms = _time(fn)
                records.append({'shape': list(shape), 'dtype': str(dtype),
                                'pass': name, 'bytes': nbytes,
                                'ms': round(ms, 4),
                                'GBps': round(nbytes / ms / 1e6, 1)})
            del x, dy, passes
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', help='write the records as JSON here')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print('bench.py needs a CUDA GPU', file=sys.stderr)
        return 2
    records = benchmark_rows()
    for r in records:
        print(f"{str(r['shape']):>22} {r['dtype']:>15} {r['pass']:>15} "
              f"{r['ms']:9.4f} ms {r['GBps']:8.1f} GB/s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)),
                    exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump({'device': torch.cuda.get_device_name(),
                       'torch': torch.__version__, 'records': records}, f,
                      indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
