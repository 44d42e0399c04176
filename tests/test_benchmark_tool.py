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
