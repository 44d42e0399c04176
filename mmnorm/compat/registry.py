"""Which layer types the toolkits' BN-keyed paths should treat like BN.

The toolkits decide "is this a BatchNorm?" in many places (``norm_eval``,
``frozen_stages``, ``partial_bn``, weight-decay rules, SyncBN conversion,
BN-checkpoint loaders; see ``docs/bn_paths.md``). mmnorm's patches
(:mod:`mmnorm.compat.patches`) do not hard-code mmnorm's classes there: they
ask this registry *at call time*, so a layer registered later (e.g. the
Switchable Whitening layer) joins every patched path without touching the
patches.

Two facts are recorded per layer class:

* ``bn_shaped``: its ``weight``, ``bias``, ``running_mean`` and
  ``running_var`` are ``(C,)`` tensors with BN's meaning, so a BN
  checkpoint's entries can be copied into it one to one (SN, SSN, KN). A
  layer that is not BN-shaped (IBN's two parts, whitening's ``(G, c, c)``
  covariance) either provides a BN loader (:func:`register_bn_loader`) or
  is refused with a clear error by the loaders that copy BN keys.
* the synchronized counterpart (:func:`register_sync_pair`), used by the
  ``sync_bn`` conversion and :func:`mmnorm.convert_sync_sn`, and reversed by
  :func:`mmnorm.revert_sync_sn` and mmengine's non-distributed revert.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: ``loader(layer, state, prefix) -> used keys``: fill ``layer`` in place
#: from the BN entries ``state[prefix + 'weight']``, ``bias``,
#: ``running_mean``, ``running_var``, ``num_batches_tracked`` (those
#: present) of a BN checkpoint; return the keys of ``state`` it used.
BNLoader = Callable[[nn.Module, Mapping[str, Tensor], str], list]


@dataclass(frozen=True)
class NormLayerInfo:
    """What the patched paths know about one registered layer class."""
    cls: type
    bn_shaped: bool


_LAYERS: dict[type, NormLayerInfo] = {}
_TO_SYNC: dict[type, type] = {}
_FROM_SYNC: dict[type, type] = {}
_BN_LOADERS: dict[type, BNLoader] = {}


def _check_class(cls: object, where: str) -> type:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f'{where}: expected an nn.Module subclass, got '
                        f'{cls!r}')
    return cls


def register_norm_layer(cls: type, *, bn_shaped: bool) -> type:
    """Make the toolkits' BN-keyed paths treat ``cls`` like BatchNorm.

    Once registered, instances of ``cls`` (and of its subclasses) are put
    in eval mode by ``norm_eval`` / ``partial_bn``, get the norm rule of
    parameter-wise weight decay, and are recognised by every path that
    :mod:`mmnorm.compat.patches` patches. Registering twice is fine; the
    last call wins. Can be used as a plain call or (through
    ``functools.partial``) as a class decorator.

    Args:
        cls: an ``nn.Module`` subclass, e.g. ``SwitchableWhitening``.
        bn_shaped: ``weight``/``bias``/``running_mean``/``running_var`` are
            ``(C,)`` with BN's meaning, so BN checkpoints copy into it
            entry by entry. False for layers whose state has another shape.

    Returns:
        ``cls``, unchanged.
    """
    _check_class(cls, 'register_norm_layer')
    if not isinstance(bn_shaped, bool):
        raise TypeError('register_norm_layer: bn_shaped must be a bool, got '
                        f'{bn_shaped!r}')
    _LAYERS[cls] = NormLayerInfo(cls, bn_shaped)
    return cls


def register_sync_pair(local: type, sync: type) -> None:
    """Declare ``sync`` the synchronized version of ``local``.

    ``sync_bn='torch'`` / ``'mmcv'`` (mmengine's ``convert_sync_batchnorm``),
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` and
    :func:`mmnorm.convert_sync_sn` then turn each exact ``local`` into
    ``sync``; :func:`mmnorm.revert_sync_sn` and mmengine's
    ``revert_sync_batchnorm`` turn it back. ``sync`` must accept the same
    constructor arguments as ``local`` plus ``process_group``, and the two
    must have the same state-dict keys. Both are registered as norm layers
    (with ``local``'s ``bn_shaped``) if they are not yet.
    """
    _check_class(local, 'register_sync_pair')
    _check_class(sync, 'register_sync_pair')
    if local is sync:
        raise ValueError(f'register_sync_pair: {local.__name__} cannot be '
                         'its own synchronized version')
    _TO_SYNC[local] = sync
    _FROM_SYNC[sync] = local
    info = lookup(local)
    shaped = info.bn_shaped if info else issubclass(local, _BatchNorm)
    for cls in (local, sync):
        if cls not in _LAYERS:
            register_norm_layer(cls, bn_shaped=shaped)


def register_bn_loader(cls: type, loader: BNLoader) -> None:
    """How to initialise a ``cls`` layer from a BN layer's checkpoint
    entries (see :data:`BNLoader`), for a layer that is not BN-shaped.
    Every loader of BN checkpoints then uses it: mmengine's
    ``load_checkpoint`` / ``init_cfg=Pretrained``, mmaction2's torchvision
    and 2D->3D loaders, :func:`mmnorm.convert_norms`."""
    _check_class(cls, 'register_bn_loader')
    if not callable(loader):
        raise TypeError(f'register_bn_loader: loader must be callable, got '
                        f'{loader!r}')
    _BN_LOADERS[cls] = loader


def _by_mro(table: Mapping[type, object], cls: type) -> Optional[object]:
    for base in cls.__mro__:
        if base in table:
            return table[base]
    return None


def lookup(cls_or_module: object) -> Optional[NormLayerInfo]:
    """The registration of a class or module (through its bases), or
    None."""
    cls = cls_or_module if isinstance(cls_or_module, type) \
        else type(cls_or_module)
    return _by_mro(_LAYERS, cls)


def registered_norm_layers() -> tuple[type, ...]:
    """Every registered class, in registration order."""
    return tuple(_LAYERS)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a registered mmnorm layer."""
    return lookup(module) is not None


def is_bn_like(module: nn.Module) -> bool:
    """BN for the toolkits' purposes: any ``_BatchNorm`` or registered
    layer."""
    return isinstance(module, _BatchNorm) or is_norm_layer(module)


def sync_version(cls: type) -> Optional[type]:
    """The registered synchronized version of exactly ``cls``, or None."""
    return _TO_SYNC.get(cls)


def local_version(cls: type) -> Optional[type]:
    """The registered plain version of the synchronized ``cls``, or
    None."""
    return _FROM_SYNC.get(cls)


def sync_pairs() -> dict[type, type]:
    """``{local: sync}`` for every registered pair."""
    return dict(_TO_SYNC)


def bn_loader(module: nn.Module) -> Optional[BNLoader]:
    """The registered BN loader of ``module``'s class (through its bases),
    or None."""
    return _by_mro(_BN_LOADERS, type(module))
