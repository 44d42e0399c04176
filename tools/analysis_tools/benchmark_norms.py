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

On a GPU (``--device cuda``) the layers are timed with CUDA events
(warm-up, then the median of ``--repeats`` interleaved rounds, the L2
cache flushed before every timed call, ``torch.cuda.synchronize`` only
around the timed rounds) in each ``--dtype``: half tensors are fed as they
are to mmnorm and to the native modules alike (no autocast: under autocast
native ``group_norm`` runs in float32 and would make the casts that mmnorm
avoids). The cases are SN, learning and fixed SSN, SyncSN (one process),
KN and IBN against GroupNorm(32), BatchNorm, InstanceNorm and
GroupNorm(1, C), at detection, segmentation and video shapes
(:data:`CUDA_SHAPES`), with the GPU targets (:data:`CUDA_TARGETS`) judged
at the bandwidth-bound shapes (at least 4M elements). ``--network`` adds a
whole ResNet-50 training step (``resnet50_bench.py``) with SN, GN(32) or
BN everywhere (under autocast for half dtypes, as ``--amp`` trains).

Bytes model (``B`` = bytes of the ``(N, C, *)`` tensor; ``R``/``W`` a read
or a write of it): a two-pass normalisation needs at least forward 2R+1W
(statistics, then the affine output) and backward 4R+1W (row sums of
``dy`` and ``dy * x``, then ``dx`` from ``dy`` and ``x``), 8B for a
training step of the layer, which is what native GroupNorm moves. For
every CUDA row the report gives ``units``: the measured time times the
measured device-to-device copy bandwidth over ``B``, i.e. how many
tensor-sized transfers the time is worth, against that minimum of 3
(forward) and 8 (forward+backward).

    python tools/analysis_tools/benchmark_norms.py [--check] [--composed]
        [--out FILE]
    python tools/analysis_tools/benchmark_norms.py --device cuda \
        --dtype float32 float16 bfloat16 --network --out FILE
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))  # mmnorm from this checkout

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mmnorm import (  # noqa: E402
    IBN,
    KalmanNorm,
    SparseSwitchableNorm,
    SwitchableNorm,
    SyncSwitchableNorm,
)
from mmnorm.ops import _kernel  # noqa: E402

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


# --- GPU (and any-device) layer and network benchmark ---------------------

#: name -> shape of the GPU cases: ResNet-50 classification at batch 32,
#: detection at 800x1333 (FPN P2, C5, a mask head), segmentation at
#: 512x1024 (dilated stage 4, stage 1), I3D video clips; and small ones
CUDA_SHAPES = {
    'cls-res2 32x256x56x56': (32, 256, 56, 56),
    'cls-res5 32x2048x7x7': (32, 2048, 7, 7),
    'det-P2 2x256x200x336': (2, 256, 200, 336),
    'det-C5 2x2048x25x42': (2, 2048, 25, 42),
    'det-mask 256x256x14x14': (256, 256, 14, 14),
    'seg-D8 2x2048x64x128': (2, 2048, 64, 128),
    'seg-res2 2x256x128x256': (2, 256, 128, 256),
    'video-res2 4x256x16x56x56': (4, 256, 16, 56, 56),
    'video-res5 4x2048x4x7x7': (4, 2048, 4, 7, 7),
    'small 16x512x14x14': (16, 512, 14, 14),
}
#: GPU targets, judged where the tensor has at least BANDWIDTH_BOUND
#: elements; the ResNet-50 step target holds at every setting
CUDA_TARGETS = dict(sn_vs_gn=1.2, fixed_vs_native=1.1, network_sn_vs_gn=1.15)
BANDWIDTH_BOUND = 4 * 2 ** 20
#: a fixed SSN layer (mean source == variance source) -> native module name
FIXED_NATIVE = {'IN': 'InstanceNorm', 'LN': 'GroupNorm(1, C)',
                'BN': 'BatchNorm'}
NETWORK_SETTINGS = ('32x224', '2x800x1333')
MIN_UNITS = dict(forward=3, fwd_bwd=8)  # 2R+1W; + 4R+1W (see above)
DTYPES = {'float32': torch.float32, 'float16': torch.float16,
          'bfloat16': torch.bfloat16}


def _sibling(name: str) -> Optional[Any]:
    """Import ``tools/analysis_tools/<name>.py`` if it exists."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        f'{name}.py')
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location(f'_mmnorm_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_implementations(channels: int, dim: int) -> dict[str, nn.Module]:
    """Every case of the device benchmark for ``(N, channels, *)`` input
    of rank ``dim`` (IBN only for 4D: it is a 2D-image layer)."""
    bn = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[dim]
    inorm = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d,
             5: nn.InstanceNorm3d}[dim]
    mods = {'SN': SwitchableNorm(channels),
            'SSN (learning)': SparseSwitchableNorm(channels),
            'SyncSN (1 process)': SyncSwitchableNorm(channels),
            'KN': KalmanNorm(channels)}
    if dim == 4:
        mods['IBN'] = IBN(channels)
    for name, (source, _) in FIXED.items():
        mods[f'SSN fixed ({name}, {name})'] = fixed_ssn(channels, source)
    mods['GroupNorm(32)'] = nn.GroupNorm(32, channels)
    mods['BatchNorm'] = bn(channels)
    mods['InstanceNorm'] = inorm(channels, affine=True)
    mods['GroupNorm(1, C)'] = nn.GroupNorm(1, channels)
    return mods


class _Timer:
    """Times callables on ``device``: CUDA events on a GPU (the L2 cache
    flushed before each call), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.flush = (torch.empty(64 * 2 ** 20, dtype=torch.int32,
                                  device=device) if self.cuda else None)

    def run(self, fns: dict[str, Callable[[], None]], repeats: int,
            warmup: int) -> tuple[dict[str, list[float]], dict[str, str]]:
        """Milliseconds per call of each function over ``repeats``
        interleaved rounds, and the error of each that raised."""
        errors: dict[str, str] = {}
        for _ in range(max(warmup, 1)):
            for name, fn in list(fns.items()):
                try:
                    fn()
                except Exception as err:  # reported, not fatal
                    errors[name] = f'{type(err).__name__}: {err}'[:300]
                    del fns[name]
        if self.cuda:
            torch.cuda.synchronize()
        marks: dict[str, list] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                if self.cuda:
                    self.flush.zero_()
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    marks[name].append((start, end))
                else:
                    marks[name].append(1e3 * _timer(fn))
        if self.cuda:
            torch.cuda.synchronize()
            return ({name: [s.elapsed_time(e) for s, e in pairs]
                     for name, pairs in marks.items()}, errors)
        return marks, errors


def copy_bandwidth(device: torch.device) -> Optional[float]:
    """Device-to-device copy bandwidth in bytes/s (read + write), the
    median of 10 copies of 1 GiB; ``None`` off the GPU."""
    if device.type != 'cuda':
        return None
    src = torch.empty(2 ** 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times, _ = _Timer(device).run({'copy': lambda: dst.copy_(src)}, 10, 2)
    return 2 * src.numel() * 4 / (statistics.median(times['copy']) / 1e3)


def _judge(value: float, target: float, applies: bool) -> dict:
    return dict(value=value, target=target,
                passed=(value <= target) if applies else None)


def bench_device_shape(name: str, shape: tuple[int, ...],
                       device: torch.device, dtype: torch.dtype,
                       repeats: int, warmup: int,
                       bandwidth: Optional[float]) -> dict:
    """Forward and forward+backward time of every case at one shape."""
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    mods = {k: m.to(device) for k, m in
            device_implementations(shape[1], len(shape)).items()}
    notes: dict[str, str] = {}
    for key, m in mods.items():
        if key.startswith(('GroupNorm', 'InstanceNorm')) \
                and dtype != torch.float32:
            try:  # native modules with float32 affine on half input?
                m(x.detach())
            except RuntimeError:
                m.to(dtype)
                notes[key] = f'parameters in {dtype}'.replace('torch.', '')

    def forward(m):
        return lambda: m(x)

    def forward_backward(m):
        def run():
            x.grad = None
            m.zero_grad(set_to_none=True)
            m(x).backward(grad)
        return run

    fns = {}
    for key, m in mods.items():
        fns[(key, 'forward')] = forward(m)
        fns[(key, 'fwd_bwd')] = forward_backward(m)
    times, errors = _Timer(device).run(fns, repeats, warmup)
    big = x.numel() * x.element_size()
    rows: dict[str, dict] = {}
    for key in mods:
        row: dict[str, Any] = {}
        for kind in ('forward', 'fwd_bwd'):
            if (key, kind) in errors:
                row['error'] = errors[(key, kind)]
                continue
            ms = statistics.median(times[(key, kind)])
            row[f'{kind}_ms'] = ms
            if bandwidth:
                row[f'{kind}_units'] = ms / 1e3 * bandwidth / big
                row[f'{kind}_min_units'] = MIN_UNITS[kind]
        if key in notes:
            row['note'] = notes[key]
        rows[key] = row
    if device.type == 'cuda':
        from mmnorm.ops import dispatch
        backend = dispatch.backend_for(x)
    else:
        backend = 'cpu_kernel' if _kernel.get() is not None else 'composed'

    def ratio(a: str, b: str) -> Optional[float]:
        ta = rows[a].get('fwd_bwd_ms')
        tb = rows[b].get('fwd_bwd_ms')
        return None if ta is None or tb is None else ta / tb

    bound = x.numel() >= BANDWIDTH_BOUND
    ratios = dict(sn_vs_gn=ratio('SN', 'GroupNorm(32)'),
                  sn_vs_bn=ratio('SN', 'BatchNorm'),
                  syncsn_vs_sn=ratio('SyncSN (1 process)', 'SN'),
                  kn_vs_bn=ratio('KN', 'BatchNorm'))
    if 'IBN' in rows:
        ratios['ibn_vs_bn'] = ratio('IBN', 'BatchNorm')
    targets = {}
    if ratios['sn_vs_gn'] is not None:
        targets['sn_vs_gn'] = _judge(ratios['sn_vs_gn'],
                                     CUDA_TARGETS['sn_vs_gn'], bound)
    for src, native in FIXED_NATIVE.items():
        key = f'fixed_{src}_vs_native'
        ratios[key] = ratio(f'SSN fixed ({src}, {src})', native)
        if ratios[key] is not None:
            targets[key] = _judge(ratios[key],
                                  CUDA_TARGETS['fixed_vs_native'], bound)
    return dict(name=name, shape=list(shape), numel=x.numel(),
                dtype=str(dtype).replace('torch.', ''), backend=backend,
                bandwidth_bound=bound, rows=rows, ratios=ratios,
                targets=targets)


def report_device(result: dict) -> str:
    lines = [f"\n## {result['name']} {result['dtype']} "
             f"({result['numel'] / 2 ** 20:.1f}M elements, mmnorm backend "
             f"{result['backend']})",
             '| case | forward ms | fwd+bwd ms | fwd+bwd units (min 8) |',
             '|---|---|---|---|']
    for key, row in result['rows'].items():
        if 'error' in row:
            lines.append(f"| {key} | error: {row['error'][:80]} | | |")
            continue
        units = row.get('fwd_bwd_units')
        lines.append(f"| {key} | {row['forward_ms']:.3f} | "
                     f"{row['fwd_bwd_ms']:.3f} | "
                     f"{'-' if units is None else f'{units:.1f}'} |")
    mark = {True: 'ok', False: 'MISSED', None: 'no target at this size'}
    for key, t in result['targets'].items():
        lines.append(f"{key}: {t['value']:.2f} (target <= {t['target']}, "
                     f"{mark[t['passed']]})")
    return '\n'.join(lines)


def _parse_setting(setting: str) -> tuple[int, int, int]:
    parts = [int(v) for v in setting.split('x')]
    if len(parts) == 2:
        parts.append(parts[1])
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f'benchmark_norms: a network setting is BATCHxSIZE '
                         f'or BATCHxHxW, got {setting!r}')
    return parts[0], parts[1], parts[2]


def bench_network(settings: list[str], device: torch.device,
                  dtype: torch.dtype, repeats: int, warmup: int,
                  norms: tuple[str, ...] = ('SN', 'GN', 'BN'),
                  build: Optional[Callable[[str], nn.Module]] = None
                  ) -> list[dict]:
    """One SGD training step of ResNet-50 (or ``build(norm)``) with each
    norm everywhere; half dtypes under autocast (float32 parameters), as
    ``--amp`` trains."""
    if build is None:
        build = _sibling('resnet50_bench').resnet50
    results = []
    for setting in settings:
        batch, height, width = _parse_setting(setting)
        torch.manual_seed(0)
        images = torch.randn(batch, 3, height, width, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        fns, models = {}, {}
        for norm in norms:
            model = build(norm).to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            models[norm] = model

            def step(model=model, opt=opt, images=images, labels=labels):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype,
                                    enabled=dtype != torch.float32):
                    logits = model(images)
                loss = nn.functional.cross_entropy(logits.float(), labels)
                loss.backward()
                opt.step()
            fns[norm] = step
        times, errors = _Timer(device).run(fns, repeats, warmup)
        rows = {norm: dict(step_ms=statistics.median(times[norm]))
                if norm in times else dict(error=errors[norm])
                for norm in norms}
        sn, gn = rows['SN'].get('step_ms'), rows['GN'].get('step_ms')
        ratios = dict(sn_vs_gn=None if sn is None or gn is None else sn / gn)
        bn = rows.get('BN', {}).get('step_ms')
        ratios['sn_vs_bn'] = None if sn is None or bn is None else sn / bn
        targets = ({} if ratios['sn_vs_gn'] is None else dict(
            sn_vs_gn=_judge(ratios['sn_vs_gn'],
                            CUDA_TARGETS['network_sn_vs_gn'], True)))
        results.append(dict(
            setting=setting, dtype=str(dtype).replace('torch.', ''),
            autocast=dtype != torch.float32,
            model=('torchvision' if type(models['SN']).__module__
                   .startswith('torchvision') else 'resnet50_bench'),
            rows=rows, ratios=ratios, targets=targets))
        del models, fns
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return results


def report_network(result: dict) -> str:
    lines = [f"\n## ResNet-50 training step {result['setting']} "
             f"{result['dtype']}{' (autocast)' if result['autocast'] else ''}"
             f" ({result['model']})", '| norm | step ms |', '|---|---|']
    for norm, row in result['rows'].items():
        lines.append(f"| {norm} | " + (f"{row['step_ms']:.1f} |"
                                       if 'step_ms' in row else
                                       f"error: {row['error'][:80]} |"))
    for key, t in result['targets'].items():
        lines.append(f"{key}: {t['value']:.2f} (target <= {t['target']}, "
                     f"{'ok' if t['passed'] else 'MISSED'})")
    return '\n'.join(lines)


def run_whitening(device: str, dtypes: list[str],
                  out: Optional[str]) -> Optional[Any]:
    """The Switchable Whitening benchmark (``benchmark_whitening.py``,
    written separately) with the same options, if it exists: called as
    ``main(['--device', D, '--dtype', T..., '--out', FILE])``."""
    module = _sibling('benchmark_whitening')
    if module is None or not hasattr(module, 'main'):
        return None
    argv = ['--device', device, '--dtype', *dtypes]
    if out:
        argv += ['--out', out]
    return module.main(argv)


def main_device(args) -> int:
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_norms: --device cuda but CUDA is not '
                         'available')
    repeats = args.repeats if args.repeats is not None else 20
    warmup = args.warmup if args.warmup is not None else 5
    if args.shapes:
        shapes = {s: tuple(int(v) for v in s.split('x')) for s in args.shapes}
    else:
        shapes = CUDA_SHAPES
    bandwidth = copy_bandwidth(device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else 'cpu')
    print(f"# Normalization benchmark on {name}: torch {torch.__version__}, "
          f"dtypes {' '.join(args.dtype)}, median of {repeats} interleaved "
          f"rounds after {warmup} warm-up rounds"
          + (f', copy bandwidth {bandwidth / 1e12:.2f} TB/s' if bandwidth
             else ''), flush=True)
    results: list[dict] = []
    network: list[dict] = []
    state: dict[str, Any] = dict(complete=False, whitening_ran=False)

    def dump() -> bool:
        # rewritten after every case, so a run stopped by a time limit
        # still leaves what it measured
        verdicts = [t['passed'] for r in results + network
                    for t in r['targets'].values() if t['passed'] is not None]
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(dict(torch=torch.__version__, device=name,
                               copy_bandwidth_Bps=bandwidth, repeats=repeats,
                               warmup=warmup, targets=CUDA_TARGETS,
                               bandwidth_bound=BANDWIDTH_BOUND,
                               min_units=MIN_UNITS, results=results,
                               network=network, judged=len(verdicts),
                               met=sum(verdicts),
                               all_targets_met=all(verdicts), **state), f,
                          indent=2)
        return all(verdicts)

    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        for label, shape in ({} if args.network_only else shapes).items():
            result = bench_device_shape(label, shape, device, dtype,
                                        repeats, warmup, bandwidth)
            results.append(result)
            print(report_device(result), flush=True)
            dump()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        if args.network or args.network_only:
            for result in bench_network(
                    args.network_settings or list(NETWORK_SETTINGS), device,
                    dtype, args.network_repeats, min(warmup, 3)):
                network.append(result)
                print(report_network(result), flush=True)
                dump()
    if args.whitening and not args.network_only:
        out = (os.path.splitext(args.out)[0] + '_whitening.json'
               if args.out else None)
        state['whitening_ran'] = run_whitening(args.device, args.dtype,
                                               out) is not None
    state['complete'] = True
    all_ok = dump()
    verdicts = [t['passed'] for r in results + network
                for t in r['targets'].values() if t['passed'] is not None]
    print(f"\nTargets judged: {len(verdicts)}, met: {sum(verdicts)}; all "
          f"met: {'yes' if all_ok else 'NO'}")
    return 0 if all_ok or not args.check else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed rounds (default 15; 20 with --device)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='warm-up rounds (default 3; 5 with --device)')
    parser.add_argument('--shapes', nargs='*', default=None,
                        help='shapes like 8x64x56x56 (default: ResNet-50; '
                        'with --device: CUDA_SHAPES)')
    parser.add_argument('--device', default=None,
                        help='cuda (or cpu) for the device benchmark: '
                        'CUDA-event timing, every layer, --dtype; without '
                        'it, the CPU benchmark of before')
    parser.add_argument('--dtype', nargs='+', choices=tuple(DTYPES),
                        default=['float32'],
                        help='input dtype(s) of the device benchmark')
    parser.add_argument('--network', action='store_true',
                        help='device benchmark: also a ResNet-50 training '
                        'step with SN, GN(32) and BN everywhere')
    parser.add_argument('--network-settings', nargs='*', default=None,
                        help='BATCHxSIZE or BATCHxHxW (default: 32x224 '
                        '2x800x1333)')
    parser.add_argument('--network-repeats', type=int, default=10)
    parser.add_argument('--network-only', action='store_true',
                        help='device benchmark: only the ResNet-50 step')
    parser.add_argument('--no-whitening', dest='whitening',
                        action='store_false',
                        help='device benchmark: skip benchmark_whitening.py')
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
    if args.repeats is not None and args.repeats < 1:
        parser.error('--repeats must be >= 1')
    if args.dtype != ['float32'] and args.device is None:
        parser.error('--dtype needs --device (the CPU benchmark is fp32)')
    torch.set_num_threads(args.threads)
    if args.device is not None:
        return main_device(args)
    args.repeats = 15 if args.repeats is None else args.repeats
    args.warmup = 3 if args.warmup is None else args.warmup
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
