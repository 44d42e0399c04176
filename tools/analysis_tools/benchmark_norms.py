"""Benchmark mmnorm's SN against BatchNorm, GroupNorm and a straightforward SN.

Measures, at ResNet-50 activation shapes, the forward time (training mode),
the forward+backward time and the bytes autograd keeps for backward, and
reports ratios taken within the same run:

* SN forward+backward / GroupNorm(32) forward+backward   (target <= 1.5)
* straightforward SN forward+backward / SN               (target >= 3)
* bytes saved for backward by SN / input bytes           (target <= 1.2)

The straightforward SN is the authors' formulation written with plain
autograd tensor operations (IN moments, LN/BN derived, softmax mixing,
normalize), i.e. what a user gets from the original research code.

Protocol: fp32, ``--threads`` threads (default 2), warm-up runs, then
``--repeats`` interleaved rounds (each round times every implementation
once, in turn) and the median per implementation (``--statistic min``:
the fastest run, a steadier estimate on a machine shared with other
work).

mmnorm layers run on its compiled CPU kernel (``mmnorm/ops/csrc``) when it
is available; ``--composed`` also times them on the composed PyTorch path
(the kernel switched off around their forward), in the same rounds, for
before/after ratios.

    python tools/analysis_tools/benchmark_norms.py [--check] [--composed]
        [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

from mmnorm import SparseSwitchableNorm, SwitchableNorm
from mmnorm.ops import _kernel

SHAPES = [(8, 64, 56, 56), (2, 256, 100, 152), (16, 512, 14, 14)]
TARGETS = dict(sn_vs_gn=1.5, naive_vs_sn=3.0, saved_vs_input=1.2,
               fixed_vs_native=1.25)
# fixed SSN layer (mean source == variance source) vs the native module
FIXED = {'BN': (2, lambda c: nn.BatchNorm2d(c)),
         'IN': (0, lambda c: nn.InstanceNorm2d(c, affine=True)),
         'LN': (1, lambda c: nn.GroupNorm(1, c))}


class StraightforwardSN(nn.Module):
    """SN as the authors' code computes it, differentiated by autograd."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.view(n, c, -1)
        mean_in = flat.mean(-1, keepdim=True)
        var_in = flat.var(-1, keepdim=True)
        second = var_in + mean_in ** 2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = second.mean(1, keepdim=True) - mean_ln ** 2
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = second.mean(0, keepdim=True) - mean_bn ** 2
        wm = torch.softmax(self.mean_weight, 0)
        wv = torch.softmax(self.var_weight, 0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        out = (flat - mean) / (var + self.eps).sqrt()
        return out.view(n, c, h, w) * self.weight + self.bias


class ComposedPath(nn.Module):
    """Runs an mmnorm layer with the compiled kernel switched off: the
    composed PyTorch path (the backward follows the forward's choice)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enabled, _kernel.ENABLED = _kernel.ENABLED, False
        try:
            return self.layer(x)
        finally:
            _kernel.ENABLED = enabled


def fixed_ssn(channels: int, source: int) -> SparseSwitchableNorm:
    layer = SparseSwitchableNorm(channels)
    layer.mean_choice.fill_(source)
    layer.var_choice.fill_(source)
    return layer


def implementations(channels: int) -> dict[str, nn.Module]:
    return {
        'SN (mmnorm)': SwitchableNorm(channels),
        'BatchNorm2d': nn.BatchNorm2d(channels),
        'GroupNorm(32)': nn.GroupNorm(32, channels),
        'SN (straightforward)': StraightforwardSN(channels),
    }


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    del y
    return sum(storages.values())


def _timer(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_shape(shape: tuple[int, ...], repeats: int, warmup: int,
                composed: bool = False, statistic: str = 'median') -> dict:
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    mods = implementations(shape[1])
    if composed:
        mods['SN (composed path)'] = ComposedPath(SwitchableNorm(shape[1]))
    for name, (source, native) in FIXED.items():
        mods[f'SSN fixed {name}'] = fixed_ssn(shape[1], source)
        if composed:
            mods[f'SSN fixed {name} (composed path)'] = ComposedPath(
                fixed_ssn(shape[1], source))
        mods[f'native {name}'] = native(shape[1])

    def forward(m):
        return lambda: m(x)

    def forward_backward(m):
        def run():
            x.grad = None
            m.zero_grad(set_to_none=True)
            m(x).backward(grad)
        return run

    fwd = {k: [] for k in mods}
    fwdbwd = {k: [] for k in mods}
    for _ in range(warmup):
        for m in mods.values():
            forward_backward(m)()
    for _ in range(repeats):
        for name, m in mods.items():
            fwd[name].append(_timer(forward(m)))
            fwdbwd[name].append(_timer(forward_backward(m)))
    input_bytes = x.numel() * x.element_size()
    pick = min if statistic == 'min' else statistics.median
    rows = {}
    for name, m in mods.items():
        rows[name] = dict(forward_ms=1e3 * pick(fwd[name]),
                          fwd_bwd_ms=1e3 * pick(fwdbwd[name]),
                          saved_vs_input=saved_bytes(m, x) / input_bytes)
    sn = rows['SN (mmnorm)']
    ratios = dict(
        sn_vs_gn=sn['fwd_bwd_ms'] / rows['GroupNorm(32)']['fwd_bwd_ms'],
        sn_vs_bn=sn['fwd_bwd_ms'] / rows['BatchNorm2d']['fwd_bwd_ms'],
        naive_vs_sn=rows['SN (straightforward)']['fwd_bwd_ms']
        / sn['fwd_bwd_ms'],
        saved_vs_input=sn['saved_vs_input'])
    for name in FIXED:
        ratios[f'fixed_{name}_vs_native'] = (
            rows[f'SSN fixed {name}']['fwd_bwd_ms']
            / rows[f'native {name}']['fwd_bwd_ms'])
    if composed:
        # informational: the composed path against the same baselines
        ratios['composed_sn_vs_gn'] = (
            rows['SN (composed path)']['fwd_bwd_ms']
            / rows['GroupNorm(32)']['fwd_bwd_ms'])
        for name in FIXED:
            ratios[f'composed_fixed_{name}_vs_native'] = (
                rows[f'SSN fixed {name} (composed path)']['fwd_bwd_ms']
                / rows[f'native {name}']['fwd_bwd_ms'])
    return dict(shape=list(shape), rows=rows, ratios=ratios)


def meets_targets(ratios: dict) -> dict[str, bool]:
    met = dict(
        sn_vs_gn=ratios['sn_vs_gn'] <= TARGETS['sn_vs_gn'],
        naive_vs_sn=ratios['naive_vs_sn'] >= TARGETS['naive_vs_sn'],
        saved_vs_input=ratios['saved_vs_input'] <= TARGETS['saved_vs_input'])
    for name in FIXED:
        key = f'fixed_{name}_vs_native'
        met[key] = ratios[key] <= TARGETS['fixed_vs_native']
    return met


def report(result: dict) -> str:
    shape = 'x'.join(map(str, result['shape']))
    lines = [f'\n## {shape}',
             '| implementation | forward ms | fwd+bwd ms | saved / input |',
             '|---|---|---|---|']
    for name, row in result['rows'].items():
        lines.append(f"| {name} | {row['forward_ms']:.2f} | "
                     f"{row['fwd_bwd_ms']:.2f} | "
                     f"{row['saved_vs_input']:.2f} |")
    r, ok = result['ratios'], meets_targets(result['ratios'])
    mark = {True: 'ok', False: 'MISSED'}
    lines += [
        '',
        f"SN / GroupNorm fwd+bwd: {r['sn_vs_gn']:.2f} (target <= 1.5, "
        f"{mark[ok['sn_vs_gn']]});  SN / BatchNorm: {r['sn_vs_bn']:.2f}",
        f"straightforward / SN fwd+bwd: {r['naive_vs_sn']:.2f} "
        f"(target >= 3, {mark[ok['naive_vs_sn']]})",
        f"SN saved for backward / input: {r['saved_vs_input']:.2f} "
        f"(target <= 1.2, {mark[ok['saved_vs_input']]})"]
    for name in FIXED:
        key = f'fixed_{name}_vs_native'
        lines.append(f'fixed SSN ({name}, {name}) / native {name} fwd+bwd: '
                     f'{r[key]:.2f} (target <= 1.25, {mark[ok[key]]})')
    if 'composed_sn_vs_gn' in r:
        fixed = ', '.join(f"{name} {r[f'composed_fixed_{name}_vs_native']:.2f}"
                          for name in FIXED)
        lines.append(f"composed path (kernel off): SN / GroupNorm "
                     f"{r['composed_sn_vs_gn']:.2f}; fixed SSN / native "
                     f"{fixed}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--shapes', nargs='*', default=None,
                        help='shapes like 8x64x56x56 (default: ResNet-50)')
    parser.add_argument('--out', help='also write the results as JSON')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 if a target is missed')
    parser.add_argument('--statistic', choices=('median', 'min'),
                        default='median',
                        help='per-implementation time over the rounds')
    parser.add_argument('--composed', action='store_true',
                        help='also time mmnorm layers on the composed '
                        'PyTorch path (compiled kernel off)')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')
    torch.set_num_threads(args.threads)
    shapes = ([tuple(int(v) for v in s.split('x')) for s in args.shapes]
              if args.shapes else SHAPES)
    kernel = 'on' if _kernel.get() is not None else 'UNAVAILABLE'
    print(f'# Normalization benchmark: torch {torch.__version__}, '
          f'{args.threads} threads, fp32, {args.statistic} of '
          f'{args.repeats} interleaved runs after {args.warmup} warm-up '
          f'runs; mmnorm kernel {kernel}')
    results = []
    for shape in shapes:
        result = bench_shape(shape, args.repeats, args.warmup, args.composed,
                             args.statistic)
        results.append(result)
        print(report(result), flush=True)
    all_ok = all(all(meets_targets(r['ratios']).values()) for r in results)
    print(f"\nAll targets met: {'yes' if all_ok else 'NO'}")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(torch=torch.__version__, threads=args.threads,
                           repeats=args.repeats, statistic=args.statistic,
                           kernel=kernel,
                           results=results), f,
                      indent=2)
    return 0 if all_ok or not args.check else 1


if __name__ == '__main__':
    sys.exit(main())
