"""Run mmnorm.ops.triton_rows under the Triton interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be set before this process imports Triton's
kernels (``@triton.jit`` reads it), so tests/test_ops_triton.py starts this
script in a subprocess. Prints one JSON object ``{"groups": {name:
[failures]}, "precision": [...], "seconds": ...}``; exits 1 on any failure.

Usage: TRITON_INTERPRET=1 python tests/triton_checks/interpret_check.py
"""
from __future__ import annotations

import json
import os
import sys
import time

if os.environ.get('TRITON_INTERPRET', '0') in ('', '0'):
    sys.exit('interpret_check.py needs TRITON_INTERPRET=1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import torch  # noqa: E402

from mmnorm.ops import _kernel  # noqa: E402
from triton_checks import cases  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    start = time.time()
    groups = {}
    for dtype in cases.DTYPES:
        groups[f'correctness/{dtype}'] = cases.correctness(
            'cpu', dtypes=(dtype,), skips=cases.INTERPRETER_SKIPS)
    groups['looping_grid_int64'] = cases.looping_grid('cpu')
    groups['empty'] = cases.empty('cpu')
    groups['errors'] = cases.errors_raised('cpu')
    groups['no_host_syncs'] = cases.no_host_syncs('cpu')
    cpu_ops = _kernel.load()
    reports = []
    for ratio in (300.0, 1e4):
        errors, report = cases.precision('cpu', cpu_ops, ratio)
        groups[f'precision/{ratio:g}'] = errors
        reports.append(report)
    # Without a C++ compiler the CPU kernel does not load; the precision
    # bounds against float64 still apply.
    print(json.dumps({'groups': groups, 'precision': reports,
                      'cpu_kernel': cpu_ops is not None,
                      'seconds': round(time.time() - start, 1)}))
    return 1 if any(groups.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
