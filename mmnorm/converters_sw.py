"""The authors' Switchable Whitening ImageNet checkpoints -> mmnorm.

The authors' ResNets (XingangPan/Switchable-Whitening) name their layers
after the builder's abbreviation plus postfix: the stem norm is ``sw1``, a
Bottleneck's whitening layer ``layerX.Y.sw2`` and a BasicBlock's
``layerX.Y.sw1``; keys carry DataParallel's ``module.`` prefix. An SW layer
holds ``weight``, ``bias`` ``(C,)``, ``sw_mean_weight`` and (without
``tie_weight``) ``sw_var_weight`` (2, 3 or 5 pre-softmax lambdas),
``running_mean`` ``(G, c, 1)`` and ``running_cov`` ``(G, c, c)``. The
other keys follow torchvision's ResNet, which is also the layout of
mmdet's and mmseg's ``ResNet``.

:func:`convert_official_sw` maps them onto ``ResNetSW`` (mmnorm keeps the
toolkit's names ``bn1``, ``layerX.Y.bn2`` / ``bn1``; the lambdas are
``mean_weight`` / ``var_weight``) and reports what changes in behaviour:

* ``sw_type=5`` layers: the authors' code mixes the covariances with the
  BW and IW weights in place of the BN and IN ones, so their effective
  covariance weights are ``[w0, w1, w0, w1, w4]`` (not summing to 1);
  mmnorm uses the learned ``[w0, w1, w2, w3, w4]``. The largest change per
  layer is reported; it cannot be undone by rewriting the lambdas.
* an all-zero ``running_cov`` (the authors' initialization of a layer that
  never trained) becomes the identity, as mmnorm initializes it.
* momentum is not stored: the authors' ImageNet script kept 0.9 of the
  running statistics (mmnorm ``momentum=0.1``), the layer's own default
  0.99 (``momentum=0.01``).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

_SW_KEY = re.compile(r'^(?P<where>(layer\d+\.\d+\.)?)sw(?P<idx>\d+)\.'
                     r'(?P<name>.+)$')
_RENAME = {'sw_mean_weight': 'mean_weight', 'sw_var_weight': 'var_weight'}
_SOURCES = {2: 'BW, IW', 3: 'BW, IW, LN', 5: 'BW, IW, BN, IN, LN'}


def _layer_options(state: Mapping[str, Tensor], prefix: str) -> dict:
    lam = state[prefix + 'mean_weight'].flatten()
    if lam.numel() not in _SOURCES:
        raise ValueError(f'convert_official_sw: {prefix}mean_weight has '
                         f'{lam.numel()} entries; SW layers have 2, 3 or 5')
    cov = state[prefix + 'running_cov']
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f'convert_official_sw: {prefix}running_cov has '
                         f'shape {tuple(cov.shape)}, expected (G, c, c)')
    return dict(num_pergroup=int(cov.shape[1]), sw_type=lam.numel(),
                tie_weight=prefix + 'var_weight' not in state)


def convert_official_sw(state: Mapping[str, Tensor], keep_head: bool = False
                        ) -> tuple[dict[str, Tensor], list[str]]:
    """Convert an official SW ImageNet state dict (see the module doc).

    Args:
        state: the authors' state dict (``checkpoint['state_dict']``).
        keep_head: keep the ImageNet classifier (``fc.*``).

    Returns:
        The mmnorm state dict for ``ResNetSW`` (SW layers get a
        ``num_batches_tracked`` of 0) and the report: one line per change
        in behaviour and one with the ``sw_cfg`` to build the model with.
    """
    out: dict[str, Tensor] = {}
    sw_prefixes: list[str] = []
    for key, value in state.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if not keep_head and key.startswith('fc.'):
            continue
        match = _SW_KEY.match(key)
        if match:
            prefix = f"{match['where']}bn{match['idx']}."
            name = _RENAME.get(match['name'], match['name'])
            if prefix not in sw_prefixes:
                sw_prefixes.append(prefix)
            value = value.flatten() if name in (
                'weight', 'bias', 'mean_weight', 'var_weight') else value
            key = prefix + name
        out[key] = value
    if not sw_prefixes:
        raise ValueError('convert_official_sw: no SW layer (keys "sw1.*", '
                         '"layerX.Y.swK.*") in this state dict')
    report: list[str] = []
    options = {}
    for prefix in sw_prefixes:
        opts = _layer_options(out, prefix)
        options[prefix] = opts
        out.setdefault(prefix + 'num_batches_tracked',
                       torch.tensor(0, dtype=torch.long))
        cov = out[prefix + 'running_cov']
        if not cov.any():
            out[prefix + 'running_cov'] = torch.eye(
                cov.shape[1], dtype=cov.dtype).repeat(cov.shape[0], 1, 1)
            report.append(f'{prefix[:-1]}: running_cov was all zero (the '
                          'authors\' initialization, never updated); set to '
                          'the identity')
        if opts['sw_type'] == 5:
            lam = out[prefix + ('mean_weight' if opts['tie_weight']
                                else 'var_weight')]
            w = lam.double().softmax(0)
            theirs = torch.stack([w[0], w[1], w[0], w[1], w[4]])
            change = float((theirs - w).abs().max())
            report.append(
                f'{prefix[:-1]}: sw_type=5 covariance weights change by up '
                f'to {change:.4f}: the authors\' code used the BW/IW weights '
                'for BN/IN, mmnorm uses the learned BN/IN weights')
    kinds = {tuple(sorted(o.items())) for o in options.values()}
    if len(kinds) > 1:
        report.append('layers differ in their options (build them one by '
                      f'one): {sorted(kinds)}')
    first = next(iter(options.values()))
    report.append(
        f"build with sw_cfg=dict(type='SW', num_pergroup="
        f"{first['num_pergroup']}, sw_type={first['sw_type']}, tie_weight="
        f"{first['tie_weight']}) (sources [{_SOURCES[first['sw_type']]}]); "
        "the authors' ImageNet script kept 0.9 of the running statistics "
        "(momentum=0.1 in mmnorm)")
    report.insert(0, f'{len(sw_prefixes)} SW layers: '
                  + ', '.join(p[:-1] for p in sw_prefixes))
    return out, report
