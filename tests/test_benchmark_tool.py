"""The benchmark tool's measurements mean what they say (no timing asserts)."""
import importlib.util
import os

import torch

from mmnorm import SwitchableNorm

_PATH = os.path.join(os.path.dirname(__file__), '..', 'tools',
                     'analysis_tools', 'benchmark_norms.py')
spec = importlib.util.spec_from_file_location('benchmark_norms', _PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_straightforward_sn_computes_what_mmnorm_sn_computes():
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    naive, fused = bench.StraightforwardSN(8), SwitchableNorm(8)
    torch.testing.assert_close(naive(x), fused(x), atol=1e-5, rtol=1e-5)


def test_saved_bytes_counts_distinct_storages():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    size = x.numel() * 4
    assert bench.saved_bytes(SwitchableNorm(4), x) < 1.2 * size
    assert bench.saved_bytes(bench.StraightforwardSN(4), x) > 2 * size


def test_tool_runs_and_writes_json(tmp_path):
    out = tmp_path / 'r.json'
    bench.main(['--shapes', '2x32x8x8', '--repeats', '1', '--warmup', '0',
                '--out', str(out)])
    import json
    result = json.loads(out.read_text())['results'][0]
    assert set(result['ratios']) >= {'sn_vs_gn', 'naive_vs_sn',
                                     'saved_vs_input'}


def _resnet():
    path = os.path.join(os.path.dirname(_PATH), 'resnet50_bench.py')
    spec = importlib.util.spec_from_file_location('resnet50_bench', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_resnet50_is_resnet50():
    resnet = _resnet()
    model = resnet.resnet50('BN', prefer_torchvision=False)
    # torchvision's resnet50: 25,557,032 parameters, 53 BatchNorm2d
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert sum(isinstance(m, torch.nn.BatchNorm2d)
               for m in model.modules()) == 53
    sn = resnet.resnet50('SN', num_classes=3, prefer_torchvision=False)
    assert sum(isinstance(m, SwitchableNorm) for m in sn.modules()) == 53
    assert sn(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    import pytest
    with pytest.raises(ValueError, match='norm must be SN, GN or BN'):
        resnet.norm_factory('LN')


def test_device_mode_on_cpu_writes_every_case(tmp_path):
    import json
    out = tmp_path / 'd.json'
    bench.main(['--device', 'cpu', '--dtype', 'float32', '--shapes',
                '2x32x4x4', '2x32x2x2x2', '--repeats', '1', '--warmup', '0',
                '--no-whitening', '--out', str(out)])
    report = json.loads(out.read_text())
    image, video = report['results']
    cases = {'SN', 'SSN (learning)', 'SyncSN (1 process)', 'KN', 'IBN',
             'SSN fixed (LN, LN)', 'SSN fixed (IN, IN)',
             'SSN fixed (BN, BN)', 'GroupNorm(32)', 'BatchNorm',
             'InstanceNorm', 'GroupNorm(1, C)'}
    assert set(image['rows']) == cases
    assert set(video['rows']) == cases - {'IBN'}  # IBN is 2D only
    for row in image['rows'].values():
        assert row['forward_ms'] > 0 and row['fwd_bwd_ms'] > 0
    ratio = (image['rows']['SN']['fwd_bwd_ms']
             / image['rows']['GroupNorm(32)']['fwd_bwd_ms'])
    assert image['ratios']['sn_vs_gn'] == ratio
    # too small to be bandwidth-bound: reported, not judged
    assert image['targets']['sn_vs_gn']['passed'] is None
    assert image['targets']['fixed_LN_vs_native']['target'] == 1.1


def test_timer_reports_a_failing_case_and_times_the_others():
    timer = bench._Timer(torch.device('cpu'))

    def broken():
        raise RuntimeError('no')
    times, errors = timer.run({'ok': lambda: None, 'bad': broken}, 3, 0)
    assert len(times['ok']) == 3 and 'bad' not in times
    assert errors == {'bad': 'RuntimeError: no'}


def test_network_step_and_ratio():
    resnet = _resnet()

    def build(norm):  # a two-block net: the step logic, cheaply
        make = resnet.norm_factory(norm)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3), make(32), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(32, 32, 3), make(32), torch.nn.ReLU(inplace=True),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(32, 1000))
    rows = bench.bench_network(['2x16'], torch.device('cpu'), torch.float32,
                               repeats=1, warmup=0, norms=('SN', 'GN'),
                               build=build)
    (result,) = rows
    assert result['setting'] == '2x16'
    sn, gn = result['rows']['SN'], result['rows']['GN']
    assert 'error' not in sn and 'error' not in gn
    assert result['ratios']['sn_vs_gn'] == sn['step_ms'] / gn['step_ms']
    assert result['targets']['sn_vs_gn']['target'] == 1.15
