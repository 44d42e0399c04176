"""Mixing ratios of SN-family layers, as plain dictionaries.

One record per layer, keyed by its module name::

    {'mean': {'in': .2, 'ln': .3, 'bn': .5}, 'var': {...},
     'radius': 0.4 or None, 'mean_fixed': False or None, 'var_fixed': ...}

``radius`` and ``*_fixed`` are ``None`` for SN layers (SSN only).
Switchable Whitening layers have their own sources in ``mean`` and
``var``: ``bw``, ``iw`` and, for ``sw_type`` 3 / 5, ``bn``, ``in``, ``ln``
(:data:`SOURCE_ORDER` lists every name; :func:`sources_in` those of a set
of records).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from ..layers import (
    SparseSwitchableNorm,
    SwitchableNorm,
    SwitchableWhitening,
)
from ..ops import BRANCHES
from ..ops.sparsestmax import sparsestmax
from ..ops.whitening import SW_SOURCES

Record = dict

#: Every source name in display order: SN's [IN, LN, BN], then SW's.
SOURCE_ORDER = ('in', 'ln', 'bn', 'bw', 'iw')


def sources_in(records: Mapping[str, Record]) -> list[str]:
    """The sources present in ``records``, in :data:`SOURCE_ORDER`
    (``['in', 'ln', 'bn']`` for SN layers only)."""
    seen = {b for r in records.values() for k in ('mean', 'var')
            for b in r[k]}
    return [b for b in SOURCE_ORDER if b in seen]


def collect_ratios(model: nn.Module) -> dict[str, Record]:
    """Ratios of every SN/SSN/SW layer of ``model`` (in module order)."""
    records = {}
    for name, module in model.named_modules():
        if not isinstance(module, (SwitchableNorm, SwitchableWhitening)):
            continue
        record = dict(module.ratios(), radius=None, mean_fixed=None,
                      var_fixed=None)
        if isinstance(module, SparseSwitchableNorm):
            record.update(radius=float(module.radius),
                          mean_fixed=module.mean_fixed,
                          var_fixed=module.var_fixed)
        records[name] = record
    return records


def _named(weights: torch.Tensor) -> dict[str, float]:
    return dict(zip(BRANCHES, (float(w) for w in weights)))


def ratios_from_state_dict(state: Mapping[str, torch.Tensor]
                           ) -> dict[str, Record]:
    """Ratios from an mmnorm state dict (e.g. ``checkpoint['state_dict']``).

    SN layers: softmax of the lambdas. SSN layers (those with a
    ``mean_choice`` buffer): the frozen one-hot, else SparsestMax at the
    stored radius. A layer that only ever saw ``(N, C)`` input has no IN
    branch, which a state dict does not record; such layers are shown with
    the three-branch mixture. SW layers (those with a ``running_cov``)
    get their sources from the number of lambdas (2, 3 or 5); with
    ``tie_weight`` (no ``var_weight``) the covariance ratios are the mean
    ones.
    """
    records = {}
    for key in state:
        if not key.endswith('.mean_weight'):
            continue
        prefix = key[:-len('mean_weight')]
        record: Record = dict(radius=None, mean_fixed=None, var_fixed=None)
        if prefix + 'running_cov' in state:
            mean_lam = state[key].float().flatten()
            var_lam = state.get(prefix + 'var_weight', mean_lam)
            names = SW_SOURCES[mean_lam.numel()]
            for kind, lam in (('mean', mean_lam), ('var', var_lam)):
                record[kind] = dict(zip(names, lam.float().flatten()
                                        .softmax(0).tolist()))
            records[prefix[:-1]] = record
            continue
        sparse = prefix + 'mean_choice' in state
        radius = float(state[prefix + 'radius']) if sparse else None
        for kind in ('mean', 'var'):
            logits = state[f'{prefix}{kind}_weight'].float().flatten()
            if sparse:
                choice = int(state[f'{prefix}{kind}_choice'])
                if choice >= 0:
                    weights = torch.zeros(3)
                    weights[choice] = 1.0
                else:
                    weights = sparsestmax(logits, radius)
                record[f'{kind}_fixed'] = choice >= 0
            else:
                weights = logits.softmax(0)
            record[kind] = _named(weights)
        record['radius'] = radius
        records[prefix[:-1]] = record
    return records


def dominant(weights: Mapping[str, float]) -> str:
    """The branch with the largest weight, e.g. ``'bn'``."""
    return max(weights, key=weights.get)


_STAGE = re.compile(r'^(layer\d+|stage\d+|res\d+)$')


def stage_of(layer_name: str) -> str:
    """Group a layer name into a stage: ``backbone.layer2.3.bn1`` ->
    ``backbone.layer2``, ``backbone.bn1`` or ``backbone.stem.1`` ->
    ``backbone.stem``,
    ``neck.fpn_convs.0.bn`` -> ``neck``,
    ``roi_head.bbox_head.shared_convs.0.bn`` -> ``roi_head.bbox_head``."""
    parts = layer_name.split('.')[:-1]
    for i, part in enumerate(parts):
        if _STAGE.match(part) or part == 'stem':
            return '.'.join(parts[:i + 1])
    if len(parts) == 1:
        return f'{parts[0]}.stem'
    named = [p for p in parts if not p.isdigit()]
    if len(named) > 1 and named[0] == 'roi_head':
        return '.'.join(named[:2])
    return named[0] if named else 'model'


def summary_table(records: Mapping[str, Record],
                  fmt: str = 'markdown') -> str:
    """Per layer: dominant normalizer for means and variances, and ratios.

    Args:
        fmt: ``'markdown'`` (for a paper or a README) or ``'plain'``
            (aligned columns for a terminal).
    """
    sources = sources_in(records) or list(BRANCHES)
    names = [b.upper() for b in sources]
    header = ['layer', 'mean', *names, 'var', *names]
    rows = []
    for name, record in records.items():
        row = [name]
        for kind in ('mean', 'var'):
            weights = record[kind]
            fixed = record.get(f'{kind}_fixed')
            row.append(dominant(weights).upper() + (' (fixed)' if fixed
                                                    else ''))
            row += [f'{weights[b]:.2f}' if b in weights else '-'
                    for b in sources]
        rows.append(row)
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '---|' * len(header)]
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines)
    if fmt != 'plain':
        raise ValueError(f"summary_table: fmt must be 'markdown' or "
                         f"'plain', got {fmt!r}")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(r, widths))
                     for r in [header, *rows])


def average_by_stage(records: Mapping[str, Record]
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean ratios over the layers of each stage (see :func:`stage_of`),
    over the sources of :func:`sources_in`; a source a layer lacks (SN
    and SW layers in one stage) counts 0 for it, so each stage's ratios
    still sum to 1."""
    grouped: dict[str, list] = {}
    for name, record in records.items():
        grouped.setdefault(stage_of(name), []).append(record)
    sources = sources_in(records)
    out = {}
    for stage, group in grouped.items():
        out[stage] = {kind: {b: sum(r[kind].get(b, 0.0) for r in group)
                             / len(group) for b in sources}
                      for kind in ('mean', 'var')}
    return out


def load_ratio_history(path: str) -> list[tuple[int, dict[str, Record]]]:
    """``[(iteration, records), ...]`` from a ``sn_ratios.jsonl`` log, or a
    single ``(-1, records)`` from a checkpoint / state dict file (loaded
    weights-only)."""
    import json
    if path.endswith('.jsonl'):
        history = []
        with open(path) as f:
            for line in f:
                if line.strip():
                    entry = json.loads(line)
                    history.append((entry['iter'], entry['layers']))
        if not history:
            raise ValueError(f'{path}: no ratio records')
        return history
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    records = ratios_from_state_dict(state)
    if not records:
        raise ValueError(f'{path}: no SN/SSN/SW layer in this state dict')
    return [(-1, records)]
