"""Turn other checkpoints' state dicts into mmnorm SN/SSN state dicts.

* :func:`convert_official_sn`: the authors' SN / SSN ImageNet checkpoints
  (``module.`` prefix, ``(1, C, 1, 1)`` / ``(1, C, 1)`` shapes, no
  ``num_batches_tracked``, ResNet v1 = torchvision naming, 2- or 3-entry
  pre-softmax lambdas, SSN ``mean_fixed``/``var_fixed``/``radius``
  buffers) -> keys of an mmdet/mmseg ``ResNet`` with ``norm_cfg=SN``/``SSN``.
* :func:`bn_to_switchable`: any BN-pretrained ResNet (torchvision or
  OpenMMLab naming) -> the same keys plus mixing weights initialised
  uniformly or in favour of BN.

Both work on plain ``dict[str, Tensor]``; loading and saving is the
tools' job (``tools/model_converters/``), always weights-only.

Momentum is not stored in a state dict. The authors trained their ImageNet
SN models with the SN2d keep factor 0.9, i.e. ``momentum=0.1`` in mmnorm
(the default); their detection/segmentation fine-tuning used 0.997, i.e.
``momentum=0.003``.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import Tensor, nn

# A lambda this negative gives the branch weight exp(-1e4) = 0: used for
# the branch an official 2-entry layer does not have.
ABSENT = -1e4
_PER_CHANNEL = ('weight', 'bias', 'running_mean', 'running_var')


def retype(module: nn.Module, cls: type, drop: tuple[str, ...] = (),
           **attrs) -> nn.Module:
    """A ``cls`` module holding ``module``'s parameters, buffers, children,
    mode and attributes (the same tensors, not copies), ``drop`` removed
    and ``attrs`` set.

    For class pairs that differ in behaviour but not in state, such as
    SN / SyncSN (the synchronized one only adds ``process_group``).
    """
    new = copy.copy(module)  # shallow: the tensors are shared
    for table in ('_parameters', '_buffers', '_modules',
                  '_non_persistent_buffers_set'):
        if table in new.__dict__:
            setattr(new, table, copy.copy(getattr(module, table)))
    new.__class__ = cls
    for name in drop:
        new.__dict__.pop(name, None)
    for name, value in attrs.items():
        setattr(new, name, value)
    return new


def _norm_prefixes(state: Mapping[str, Tensor]) -> list[str]:
    return [k[:-len('mean_weight')] for k in state
            if k.endswith('.mean_weight') or k == 'mean_weight']


def convert_official_sn(state: Mapping[str, Tensor],
                        keep_head: bool = False) -> dict[str, Tensor]:
    """Convert an official SN/SSN ImageNet state dict (see module doc).

    Lambdas become 3 entries in mmnorm's order [IN, LN, BN]: a 2-entry
    layer with running statistics is an SN1d layer ([LN, BN]); one without
    is a ``using_bn=False`` layer ([IN, LN]), which must be built with
    ``using_bn=False``. A fixed SSN choice becomes ``mean_choice`` /
    ``var_choice``; the one-hot stays in the lambda, as the authors store
    it.

    Args:
        keep_head: keep the ImageNet classifier (``fc.*``).
    """
    plain = {}
    for key, value in state.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if not keep_head and key.startswith('fc.'):
            continue
        plain[key] = value
    out = dict(plain)
    for prefix in _norm_prefixes(plain):
        has_running = prefix + 'running_mean' in plain
        for kind in ('mean', 'var'):
            key = f'{prefix}{kind}_weight'
            lam = plain[key].detach().float().flatten()
            if lam.numel() == 2:
                absent = torch.tensor([ABSENT])
                lam = (torch.cat([absent, lam]) if has_running
                       else torch.cat([lam, absent]))
            elif lam.numel() != 3:
                raise ValueError(f'convert_official_sn: {key} has '
                                 f'{lam.numel()} entries, expected 2 or 3')
            out[key] = lam
        for name in _PER_CHANNEL:
            if prefix + name in plain:
                out[prefix + name] = plain[prefix + name].flatten()
        if has_running and prefix + 'num_batches_tracked' not in plain:
            out[prefix + 'num_batches_tracked'] = torch.tensor(0)
        if prefix + 'mean_fixed' in plain:  # an SSN layer
            for kind in ('mean', 'var'):
                fixed = bool(plain.pop(f'{prefix}{kind}_fixed').flatten()[0])
                out.pop(f'{prefix}{kind}_fixed', None)
                choice = int(out[f'{prefix}{kind}_weight'].argmax())
                out[f'{prefix}{kind}_choice'] = torch.tensor(
                    choice if fixed else -1)
            out[prefix + 'radius'] = plain[prefix + 'radius'].flatten()[0] \
                .float().clone()
    return out


def bn_mixing_logits(bn_ratio: float) -> Tensor:
    """Lambdas whose softmax gives BN ``bn_ratio`` and IN/LN the rest in
    equal parts (``bn_ratio=1/3``: uniform)."""
    if not 0 < bn_ratio < 1:
        raise ValueError(f'bn_ratio must be in (0, 1), got {bn_ratio}')
    return torch.tensor([0.0, 0.0, math.log(2 * bn_ratio / (1 - bn_ratio))])


def bn_to_switchable(state: Mapping[str, Tensor], bn_ratio: float = 1 / 3,
                     sparse: bool = False,
                     strip_prefix: str = '') -> dict[str, Tensor]:
    """Add SN (``sparse``: SSN) mixing weights to every BN layer of a
    BN-pretrained state dict.

    A BN layer is a prefix with ``weight``, ``bias``, ``running_mean`` and
    ``running_var``. Other keys are copied unchanged.

    Args:
        bn_ratio: initial BN weight of means and variances (default
            uniform 1/3, like a freshly built SN layer).
        sparse: also add SSN's ``radius`` (0) and ``mean_choice`` /
            ``var_choice`` (-1, not fixed).
        strip_prefix: drop this prefix from every key (e.g. ``module.``).
    """
    out = {}
    for key, value in state.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix):]
        out[key] = value
    logits = bn_mixing_logits(bn_ratio)
    prefixes = [k[:-len('running_mean')] for k in out
                if k.endswith('running_mean')]
    for prefix in prefixes:
        if prefix + 'weight' not in out or prefix + 'mean_weight' in out:
            continue
        out[prefix + 'mean_weight'] = logits.clone()
        out[prefix + 'var_weight'] = logits.clone()
        if sparse:
            out[prefix + 'radius'] = torch.tensor(0.0)
            out[prefix + 'mean_choice'] = torch.tensor(-1)
            out[prefix + 'var_choice'] = torch.tensor(-1)
    return out


def convert_official_ibn(state: Mapping[str, Tensor],
                         keep_head: bool = False) -> dict[str, Tensor]:
    """Convert the authors' IBN-Net ImageNet state dict (IBN-a or IBN-b)
    for ``ResNetIBN`` / ``ResNetIBNb`` / ``ResNeXtIBN``.

    Their keys already use torchvision naming with ``bn1.IN`` / ``bn1.BN``
    (IBN-a) and ``layerX.Y.IN`` plus an InstanceNorm stem ``bn1`` (IBN-b),
    which are the names of mmnorm's backbones; this strips the
    ``module.`` prefix of DataParallel checkpoints and, unless
    ``keep_head``, the ImageNet classifier ``fc.*``.
    """
    out = {}
    for key, value in state.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if keep_head or not key.startswith('fc.'):
            out[key] = value
    return out
