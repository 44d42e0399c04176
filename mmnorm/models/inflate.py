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

The patch ``inflate-bn-loader`` of :mod:`mmnorm.compat.patches` (applied
by ``import mmnorm``, also when mmaction2 is imported later) replaces
``ResNet3d._inflate_bn_params`` by a dispatcher: a registered mmnorm layer
(:func:`mmnorm.compat.register_norm_layer`: SN, SSN, SyncSN, SyncSSN, KN,
IBN, ...) goes to :func:`mmnorm.converters.load_bn_entries`; every other
layer goes to mmaction2's original function, unchanged. mmaction2's 2D
torchvision loader ``ResNet._load_bn_params`` gets the same dispatcher
(patch ``torchvision-bn-loader``).

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

**Rules** (:func:`inflate_switchable_params`)

* BN-shaped entries (``weight``, ``bias``, ``running_mean``,
  ``running_var``, ``num_batches_tracked``) are copied like BN's, so an SN
  model starts from a BN checkpoint's affine parameters and statistics
  (IBN: split between its ``IN`` and ``BN`` parts).
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

import logging
from typing import MutableSequence, Optional

from torch import Tensor, nn

from ..converters import BN_ENTRIES, load_bn_entries

__all__ = ['BN_ENTRIES', 'GroupNorm3d', 'inflate_switchable_params',
           'install', 'is_installed', 'uninstall']

_PATCH = 'inflate-bn-loader'


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


def inflate_switchable_params(norm3d: nn.Module,
                              state_dict_2d: dict[str, Tensor],
                              module_name_2d: str,
                              inflated_param_names: MutableSequence[str],
                              logger: Optional[logging.Logger] = None
                              ) -> None:
    """Initialise a registered mmnorm layer from the 2D layer
    ``module_name_2d``.

    Same contract as mmaction2's ``ResNet3d._inflate_bn_params``: copies
    what matches from ``state_dict_2d`` and appends the 2D keys it used to
    ``inflated_param_names``. Norm layers carry no temporal axis, so
    "inflating" them is a copy. See the module doc for the rules.

    Args:
        norm3d: the 3D model's norm layer.
        state_dict_2d: the 2D checkpoint's state dict.
        module_name_2d: the corresponding 2D layer's name, e.g. ``'bn1'``
            or ``'layer1.0.downsample.1'``.
        inflated_param_names: list the caller uses to report leftovers.
        logger: where to log; default mmengine's current logger.
    """
    load_bn_entries(norm3d, state_dict_2d, module_name_2d,
                    inflated_param_names, action='inflate', logger=logger)


def install() -> bool:
    """Make mmaction2's 2D->3D inflation handle mmnorm layers: applies the
    patch ``inflate-bn-loader`` (``import mmnorm`` already does).

    Returns:
        Whether the hook is in place (False: this mmaction2 has no
        ``ResNet3d._inflate_bn_params``).
    """
    from ..compat import patches
    patches.install()
    return is_installed()


def uninstall() -> None:
    """Restore mmaction2's own ``_inflate_bn_params``. Backbones built while
    the hook was in place (``ResNet3dLayer`` copies it) keep it."""
    from ..compat import patches
    patches.uninstall((_PATCH,))


def is_installed() -> bool:
    """Whether the patch is in effect."""
    from ..compat import patches
    return patches.is_applied(_PATCH)
