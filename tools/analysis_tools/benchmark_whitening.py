"""Benchmark mmnorm's Switchable Whitening against BatchNorm2d, SN and a
straightforward autograd SW.

At the shapes where the SW ResNet whitens inside a Faster/Mask R-CNN
R50-FPN (the 3x3-conv norms of stages 1-3; 2 images of 800 x 1216 by
default, group size 16, ``sw_type=2``, ``T=5``) it measures the forward
time (training mode), the forward+backward time and the bytes autograd
keeps for backward, and reports ratios taken within the same run:

* straightforward SW forward+backward / mmnorm SW     (target >= 2)
* bytes saved for backward by SW / input bytes         (target <= 1.2; the
  ``(N, G, c, c)`` whitening matrices are included)
* mmnorm SW / BatchNorm2d and SW / SN forward+backward (reported)

The straightforward SW is the formulation of the authors' code with plain
autograd tensor operations: BW statistics from the ``(G, c, N*HW)`` view
and IW statistics from the ``(N*G, c, HW)`` view, each centred and
multiplied out, the mixture, Newton's iteration as printed, the whitening
product and the affine map.

Protocol: warm-up, then ``--repeats`` interleaved rounds (each round times
every implementation once, in turn), median (``--statistic min``: fastest)
per implementation. CPU by default (``--threads``, default 2); on a GPU
(``--device cuda --dtype float32 float16 bfloat16``) with CUDA events,
half tensors fed as they are (mmnorm computes the statistics in float32;
the straightforward SW casts to float32 to do the same).

    python tools/analysis_tools/benchmark_whitening.py [--out FILE]
    python tools/analysis_tools/benchmark_whitening.py --device cuda \
        --dtype float32 bfloat16

``benchmark_norms.py`` calls :func:`main`; :func:`run` returns the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, '..', '..'))  # mmnorm of this checkout
sys.path.insert(0, _HERE)  # the SN benchmark's helpers

import torch  # noqa: E402
from benchmark_norms import saved_bytes  # noqa: E402
from torch import nn  # noqa: E402

from mmnorm import SwitchableNorm, SwitchableWhitening  # noqa: E402

#: (N, C, H, W) of the SW layers of ResNetSW-50 in Faster R-CNN at
#: 800 x 1216 with 2 images: stage 1 (stride 4), 2 (8), 3 (16)
SHAPES = [(2, 64, 200, 304), (2, 128, 100, 152), (2, 256, 50, 76)]
GROUP = 16
TARGETS = dict(straightforward_vs_sw=2.0, saved_vs_input=1.2)
DTYPES = {'float32': torch.float32, 'float16': torch.float16,
          'bfloat16': torch.bfloat16}


class StraightforwardSW(nn.Module):
    """SW (``sw_type=2``) as the authors' code computes it, differentiated
    by autograd."""

    def __init__(self, num_features: int, group: int = GROUP, T: int = 5,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.c, self.T, self.eps = group, T, eps
        self.weight = nn.Parameter(torch.ones(num_features, 1))
        self.bias = nn.Parameter(torch.zeros(num_features, 1))
        self.mean_weight = nn.Parameter(torch.ones(2))
        self.var_weight = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        n, ch, h, w = x.shape
        c, g = self.c, ch // self.c
        eye = torch.eye(c, device=x.device)
        # batch whitening statistics on (G, c, N*HW)
        xb = x.view(n, g, c, h * w).permute(1, 2, 0, 3).reshape(g, c, -1)
        mean_bw = xb.mean(-1, keepdim=True)
        xbc = xb - mean_bw
        cov_bw = torch.baddbmm(self.eps * eye, xbc, xbc.transpose(1, 2),
                               alpha=1.0 / xb.shape[-1])
        # instance whitening statistics on (N*G, c, HW)
        xi = x.view(n * g, c, h * w)
        mean_iw = xi.mean(-1, keepdim=True)
        xic = xi - mean_iw
        cov_iw = torch.baddbmm(self.eps * eye, xic, xic.transpose(1, 2),
                               alpha=1.0 / (h * w))
        wm = self.mean_weight.softmax(0)
        wv = self.var_weight.softmax(0)
        mean = (wm[0] * mean_bw.unsqueeze(0)
                + wm[1] * mean_iw.view(n, g, c, 1)).view(n * g, c, 1)
        cov = (wv[0] * cov_bw.unsqueeze(0)
               + wv[1] * cov_iw.view(n, g, c, c)).view(n * g, c, c)
        trace = cov.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
        cov_n = cov / trace
        p = eye.expand(n * g, c, c)
        for _ in range(self.T):
            p = 1.5 * p - 0.5 * torch.bmm(torch.bmm(torch.bmm(p, p), p),
                                          cov_n)
        wm_ = p / trace.sqrt()
        out = torch.bmm(wm_, xi - mean).view(n, ch, h * w)
        out = out * self.weight + self.bias
        return out.view(n, ch, h, w).to(dtype)


def implementations(channels: int) -> dict[str, nn.Module]:
    return {
        'SW (mmnorm)': SwitchableWhitening(channels, num_pergroup=GROUP),
        'SW (straightforward)': StraightforwardSW(channels),
        'BatchNorm2d': nn.BatchNorm2d(channels),
        'SN (mmnorm)': SwitchableNorm(channels),
    }


class _Clock:
    """Wall time on the CPU; CUDA events (synchronized per call) on a
    GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __call__(self, fn: Callable[[], None]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def bench_shape(shape: tuple[int, ...], device: torch.device,
                dtype: torch.dtype, repeats: int, warmup: int = 2,
                statistic: str = 'median') -> dict:
    """Times and saved bytes of every implementation at one shape."""
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype)
    grad = torch.randn_like(x)
    layers = {name: m.to(device) for name, m in
              implementations(shape[1]).items()}
    clock = _Clock(device)

    def forward(m):
        return lambda: m(x)

    def forward_backward(m):
        def step():
            xr = x.detach().requires_grad_()
            m(xr).backward(grad)
        return step

    runs = {name: {'fwd': [], 'fwd_bwd': []} for name in layers}
    for round_ in range(warmup + repeats):
        for name, m in layers.items():
            for kind, make in (('fwd', forward), ('fwd_bwd',
                                                  forward_backward)):
                elapsed = clock(make(m))
                if round_ >= warmup:
                    runs[name][kind].append(elapsed)
    pick = statistics.median if statistic == 'median' else min
    input_bytes = x.numel() * x.element_size()
    times = {}
    for name, m in layers.items():
        xr = x.detach().requires_grad_()
        times[name] = dict(
            fwd_ms=pick(runs[name]['fwd']),
            fwd_bwd_ms=pick(runs[name]['fwd_bwd']),
            saved_over_input=saved_bytes(m, xr) / input_bytes)
    sw = times['SW (mmnorm)']

    def ratio(name: str) -> float:
        return times[name]['fwd_bwd_ms'] / sw['fwd_bwd_ms']

    ratios = dict(
        straightforward_vs_sw=ratio('SW (straightforward)'),
        sw_vs_bn=1.0 / ratio('BatchNorm2d'),
        sw_vs_sn=1.0 / ratio('SN (mmnorm)'),
        saved_vs_input=sw['saved_over_input'],
        straightforward_saved_vs_input=times['SW (straightforward)'][
            'saved_over_input'])
    met = dict(
        straightforward_vs_sw=ratios['straightforward_vs_sw']
        >= TARGETS['straightforward_vs_sw'],
        saved_vs_input=ratios['saved_vs_input'] <= TARGETS['saved_vs_input'])
    return dict(device=str(device), dtype=str(dtype).replace('torch.', ''),
                shape=list(shape), group=GROUP, repeats=repeats,
                statistic=statistic, times=times, ratios=ratios,
                targets=TARGETS, targets_met=met)


def run(device: str = 'cpu', dtype: str = 'float32', repeats: int = 7,
        shapes: Optional[list] = None, statistic: str = 'median'
        ) -> list[dict]:
    """One row (a dict) per shape; see :func:`bench_shape`."""
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_whitening: --device cuda but CUDA is '
                         'not available')
    if dtype not in DTYPES:
        raise SystemExit(f'benchmark_whitening: --dtype must be one of '
                         f'{sorted(DTYPES)}, got {dtype!r}')
    return [bench_shape(tuple(s), dev, DTYPES[dtype], repeats,
                        statistic=statistic) for s in (shapes or SHAPES)]


def report(rows: list[dict]) -> str:
    lines = ['| device | dtype | shape | SW | straightforward SW | '
             'BatchNorm2d | SN | straightforward / SW | SW / BN | '
             'SW / SN | saved / input |', '|' + '---|' * 11]
    for r in rows:
        t, q = r['times'], r['ratios']
        lines.append(
            f"| {r['device']} | {r['dtype']} | "
            f"{'x'.join(map(str, r['shape']))} | "
            f"{t['SW (mmnorm)']['fwd_bwd_ms']:.2f} | "
            f"{t['SW (straightforward)']['fwd_bwd_ms']:.2f} | "
            f"{t['BatchNorm2d']['fwd_bwd_ms']:.2f} | "
            f"{t['SN (mmnorm)']['fwd_bwd_ms']:.2f} | "
            f"{q['straightforward_vs_sw']:.2f} | {q['sw_vs_bn']:.2f} | "
            f"{q['sw_vs_sn']:.2f} | {q['saved_vs_input']:.2f} "
            f"(straightforward: "
            f"{q['straightforward_saved_vs_input']:.2f}) |")
    lines.append('forward+backward ms; ratios within the same run; '
                 f'targets {TARGETS}')
    return '\n'.join(lines)


def main(argv: Optional[list] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', nargs='+', default=['float32'],
                        choices=sorted(DTYPES))
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed rounds (default 7 on CPU, 20 on GPU)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--statistic', choices=('median', 'min'),
                        default='median')
    parser.add_argument('--shape', type=int, nargs=4, action='append',
                        help='N C H W (repeatable; default: the detection '
                        'shapes)')
    parser.add_argument('--out', help='write the rows as JSON')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (20 if args.device.startswith('cuda') else 7)
    rows = []
    for dtype in args.dtype:
        rows += run(args.device, dtype, repeats, args.shape, args.statistic)
    print(report(rows))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == '__main__':
    main()
