"""Ratio logging, summaries and plots."""
import json
import os
import subprocess
import sys

import pytest
import torch
from mmengine.runner import Runner
from torch import nn

from mmnorm import SparseSwitchableNorm, SwitchableNorm
from mmnorm.analysis import (
    collect_ratios,
    ratios_from_state_dict,
    stage_of,
    summary_table,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def _model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwitchableNorm(4),
                          SparseSwitchableNorm(4), SparseSwitchableNorm(4))
    with torch.no_grad():
        model[1].mean_weight.copy_(torch.tensor([2.0, 0.0, -1.0]))
        model[2].mean_weight.copy_(torch.tensor([1.2, 1.0, 0.9]))
    model[2].set_radius(0.6)
    model[3].set_radius(0.9)
    model(torch.randn(2, 3, 6, 6))  # model[3] freezes (one-hot at r=0.9)
    return model


def test_state_dict_ratios_equal_live_ratios():
    model = _model()
    live = collect_ratios(model)
    stored = ratios_from_state_dict(model.state_dict())
    assert list(live) == list(stored) == ['1', '2', '3']
    for name in live:
        for kind in ('mean', 'var'):
            for branch in ('in', 'ln', 'bn'):
                assert stored[name][kind][branch] == pytest.approx(
                    live[name][kind][branch], abs=1e-6)
    assert live['3']['mean_fixed'] and stored['3']['mean_fixed']
    assert live['1']['radius'] is None
    assert live['2']['mean'] == pytest.approx(
        dict(**{'in': 0.8109, 'ln': 0.1891, 'bn': 0.0}), abs=1e-3)


def test_summary_table_names_the_dominant_normalizer():
    table = summary_table(collect_ratios(_model()))
    assert '| 1 | IN |' in table
    assert 'fixed' in table
    plain = summary_table(collect_ratios(_model()), 'plain')
    assert plain.splitlines()[0].split()[:2] == ['layer', 'mean']


@pytest.mark.parametrize('name,stage', [
    ('backbone.bn1', 'backbone.stem'),
    ('backbone.stem.1', 'backbone.stem'),  # mmseg ResNetV1c deep stem
    ('backbone.layer2.3.bn1', 'backbone.layer2'),
    ('backbone.layer1.0.downsample.1', 'backbone.layer1'),
    ('neck.fpn_convs.0.bn', 'neck'),
    ('roi_head.bbox_head.shared_convs.0.bn', 'roi_head.bbox_head'),
    ('decode_head.psp_modules.0.1.bn', 'decode_head'),
])
def test_stage_of(name, stage):
    assert stage_of(name) == stage


def test_hook_writes_jsonl_and_visualizer_scalars_then_plots(tmp_path):
    sys.path.insert(0, FIXTURES)
    import toy_modules  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(FIXTURES, 'toy_config.py'))
    cfg.work_dir = str(tmp_path)
    cfg.train_cfg.max_epochs = 1
    cfg.custom_hooks = [dict(type='SSNRadiusHook'),
                        dict(type='SNRatioLoggerHook', interval=2)]
    cfg.visualizer = dict(type='Visualizer',
                          vis_backends=[dict(type='LocalVisBackend')])
    runner = Runner.from_cfg(cfg)
    runner.train()
    log = os.path.join(runner.work_dir, 'sn_ratios.jsonl')
    records = [json.loads(line) for line in open(log)]
    assert [r['iter'] for r in records] == [2, 4, 6, 8]
    assert set(records[-1]['layers']) == {'norm1', 'norm2'}
    assert records[-1]['layers']['norm2']['radius'] == pytest.approx(7 / 8)
    scalars = open(os.path.join(runner.log_dir, 'vis_data',
                                'scalars.json')).read()
    assert 'sn_ratio/norm1/mean/in' in scalars and 'sn_radius' in scalars

    out = str(tmp_path / 'plots')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'analysis_tools',
                                      'plot_ratios.py'), log,
         '--out-dir', out, '--summary'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for figure in ('ratios_depth', 'ratios_stages', 'ratios_evolution'):
        for ext in ('png', 'svg'):
            assert os.path.getsize(os.path.join(out, f'{figure}.{ext}')) > 0
    assert '| norm1 |' in result.stdout


@pytest.mark.parametrize('title', ['', 'Mask R-CNN R18 SN (synthetic COCO)',
                                   'A much longer title prefix that a user '
                                   'might pass to the plotting tool'])
def test_evolution_titles_do_not_overlap(tmp_path, monkeypatch, title):
    """The titles of the two panels of ``ratios_evolution`` (and the
    figure title) have disjoint boxes in the drawn figure, and no title
    runs into the other panel."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from mmnorm.analysis.plots import plot_evolution

    def record(step):
        return {'mean': {'in': 0.5 - step, 'ln': 0.3, 'bn': 0.2 + step},
                'var': {'in': 0.2, 'ln': 0.5 - step, 'bn': 0.3 + step}}

    history = [(20 * i, {'a.norm': record(0.02 * i), 'b.norm': record(0.0)})
               for i in range(1, 6)]
    figures = []
    monkeypatch.setattr(plt, 'close', figures.append)  # keep the figure
    paths = plot_evolution(history, str(tmp_path / 'evolution'), title)
    assert all(os.path.getsize(p) > 0 for p in paths)
    fig, = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.has_data()]
    assert len(axes) == 2
    wanted = {fig.get_suptitle()} | {ax.get_title(loc) for ax in axes
                                     for loc in ('left', 'center', 'right')}
    wanted.discard('')
    titles = [t for t in fig.findobj(Text)
              if t.get_visible() and t.get_text() in wanted]
    assert {t.get_text() for t in titles} == wanted
    assert len(titles) >= 2  # one per panel at least
    boxes = [t.get_window_extent(renderer) for t in titles]
    for i, box in enumerate(boxes):
        for other in boxes[i + 1:]:
            assert not box.overlaps(other), (box, other)
    # a panel's title stays within its own panel's columns
    for ax in axes:
        panel = ax.get_window_extent(renderer)
        for loc in ('left', 'center', 'right'):
            text = ax.get_title(loc)
            if text:
                box, = [b for t, b in zip(titles, boxes)
                        if t.get_text() == text and t.axes is ax]
                assert panel.x0 - 1 <= box.x0 and box.x1 <= panel.x1 + 1
    if title:
        assert any(title in t for t in wanted)  # the title is still shown
    plt.close(fig)


def test_evolution_plots_the_sources_of_sn_and_sw_layers(tmp_path,
                                                         monkeypatch):
    """SW records have other sources (BW, IW); each source seen gets one
    line per panel, averaged over the layers that have it (0 elsewhere)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mmnorm.analysis.plots import plot_evolution
    sn = {'mean': {'in': 0.2, 'ln': 0.3, 'bn': 0.5},
          'var': {'in': 0.1, 'ln': 0.1, 'bn': 0.8}}
    sw = {'mean': {'bw': 0.6, 'iw': 0.4}, 'var': {'bw': 0.6, 'iw': 0.4}}
    history = [(10, {'a.norm': sn, 'b.sw': sw}), (20, {'a.norm': sn,
                                                       'b.sw': sw})]
    figures = []
    monkeypatch.setattr(plt, 'close', figures.append)
    plot_evolution(history, str(tmp_path / 'evolution'))
    fig, = figures
    mean_axes = fig.axes[0]
    lines = {line.get_label(): line.get_ydata()
             for line in mean_axes.get_lines()}
    assert sorted(lines) == ['BN', 'BW', 'IN', 'IW', 'LN']
    assert list(lines['BW']) == [0.3, 0.3]  # (0 + 0.6) / 2 layers
    assert list(lines['BN']) == [0.25, 0.25]
    plt.close(fig)
