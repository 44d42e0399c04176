"""Synchronized SN and SSN: ``type='SyncSN'`` and ``type='SyncSSN'``.

The BN branch's statistics are computed over all processes of the group
(see :mod:`mmnorm.ops.distributed`); IN and LN stay per sample. Without an
initialized process group, with one process, or in eval mode (running
statistics agree on every rank) the layers are exactly SN / SSN.

They deliberately do not subclass ``nn.SyncBatchNorm``: mmengine turns every
``SyncBatchNorm`` back into plain BN in non-distributed runs.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..ops.distributed import SyncSwitchableMix, distributed_world_size
from ..ops.moment_norm import _stat_dtype
from ..ops.switchable import SwitchableMix
from .sn import SwitchableNorm
from .ssn import SparseSwitchableNorm


class _EmptyBatchParticipation(torch.autograd.Function):
    """Takes part in the collectives of a synchronized layer with an empty
    local batch (e.g. a mask head without positives on this rank), so that
    the other ranks do not wait forever: zero sums and a zero count in
    forward, zero gradient sums in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, mix: SyncSwitchableMix, channels: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # same dtype as the statistics the other ranks reduce
        empty = x.new_zeros((0, channels), dtype=_stat_dtype(x))
        mean_bn, var_bn, valid = mix.batch_stats_with_valid(empty, empty)
        ctx.mix, ctx.channels = mix, channels
        ctx.mark_non_differentiable(mean_bn, var_bn, valid)
        return x.clone(), mean_bn, var_bn, valid

    @staticmethod
    def backward(ctx, grad: Tensor, *unused):
        zeros = grad.new_zeros(ctx.channels, dtype=_stat_dtype(grad))
        ctx.mix.batch_stats_backward(zeros.new_zeros((0, ctx.channels)),
                                     zeros, zeros, zeros)
        return grad, None, None


class _SynchronizedBatchStats:
    """Mixin: share the BN statistics of a switchable layer across
    processes while training."""

    process_group = None

    def _synchronized(self) -> bool:
        return self.training and distributed_world_size(
            self.process_group) > 1

    def _mix(self, flat: bool) -> SwitchableMix:
        if self._synchronized():
            return SyncSwitchableMix(flat, self.process_group)
        return super()._mix(flat)

    def _empty_output(self, input: Tensor, *weights: Tensor) -> Tensor:
        out = super()._empty_output(input, *weights)
        if not self._synchronized():
            return out
        out, mean_bn, var_bn, valid = _EmptyBatchParticipation.apply(
            out, SyncSwitchableMix(input.dim() == 2, self.process_group),
            self.num_features)
        if self.track_running_stats:
            # keep buffers equal on all ranks; unchanged (as in SN) when no
            # rank has a sample, decided on the device
            self._track(mean_bn, var_bn, valid=valid)
        return out


class SyncSwitchableNorm(_SynchronizedBatchStats, SwitchableNorm):
    """SN with the BN branch synchronized across processes.

    Same arguments as :class:`SwitchableNorm`; ``process_group`` (Python
    only) restricts the synchronization to a group.
    """

    def __init__(self, num_features: int, *args,
                 process_group: Optional[object] = None, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.process_group = process_group


class SyncSparseSwitchableNorm(_SynchronizedBatchStats,
                               SparseSwitchableNorm):
    """SSN with the BN branch synchronized across processes."""

    def __init__(self, num_features: int, *args,
                 process_group: Optional[object] = None, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.process_group = process_group


def _register_pairs() -> None:
    from ..compat.registry import register_sync_pair
    register_sync_pair(SwitchableNorm, SyncSwitchableNorm)
    register_sync_pair(SparseSwitchableNorm, SyncSparseSwitchableNorm)


_register_pairs()


def _swap(module: nn.Module, target: Callable[[type], Optional[type]],
          drop: tuple[str, ...] = (), **extra) -> nn.Module:
    """Replace every layer whose exact class has a ``target`` class by a
    ``target`` layer with the same parameters, buffers, mode and
    attributes, ``drop`` removed and ``extra`` set."""
    from ..converters import replace_modules, retype

    def make(layer: nn.Module) -> Optional[nn.Module]:
        cls = target(type(layer))
        return None if cls is None else retype(layer, cls, drop, **extra)

    return replace_modules(module, make)


def convert_sync_sn(module: nn.Module,
                    process_group: Optional[object] = None) -> nn.Module:
    """Replace every layer that has a registered synchronized version
    (SN -> SyncSN, SSN -> SyncSSN, and pairs added with
    :func:`mmnorm.compat.register_sync_pair`) by that version. Children are
    replaced in place; returns the converted module. The new layers share
    the old ones' parameter tensors. Call it before building the optimizer
    and wrapping the model in DDP.

    Args:
        module: any module.
        process_group: restrict the synchronization to this group
            (default: the whole world).
    """
    from ..compat.registry import sync_version
    return _swap(module, sync_version, process_group=process_group)


def revert_sync_sn(module: nn.Module) -> nn.Module:
    """Replace every registered synchronized layer (SyncSN, SyncSSN, ...)
    by its plain version."""
    from ..compat.registry import local_version
    return _swap(module, local_version, drop=('process_group',))
