"""Collapse fixed SSN layers (and, on request, hardened SN layers) into the
smallest module that computes the same thing.

* both sources BN -> ``nn.BatchNorm1d/2d/3d`` in eval mode with the running
  statistics (exactly what SN computes in inference);
* anything else -> :class:`mmnorm.layers.fixed.FixedSourceNorm`, which
  computes only the chosen statistics, with SN's exact definitions (the
  native IN/GroupNorm modules use the biased IN variance and would differ
  by a factor depending on the spatial size).

Every replacement is checked on a random sample input against the layer it
replaces, and a report row says what each layer became.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .layers import SparseSwitchableNorm, SwitchableNorm
from .layers.fixed import FixedSourceNorm
from .ops import BRANCHES

_NATIVE_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d,
              5: nn.BatchNorm3d}


@dataclass
class CollapsedLayer:
    """One report row."""
    name: str
    source: str            # e.g. 'SSN (fixed)' or 'SN (hardened)'
    mean: str              # 'in', 'ln' or 'bn'
    var: str
    became: str            # class name of the replacement
    max_abs_diff: float    # on the sample input, eval mode


def _choices(layer: SwitchableNorm, harden_sn: bool
             ) -> Optional[tuple[int, int, str]]:
    if isinstance(layer, SparseSwitchableNorm):
        if layer.fixed:
            return int(layer.mean_choice), int(layer.var_choice), \
                'SSN (fixed)'
        return None
    if harden_sn:
        with torch.no_grad():
            mean_w, var_w = layer.mixing_weights(layer._last_rank == 2)
        return int(mean_w.argmax()), int(var_w.argmax()), 'SN (hardened)'
    return None


def _carry(layer: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` with ``layer``'s entries that it has, on ``layer``'s device
    and dtype."""
    state = {k: v for k, v in layer.state_dict().items()
             if k in new.state_dict()}
    new.load_state_dict(state)
    reference = next(layer.parameters(), None)
    if reference is None:
        reference = layer.running_mean
    return new.to(device=reference.device, dtype=reference.dtype)


def native_bn(layer: nn.Module, cls: Optional[type] = None) -> nn.Module:
    """A torch BatchNorm with ``layer``'s ``eps``, ``momentum``,
    ``affine``, parameters and running statistics: of class ``cls``, by
    default the ``nn.BatchNorm1d/2d/3d`` of the layer's last input rank.
    Exact where ``layer`` computes BN (see :func:`mmnorm.revert_norms`).
    """
    cls = cls or _NATIVE_BN[getattr(layer, '_last_rank', 4)]
    new = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum,
              affine=layer.affine,
              track_running_stats=layer.track_running_stats)
    return _carry(layer, new)


def _replacement(layer: SwitchableNorm, mean_source: int, var_source: int
                 ) -> nn.Module:
    if mean_source == var_source == 2:
        return native_bn(layer).eval()
    new = FixedSourceNorm(layer.num_features, mean_source, var_source,
                          eps=layer.eps, momentum=layer.momentum,
                          affine=layer.affine)
    return _carry(layer, new).eval()


def _sample(layer: SwitchableNorm) -> torch.Tensor:
    spatial = {2: (), 3: (7,), 4: (5, 6), 5: (3, 4, 5)}[layer._last_rank]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, layer.num_features, *spatial, generator=generator)
    return (x * 2 + 0.5).to(layer.mean_weight)


def collapse_fixed_norms(model: nn.Module, harden_sn: bool = False,
                         atol: float = 1e-4) -> list[CollapsedLayer]:
    """Replace fixed SSN (and with ``harden_sn`` all SN) layers in place.

    The model is meant for inference afterwards (replacements are in eval
    mode). Hardening an SN layer (argmax of its ratios) changes its output
    by design; its row reports the difference instead of failing.

    Returns:
        One :class:`CollapsedLayer` per replaced layer.

    Raises:
        RuntimeError: a collapsed SSN layer does not reproduce its output
            within ``atol`` (a bug, never expected).
    """
    report = []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, SwitchableNorm):
            continue
        picked = _choices(layer, harden_sn)
        if picked is None:
            continue
        mean_source, var_source, source = picked
        new = _replacement(layer, mean_source, var_source)
        was_training = layer.training
        layer.eval()
        with torch.no_grad():
            x = _sample(layer)
            diff = float((new(x) - layer(x)).abs().max())
        layer.train(was_training)
        tolerance = atol if x.dtype in (torch.float32, torch.float64) \
            else max(atol, 5e-2)  # half precision rounds at ~1e-2
        if source.startswith('SSN') and diff > tolerance:
            raise RuntimeError(f'collapse_fixed_norms: {name} differs by '
                               f'{diff:.3g} after collapsing')
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        report.append(CollapsedLayer(name, source, BRANCHES[mean_source],
                                     BRANCHES[var_source],
                                     type(new).__name__, diff))
    return report


def format_report(report: list[CollapsedLayer]) -> str:
    """The report as a markdown table."""
    lines = ['| layer | was | mean | var | became | max abs diff |',
             '|---|---|---|---|---|---|']
    lines += [f'| {r.name} | {r.source} | {r.mean} | {r.var} | {r.became} '
              f'| {r.max_abs_diff:.2e} |' for r in report]
    return '\n'.join(lines)
