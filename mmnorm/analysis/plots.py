"""Figures of SN mixing ratios, like those of the SN papers.

* depth: per-layer stacked bars of IN/LN/BN ratios for means (top) and
  variances (bottom), in network order;
* stages: the same averaged per stage (``backbone.layer1``, ``neck``, ...);
* evolution: ratios averaged over layers against training iterations.

Each figure is written as PNG and SVG. matplotlib is imported lazily with
the non-interactive Agg backend.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from .ratios import Record, average_by_stage, sources_in

# SN's branches, then Switchable Whitening's BW and IW
COLORS = {'in': '#4C72B0', 'ln': '#DD8452', 'bn': '#55A868',
          'bw': '#8172B3', 'iw': '#C44E52'}
LABELS = {'in': 'IN', 'ln': 'LN', 'bn': 'BN', 'bw': 'BW', 'iw': 'IW'}


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def short_names(names: Sequence[str]) -> list[str]:
    """Drop a prefix shared by all names (e.g. ``backbone.``)."""
    names = list(names)
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    prefix = prefix[:prefix.rfind('.') + 1]
    return [n[len(prefix):] for n in names]


def _save(fig, out_prefix: str) -> list[str]:
    paths = []
    for ext in ('png', 'svg'):
        path = f'{out_prefix}.{ext}'
        fig.savefig(path, dpi=150, bbox_inches='tight')
        paths.append(path)
    return paths


def _finish(fig, ax) -> None:
    """One legend under the figure, clear of bars, lines and titles."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc='lower center', ncol=3, fontsize=9,
               frameon=False)


def _stacked(ax, labels, weights_by_branch, title):
    bottom = [0.0] * len(labels)
    positions = range(len(labels))
    for branch, values in weights_by_branch.items():
        ax.bar(positions, values, bottom=bottom, color=COLORS[branch],
               label=LABELS[branch], width=0.85)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel('ratio')
    ax.set_title(title, loc='left')


def plot_depth(records: Mapping[str, Record], out_prefix: str,
               title: str = '') -> list[str]:
    plt = _pyplot()
    names = list(records)
    labels = short_names(names)
    width = max(8.0, 0.22 * len(names) + 2)
    fig, axes = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True)
    for ax, kind in zip(axes, ('mean', 'var')):
        _stacked(ax, labels, {b: [records[n][kind].get(b, 0.0)
                                  for n in names]
                              for b in sources_in(records)},
                 f'{title} {"means" if kind == "mean" else "variances"}'
                 .strip())
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=90,
                            fontsize=7 if len(labels) > 30 else 9)
    _finish(fig, axes[0])
    paths = _save(fig, out_prefix)
    plt.close(fig)
    return paths


def plot_stages(records: Mapping[str, Record], out_prefix: str,
                title: str = '') -> list[str]:
    plt = _pyplot()
    stages = average_by_stage(records)
    labels = list(stages)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(labels) + 3),
                                            4.2), sharey=True)
    for ax, kind in zip(axes, ('mean', 'var')):
        _stacked(ax, labels, {b: [stages[s][kind][b] for s in labels]
                              for b in sources_in(records)},
                 f'{title} {"means" if kind == "mean" else "variances"} '
                 'by stage'.strip())
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha='right', fontsize=9)
    _finish(fig, axes[1])
    paths = _save(fig, out_prefix)
    plt.close(fig)
    return paths


def plot_evolution(history: Sequence[tuple[int, Mapping[str, Record]]],
                   out_prefix: str, title: str = '') -> list[str]:
    plt = _pyplot()
    iters = [it for it, _ in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    # every source seen at any time (SN's three, SW's two to five)
    sources = sources_in({f'{i}.{name}': r
                          for i, (_, recs) in enumerate(history)
                          for name, r in recs.items()})
    for ax, kind in zip(axes, ('mean', 'var')):
        for branch in sources:
            values = [sum(r[kind].get(branch, 0.0) for r in recs.values())
                      / len(recs) for _, recs in history]
            ax.plot(iters, values, color=COLORS[branch],
                    label=LABELS[branch], linewidth=2)
        ax.set_xlabel('iteration')
        ax.set_ylim(0, 1)
        # short panel titles; the caller's title once, above both panels
        ax.set_title(f'{"means" if kind == "mean" else "variances"}'
                     ' (average over layers)', loc='left')
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('ratio')
    if title:
        fig.suptitle(title, x=0.01, ha='left')
    _finish(fig, axes[1])
    paths = _save(fig, out_prefix)
    plt.close(fig)
    return paths
