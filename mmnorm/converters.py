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
import inspect
import logging
import math
from typing import Callable, Mapping, MutableSequence, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

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
            uniform 1/3, like a freshly built SN layer; 1: BN alone, the
            other branches weigh exactly 0). Shared with
            :func:`convert_norms`.
        sparse: also add SSN's ``radius`` (0) and ``mean_choice`` /
            ``var_choice`` (-1, not fixed).
        strip_prefix: drop this prefix from every key (e.g. ``module.``).
    """
    out = {}
    for key, value in state.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix):]
        out[key] = value
    logits = _mixing_logits(bn_ratio)
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


# ---------------------------------------------------------------------------
# Module-level conversion: the machinery shared by convert_norms /
# revert_norms, convert_sync_sn, the toolkits' BN loaders (patched in
# mmnorm.compat) and collapse_fixed_norms.

#: Entries of a BN layer's state dict.
BN_ENTRIES = ('weight', 'bias', 'running_mean', 'running_var',
              'num_batches_tracked')
#: BN entries whose absence from an old checkpoint is normal.
OPTIONAL_BN_ENTRIES = ('num_batches_tracked',)


def replace_modules(module: nn.Module,
                    make: Callable[[nn.Module], Optional[nn.Module]]
                    ) -> nn.Module:
    """Replace, depth first, every module for which ``make`` returns a
    module (``None``: keep it and look inside). Children are replaced in
    place; returns ``module`` or its replacement. The traversal of
    :func:`convert_norms`, :func:`revert_norms` and
    :func:`mmnorm.convert_sync_sn`."""
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        swapped = replace_modules(child, make)
        if swapped is not child:
            setattr(module, name, swapped)
    return module


def _accepts_bn_state(layer: nn.Module) -> bool:
    from .compat.registry import lookup
    info = lookup(layer)
    return info.bn_shaped if info is not None \
        else isinstance(layer, _BatchNorm)


def _not_bn_shaped(layer: nn.Module, where: str) -> ValueError:
    return ValueError(
        f'{where}: {type(layer).__name__} cannot take the entries of a '
        'BatchNorm checkpoint: it is not BN-shaped (register_norm_layer('
        '..., bn_shaped=True)) and registers no BN loader '
        '(mmnorm.compat.register_bn_loader). Load a checkpoint of this '
        'layer type instead.')


def fill_from_bn(layer: nn.Module, state: Mapping[str, Tensor],
                 prefix: str = '') -> list[str]:
    """Fill ``layer`` in place from one BN layer's entries
    ``state[prefix + 'weight']``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked`` (those present).

    A layer with a registered BN loader (IBN: the first/last channels to
    ``IN``, the others to ``BN``; Switchable Whitening: a diagonal
    covariance) goes through it; a BN-shaped layer (SN, SSN, KN, BN) takes
    the entries as they are.

    Returns:
        The keys of ``state`` used.

    Raises:
        ValueError: ``layer`` is neither, or a BN-shaped entry has another
            shape than the layer's.
    """
    from .compat.registry import bn_loader
    loader = bn_loader(layer)
    if loader is not None:
        return list(loader(layer, state, prefix))
    if not _accepts_bn_state(layer):
        raise _not_bn_shaped(layer, 'fill_from_bn')
    targets = layer.state_dict(keep_vars=True)
    used = []
    for name in BN_ENTRIES:
        key = prefix + name
        if key not in state or name not in targets:
            continue
        if tuple(state[key].shape) != tuple(targets[name].shape):
            raise ValueError(
                f'{type(layer).__name__}: {key} has shape '
                f'{tuple(state[key].shape)}, the layer\'s {name} '
                f'{tuple(targets[name].shape)}')
        with torch.no_grad():
            targets[name].copy_(state[key])
        used.append(key)
    return used


def ibn_from_bn(layer: nn.Module, state: Mapping[str, Tensor],
                prefix: str = '') -> list[str]:
    """BN loader of :class:`mmnorm.IBN` (see :func:`fill_from_bn`): BN's
    per-channel entries split at IBN's boundary. The ``IN`` part's
    channels get their ``weight``/``bias`` (IN keeps no statistics), the
    ``BN`` part all five entries of its channels. Entries of another
    length are not used."""
    channels, k = layer.num_features, layer.in_channels
    in_part = slice(0, k) if layer.in_first else slice(channels - k, None)
    bn_part = slice(k, None) if layer.in_first else slice(0, channels - k)
    used = []
    with torch.no_grad():
        for name in BN_ENTRIES:
            value = state.get(prefix + name)
            if value is None:
                continue
            if name == 'num_batches_tracked':
                layer.BN.num_batches_tracked.copy_(value)
            elif value.dim() != 1 or value.shape[0] != channels:
                continue
            else:
                if name in ('weight', 'bias'):
                    getattr(layer.IN, name).copy_(value[in_part])
                getattr(layer.BN, name).copy_(value[bn_part])
            used.append(prefix + name)
    return used


def _uniform_lambdas(layer: nn.Module, names: list[str]) -> bool:
    lambdas = [getattr(layer, n) for n in names
               if n in ('mean_weight', 'var_weight')]
    return bool(lambdas) and all(
        bool((lam == lam.flatten()[0]).all()) for lam in lambdas)


def _own_entries_in(layer: nn.Module, state: Mapping[str, Tensor],
                    prefix: str) -> bool:
    """Whether ``state`` holds any entry under ``layer``'s own names that
    a BN layer would not have (an SN / IBN / SW checkpoint)."""
    return any(prefix + k in state for k in layer.state_dict()
               if k not in BN_ENTRIES)


def _uses_loader(layer: nn.Module, state: Mapping[str, Tensor],
                 prefix: str) -> bool:
    from .compat.registry import bn_loader
    return bn_loader(layer) is not None and not _own_entries_in(
        layer, state, prefix)


def load_bn_entries(layer: nn.Module, state: Mapping[str, Tensor],
                    module_name: str, used: MutableSequence[str],
                    action: str = 'load',
                    logger: Optional[logging.Logger] = None) -> None:
    """Initialise ``layer`` from the checkpoint layer ``module_name``: the
    contract of mmaction2's ``ResNet._load_bn_params`` and
    ``ResNet3d._inflate_bn_params``, for any registered layer.

    * The layer's own entries are copied where the checkpoint has them (an
      SN checkpoint: mixing weights; an IBN checkpoint: ``bn1.IN.weight``);
      for a BN-shaped layer BN's entries are its own (SN takes a BN
      checkpoint's affine parameters and statistics, its mixing weights
      keep their initialisation);
    * a layer with a BN loader and only BN entries in the checkpoint is
      filled by :func:`fill_from_bn`; one that is not BN-shaped and has
      no loader is refused with a ``ValueError``;
    * every layer gets one log line naming what was copied and what kept
      its initialisation; a missing or wrongly shaped BN entry is a
      warning. Nothing is skipped without a log line.

    Args:
        layer: the model's norm layer.
        state: the checkpoint's state dict.
        module_name: the checkpoint layer's name, e.g. ``'bn1'``.
        used: the caller's list of checkpoint keys used (appended to).
        action: the verb of the log line (``'load'``, ``'inflate'``).
        logger: default mmengine's current logger.
    """
    if logger is None:
        from mmengine.logging import MMLogger
        logger = MMLogger.get_current_instance()
    prefix = f'{module_name}.' if module_name else ''
    kind = type(layer).__name__
    where = '2D checkpoint' if action == 'inflate' else 'checkpoint'
    if _uses_loader(layer, state, prefix):
        taken = fill_from_bn(layer, state, prefix)
        used.extend(k for k in taken if k not in used)
        missing = [e for e in BN_ENTRIES if e not in OPTIONAL_BN_ENTRIES
                   and prefix + e not in taken]
        line = (f'{action} {module_name} into {kind} from BN entries: '
                f"used {', '.join(k[len(prefix):] for k in taken) or 'none'}")
        if missing:
            line += (f'; not in the {where} or not usable, left unchanged: '
                     f"{', '.join(missing)}")
        logger.log(logging.WARNING if missing else logging.INFO, line)
        return
    if not _accepts_bn_state(layer) and not _own_entries_in(
            layer, state, prefix):
        raise _not_bn_shaped(layer, f'{action} {module_name}')
    targets = layer.state_dict(keep_vars=True)
    expected = [e for e in BN_ENTRIES if e in targets] \
        if _accepts_bn_state(layer) else []
    # BN's entries first (in BN's order), then the layer's own
    order = sorted(targets, key=lambda n: (
        (0, BN_ENTRIES.index(n)) if n in BN_ENTRIES else (1, 0)))
    copied, absent, mismatched, bad = [], [], [], False
    for name in order:
        tensor, source = targets[name], state.get(prefix + name)
        if source is None:
            absent.append(name)
            bad = bad or (name in expected
                          and name not in OPTIONAL_BN_ENTRIES)
            continue
        if tuple(source.shape) != tuple(tensor.shape):
            mismatched.append(f'{name} {tuple(source.shape)} in the '
                              f'checkpoint vs {tuple(tensor.shape)}')
            bad = bad or name in expected
            continue
        with torch.no_grad():
            tensor.copy_(source)
        copied.append(name)
        if prefix + name not in used:
            used.append(prefix + name)
    parts = [f'{action} {module_name} into {kind}: copied '
             f"{', '.join(copied) or 'nothing'}"]
    if absent:
        parts.append(f'not in the {where}, left unchanged: '
                     f"{', '.join(absent)}")
    if mismatched:
        parts.append(f"wrong shape, left unchanged: {'; '.join(mismatched)}")
    kept = absent + [m.split(' ', 1)[0] for m in mismatched]
    if _uniform_lambdas(layer, kept):
        parts.append('mixing weights as initialized (uniform over IN/LN/BN)')
    if any(m.startswith(('mean_weight ', 'var_weight ')) for m in mismatched):
        parts.append('an official SN checkpoint? convert it first with '
                     'tools/model_converters/official_sn_to_mmnorm.py')
    level = logging.WARNING if bad or mismatched else logging.INFO
    logger.log(level, '; '.join(parts))


def adapt_bn_state_dict(model: nn.Module, state: Mapping[str, Tensor]
                        ) -> Mapping[str, Tensor]:
    """For loaders that match keys (mmengine's ``load_state_dict``): every
    layer of ``model`` with a BN loader whose entries in ``state`` are a BN
    layer's is filled from them now (:func:`fill_from_bn`), and in the
    returned copy of ``state`` the BN entries it used are replaced by the
    layer's own entries, so the rest of the loading matches keys as
    usual. Returns ``state`` itself if there is no such layer."""
    from .compat.registry import bn_loader
    out = None
    for name, layer in model.named_modules():
        prefix = f'{name}.' if name else ''
        if bn_loader(layer) is None or not any(
                prefix + e in state for e in BN_ENTRIES) \
                or not _uses_loader(layer, state, prefix):
            continue
        if out is None:
            out = type(state)(state) if isinstance(state, dict) \
                else dict(state)
            metadata = getattr(state, '_metadata', None)
            if metadata is not None:
                out._metadata = metadata
        for key in fill_from_bn(layer, state, prefix):
            out.pop(key, None)
        for key, value in layer.state_dict().items():
            out[prefix + key] = value
    return state if out is None else out


def _mixing_logits(bn_ratio: float) -> Tensor:
    """:func:`bn_mixing_logits`, and for ``bn_ratio=1`` BN alone (the other
    branches get weight exactly 0). Used by :func:`bn_to_switchable` and
    :func:`convert_norms`."""
    if bn_ratio == 1:
        return torch.tensor([ABSENT, ABSENT, 0.0])
    return bn_mixing_logits(bn_ratio)


_FROM_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_source(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    from .compat.registry import is_norm_layer
    return (not is_norm_layer(module)
            and (type(module) in kinds
                 or (isinstance(module, _BatchNorm)
                     and not isinstance(module, nn.SyncBatchNorm)
                     and _FROM_BN[0] in kinds
                     and type(module).__name__ == '_BatchNormXd')))


def _build_target(cfg: Mapping, source: nn.Module) -> nn.Module:
    from mmengine.registry import MODELS
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise ValueError(f'convert_norms: cfg type {kind!r} is not a '
                         "registered layer; use a name such as 'SN', "
                         "'SSN', 'SyncSN', 'IBN', 'KN' (import mmnorm "
                         'first) or a layer class')
    if isinstance(source, nn.GroupNorm):
        channels, carried = source.num_channels, dict(
            eps=source.eps, affine=source.affine)
    else:
        channels, carried = source.num_features, dict(
            eps=source.eps, momentum=source.momentum, affine=source.affine)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values()) \
        and 'unknown' not in params
    for key, value in carried.items():
        if key not in cfg and (key in params or takes_any):
            cfg[key] = value
    return cls(channels, **cfg)


def convert_norms(model: nn.Module, cfg: Optional[Mapping] = None, *,
                  sync_bn: bool = False, group_norm: bool = False,
                  bn_ratio: Optional[float] = None,
                  process_group: Optional[object] = None) -> nn.Module:
    """Replace the BatchNorm layers of any model by mmnorm layers.

    Works on any ``nn.Module`` (torchvision or timm models, not only
    OpenMMLab ones), in the style of ``SyncBatchNorm.
    convert_sync_batchnorm``: children are replaced in place and the
    (possibly new) top module is returned. Each new layer is built from
    ``cfg`` through mmengine's ``MODELS`` registry with the old layer's
    channel count, ``eps``, ``momentum`` and ``affine`` (unless ``cfg``
    sets them), takes the old layer's ``weight``, ``bias`` and running
    statistics (:func:`fill_from_bn`, so IBN splits them), its device,
    dtype, mode and ``requires_grad``, and remembers the class it replaced
    (``converted_from``) for :func:`revert_norms`.

    Args:
        model: the model.
        cfg: the new layer, e.g. ``dict(type='SN')`` (default),
            ``dict(type='SSN')``, ``dict(type='IBN', ratio=0.5)``.
        sync_bn: also replace ``nn.SyncBatchNorm`` (by ``cfg``'s layer; use
            ``type='SyncSN'`` for a synchronized one).
        group_norm: also replace ``nn.GroupNorm`` (affine parameters only:
            the new layer's running statistics keep their initial values).
        bn_ratio: initial BN share of SN/SSN mixing weights (as in
            :func:`bn_to_switchable`); default: the layer's own
            initialisation (uniform over IN, LN, BN). ``1`` makes the SN
            layer compute exactly what the BN layer computed.
        process_group: for synchronized layers.

    Returns:
        The converted model. Layers that are already mmnorm layers, and
        any other module, are left alone.
    """
    cfg = dict(type='SN') if cfg is None else cfg
    kinds = _FROM_BN + ((nn.SyncBatchNorm,) if sync_bn else ()) \
        + ((nn.GroupNorm,) if group_norm else ())
    logits = None if bn_ratio is None else _mixing_logits(bn_ratio)

    def make(module: nn.Module) -> Optional[nn.Module]:
        if not _is_source(module, kinds):
            return None
        new = _build_target(cfg, module)
        keep = ('weight', 'bias') if isinstance(module, nn.GroupNorm) \
            else BN_ENTRIES
        entries = {k: v for k, v in module.state_dict().items() if k in keep}
        fill_from_bn(new, entries)
        if logits is not None and hasattr(new, 'mean_weight'):
            with torch.no_grad():
                new.mean_weight.copy_(logits)
                new.var_weight.copy_(logits)
        if process_group is not None and hasattr(new, 'process_group'):
            new.process_group = process_group
        frozen = getattr(module, 'weight', None) is not None \
            and not module.weight.requires_grad
        if frozen:
            for param in new.parameters():
                param.requires_grad_(False)
        reference = next(module.parameters(), None)
        if reference is None:
            reference = next(module.buffers(), None)
        if reference is not None:
            new.to(device=reference.device, dtype=reference.dtype)
        new.train(module.training)
        new.converted_from = type(module)
        return new

    return replace_modules(model, make)


def _exactly_bn(layer: nn.Module) -> bool:
    """Whether ``layer`` computes exactly what BatchNorm computes."""
    from .layers.fixed import FixedSourceNorm
    if isinstance(layer, FixedSourceNorm):
        return layer.mean_source == layer.var_source == 2
    from .layers import SparseSwitchableNorm, SwitchableNorm
    if isinstance(layer, SparseSwitchableNorm) and layer.fixed:
        return int(layer.mean_choice) == int(layer.var_choice) == 2
    if isinstance(layer, SwitchableNorm) and layer.using_bn:
        with torch.no_grad():
            weights = [w for flat in (False, True)
                       for w in layer.mixing_weights(flat)]
        return all(bool((w[:2] == 0).all()) and float(w[2]) == 1.0
                   for w in weights)
    return False


def revert_norms(model: nn.Module, strict: bool = True) -> nn.Module:
    """The reverse of :func:`convert_norms` where it is exact: every mmnorm
    layer that computes exactly BatchNorm (SN / SyncSN whose mixing
    weights are BN alone, SSN fixed to BN / BN, ``FixedSourceNorm(BN,
    BN)``) becomes the BN class it replaced (``converted_from``; else the
    ``nn.BatchNorm1d/2d/3d`` of the last input rank) with the same
    parameters, statistics, mode and ``requires_grad``.

    Args:
        strict: raise if another mmnorm layer is left (IBN, KN, SN with
            mixed statistics: no BN computes the same); False leaves
            them.

    Raises:
        ValueError: with ``strict``, naming the layers left.
    """
    from .compat.registry import is_norm_layer
    from .deploy import native_bn
    left = []
    for name, layer in model.named_modules():
        if is_norm_layer(layer) and not _exactly_bn(layer) and not any(
                name.startswith(n + '.') for n in left):
            left.append(name or type(layer).__name__)
    if strict and left:
        raise ValueError(
            'revert_norms: these mmnorm layers do not compute BatchNorm, so '
            f'no BatchNorm can replace them exactly: {left[:5]}'
            f"{' and more' if len(left) > 5 else ''}. Pass strict=False to "
            'keep them.')

    def make(module: nn.Module) -> Optional[nn.Module]:
        if not (is_norm_layer(module) and _exactly_bn(module)):
            return None
        new = native_bn(module, getattr(module, 'converted_from', None))
        new.train(module.training)
        for param_name, param in new.named_parameters():
            param.requires_grad_(getattr(module, param_name).requires_grad)
        return new

    return replace_modules(model, make)
