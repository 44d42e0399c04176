"""Inflate 2D ImageNet checkpoints into mmaction2 backbones that use SN.

**Where mmaction2 breaks**

``ResNet3d(pretrained=..., pretrained2d=True)`` initialises from a 2D
checkpoint in ``ResNet3d._inflate_weights``: for every ``ConvModule`` it
repeats the 2D conv kernel over time (divided by the temporal kernel size)
in ``_inflate_conv_params`` and hands the norm layer to
``_inflate_bn_params``. That function indexes the 2D state dict with *every
parameter name of the 3D norm layer*: for SN it asks for
``bn1.mean_weight`` and a BN checkpoint (torchvision's or any BN ResNet)
raises ``KeyError: 'bn1.mean_weight'``. Shape mismatches are reported with
``warnings.warn`` (not the log) and the rest of that layer is skipped, and
buffers missing from the checkpoint are skipped without a word.

**The fix, and why it patches the stock class**

:func:`install` (run by ``import mmnorm.mmaction``, i.e. by the config's
``custom_imports``) replaces ``ResNet3d._inflate_bn_params`` by a
dispatcher: a layer of mmnorm's SN family (:class:`~mmnorm.SwitchableNorm`
and its subclasses SSN, SyncSN, SyncSSN) goes to
:func:`inflate_switchable_params`; every other layer goes to mmaction2's
original function, unchanged.

A registered subclass (say ``ResNet3dSN``) was the alternative. It was
rejected because:

* users switch normalizers with one ``norm_cfg`` line everywhere else
  (mmdet, mmseg, mmaction2's own ``BN3d``/``SyncBN``); a backbone type that
  must change together with the normalizer is a trap, and the stock type
  would keep crashing with the ``KeyError`` above;
* the same loader serves most of mmaction2's 3D backbones: ``ResNet3d``,
  its subclasses (``ResNet3dSlowOnly``, the SlowFast pathways,
  ``ResNet3dCSN``, ``ResNet2Plus1d``) and ``ResNet3dLayer`` (which copies
  the function at construction). One subclass per backbone would be needed
  and user subclasses would still break;
* the patch is keyed on the *norm layer's* type, so it changes nothing for
  models without mmnorm layers (BN models inflate byte for byte as before),
  and it only touches a path that otherwise crashes or loads silently.

It is idempotent, can be undone with :func:`uninstall`, and is skipped with
a warning if a future mmaction2 no longer has the hook.

**Rules for SN-family layers** (:func:`inflate_switchable_params`)

* BN-shaped entries (``weight``, ``bias``, ``running_mean``,
  ``running_var``, ``num_batches_tracked``) are copied like BN's, so an SN
  model starts from a BN checkpoint's affine parameters and statistics.
* The mixing weights (``mean_weight``, ``var_weight``; SSN's ``radius`` and
  choice buffers) are copied when the 2D checkpoint has them (an SN
  checkpoint, e.g. from ``tools/model_converters/bn_to_sn.py`` or
  ``official_sn_to_mmnorm.py``) and otherwise keep their initialisation
  (a new SN layer: uniform over IN, LN, BN).
* Every layer gets one log line naming what was copied and what kept its
  initialisation; a missing or wrongly shaped BN entry is a warning. Nothing
  is skipped without a log line.

**GroupNorm has the same problem in another place**

mmaction2 reaches the norm of every conv block as ``ConvModule.bn``
(inflation, ``zero_init_residual``), but mmcv names a ``GN`` layer ``gn``:
``norm_cfg=dict(type='GN', ...)`` in a ``ResNet3d`` fails with
``AttributeError: 'ConvModule' object has no attribute 'bn'`` as soon as
2D weights are inflated (or ``zero_init_residual=True``, the default).
:class:`GroupNorm3d`, registered in mmaction2's registry as ``'GN3d'``
(after mmaction2's ``'BN3d'``), is ``nn.GroupNorm`` under the name ``bn``:
the stock code then inflates its weight and bias like BN's (a 2D BN
checkpoint's running statistics have no place in GN and are listed among
the entries not loaded).

The checkpoint itself is read by mmengine (``torch.load`` without
``weights_only``, which is weights-only since torch 2.6): a file holding
arbitrary objects is refused, not executed.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, MutableSequence, Optional

import torch
from mmengine.logging import MMLogger
from torch import Tensor, nn

from ..layers.sn import SwitchableNorm

#: Entries a BN layer has; everything else of an SN layer is SN's own.
BN_ENTRIES = ('weight', 'bias', 'running_mean', 'running_var',
              'num_batches_tracked')
#: BN entries whose absence from an old checkpoint is normal.
_OPTIONAL_BN_ENTRIES = ('num_batches_tracked',)

_MARK = '__mmnorm_inflation__'


class GroupNorm3d(nn.GroupNorm):
    """``nn.GroupNorm`` that mmcv names ``bn``, for mmaction2's 3D ResNets.

    Config type ``'GN3d'`` in mmaction2's scope (registered by
    ``import mmnorm.mmaction``); built like BN, channels first:
    ``norm_cfg=dict(type='GN3d', num_groups=32)``. Same computation and
    parameters as ``GN``; see the module doc for why the name matters.

    Args:
        num_features: channel count.
        num_groups: number of groups (required, like mmcv's ``GN``).
        eps: added to the variance. Default: 1e-5.
        affine: learn a per-channel weight and bias. Default: True.
    """

    _abbr_ = 'bn'

    def __init__(self, num_features: int, *, num_groups: int,
                 eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_groups, num_features, eps=eps, affine=affine)


def _uniform_lambdas(norm: nn.Module, names: list[str]) -> bool:
    """Whether the mixing weights among ``names`` are all uniform."""
    lambdas = [getattr(norm, n) for n in names
               if n in ('mean_weight', 'var_weight')]
    return bool(lambdas) and all(
        bool((lam == lam.flatten()[0]).all()) for lam in lambdas)


def inflate_switchable_params(norm3d: nn.Module,
                              state_dict_2d: dict[str, Tensor],
                              module_name_2d: str,
                              inflated_param_names: MutableSequence[str],
                              logger: Optional[logging.Logger] = None
                              ) -> None:
    """Initialise an SN-family layer from the 2D layer ``module_name_2d``.

    Same contract as mmaction2's ``ResNet3d._inflate_bn_params``: copies
    what matches from ``state_dict_2d`` and appends the 2D keys it used to
    ``inflated_param_names``. Norm layers carry no temporal axis, so
    "inflating" them is a copy. See the module doc for the rules.

    Args:
        norm3d: the 3D model's norm layer (an SN-family layer).
        state_dict_2d: the 2D checkpoint's state dict.
        module_name_2d: the corresponding 2D layer's name, e.g. ``'bn1'``
            or ``'layer1.0.downsample.1'``.
        inflated_param_names: list the caller uses to report leftovers.
        logger: where to log; default mmengine's current logger.
    """
    logger = logger or MMLogger.get_current_instance()
    copied, absent, mismatched, bad_bn = [], [], [], False
    # state_dict() holds exactly the parameters and persistent buffers a
    # checkpoint of this layer would hold; BN's entries are listed first.
    entries = norm3d.state_dict(keep_vars=True)
    order = sorted(entries, key=lambda n: (
        BN_ENTRIES.index(n) if n in BN_ENTRIES else len(BN_ENTRIES)))
    for name in order:
        tensor = entries[name]
        key = f'{module_name_2d}.{name}'
        source = state_dict_2d.get(key)
        if source is None:
            absent.append(name)
            if name in BN_ENTRIES and name not in _OPTIONAL_BN_ENTRIES:
                bad_bn = True
            continue
        if tuple(source.shape) != tuple(tensor.shape):
            mismatched.append(f'{name} {tuple(source.shape)} in the '
                              f'checkpoint vs {tuple(tensor.shape)}')
            bad_bn = bad_bn or name in BN_ENTRIES
            continue
        with torch.no_grad():
            tensor.copy_(source)
        copied.append(name)
        inflated_param_names.append(key)

    kind = type(norm3d).__name__
    parts = [f'inflate {module_name_2d} into {kind}: copied '
             f"{', '.join(copied) or 'nothing'}"]
    if absent:
        parts.append('not in the 2D checkpoint, left unchanged: '
                     f"{', '.join(absent)}")
    if mismatched:
        parts.append(f"wrong shape, left unchanged: {'; '.join(mismatched)}")
    kept = absent + [m.split(' ', 1)[0] for m in mismatched]
    if _uniform_lambdas(norm3d, kept):
        parts.append('mixing weights as initialized (uniform over IN/LN/BN)')
    if any(m.startswith(('mean_weight ', 'var_weight ')) for m in mismatched):
        parts.append('an official SN checkpoint? convert it first with '
                     'tools/model_converters/official_sn_to_mmnorm.py')
    level = logging.WARNING if bad_bn or mismatched else logging.INFO
    logger.log(level, '; '.join(parts))


def _dispatching(original: Callable) -> Callable:
    """Wrap mmaction2's ``_inflate_bn_params`` so that SN-family layers are
    inflated by :func:`inflate_switchable_params`."""

    @functools.wraps(original)
    def inflate_bn_params(bn3d, state_dict_2d, module_name_2d,
                          inflated_param_names):
        if isinstance(bn3d, SwitchableNorm):
            return inflate_switchable_params(
                bn3d, state_dict_2d, module_name_2d, inflated_param_names)
        return original(bn3d, state_dict_2d, module_name_2d,
                        inflated_param_names)

    setattr(inflate_bn_params, _MARK, original)
    return inflate_bn_params


def _resnet3d() -> Optional[type]:
    from mmaction.models.backbones import resnet3d
    cls = getattr(resnet3d, 'ResNet3d', None)
    if cls is None or not isinstance(
            cls.__dict__.get('_inflate_bn_params'), staticmethod):
        return None
    return cls


def _hook(cls: type) -> Callable:
    return cls.__dict__['_inflate_bn_params'].__func__


def install() -> bool:
    """Make mmaction2's 2D->3D inflation handle SN layers (idempotent).

    Needs mmaction2 importable (``import mmnorm.mmaction`` does both).

    Returns:
        Whether the hook is in place.
    """
    cls = _resnet3d()
    if cls is None:
        MMLogger.get_current_instance().warning(
            'mmnorm: mmaction2 ResNet3d has no static _inflate_bn_params; '
            'SN layers are not handled when inflating 2D checkpoints')
        return False
    current = _hook(cls)
    if not hasattr(current, _MARK):
        cls._inflate_bn_params = staticmethod(_dispatching(current))
    return True


def uninstall() -> None:
    """Restore mmaction2's own ``_inflate_bn_params``. Backbones built while
    the hook was in place (``ResNet3dLayer`` copies it) keep it."""
    cls = _resnet3d()
    if cls is None:
        return
    original = getattr(_hook(cls), _MARK, None)
    if original is not None:
        cls._inflate_bn_params = staticmethod(original)


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    cls = _resnet3d()
    return cls is not None and hasattr(_hook(cls), _MARK)
