"""Switchable statistics with the BN branch shared across processes.

Only the BN branch of SN looks across samples, and SN derives it from the
per-sample IN moments, so synchronizing SN means all-reducing small
per-channel sums, not activations:

forward
    ``[sum_n mean_in, N]`` (one all-reduce) gives the global ``mean_bn``;
    ``sum_n (var_in + (mean_in - mean_bn)^2)`` (a second one) gives the
    global ``var_bn``. Two small all-reduces instead of one with raw second
    moments, so that float32 cancellation cannot eat the variance.
backward
    the ``(C,)`` gradients of ``mean_bn`` and ``var_bn`` are summed over
    processes (one all-reduce, with the sample count), since every process
    normalizes with the same statistics.

Every sample counts once, so processes with different batch sizes (and
different spatial sizes) are exact. The result equals single-process SN on
the concatenated batch, outputs and gradients alike. Plain
``torch.distributed`` collectives: works with ``gloo`` (CPU) and ``nccl``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .switchable import SwitchableMix


def _bessel(count: Tensor) -> Tensor:
    return torch.where(count > 1, count / (count - 1).clamp(min=1),
                       torch.ones_like(count))


class SyncSwitchableMix(SwitchableMix):
    """:class:`SwitchableMix` whose BN statistics span a process group.

    Args:
        flat_input: see :class:`SwitchableMix`.
        process_group: the group to synchronize over (default: all).
    """

    def __init__(self, flat_input: bool = False,
                 process_group: Optional[dist.ProcessGroup] = None) -> None:
        super().__init__(flat_input)
        self.process_group = process_group

    def _all_reduce(self, t: Tensor) -> Tensor:
        dist.all_reduce(t, group=self.process_group)
        return t

    def batch_stats(self, mean_in: Tensor, var_in: Tensor
                    ) -> tuple[Tensor, Tensor]:
        channels = mean_in.shape[1]
        sums = self._all_reduce(torch.cat([
            mean_in.sum(0), mean_in.new_full((1,), mean_in.shape[0])]))
        count = sums[channels]
        mean_bn = sums[:channels] / count
        spread = self._all_reduce(
            (var_in + (mean_in - mean_bn).square()).sum(0))
        var_bn = spread / count
        if self.flat_input:
            var_bn = var_bn * _bessel(count)
        return mean_bn, var_bn

    def batch_stats_backward(self, mean_in: Tensor, mean_bn: Tensor,
                             grad_mean_bn: Tensor, grad_var_bn: Tensor
                             ) -> tuple[Tensor, Tensor]:
        channels = mean_in.shape[1]
        sums = self._all_reduce(torch.cat([
            grad_mean_bn, grad_var_bn,
            mean_in.new_full((1,), mean_in.shape[0])]))
        g_mean_bn, g_var_bn = sums[:channels], sums[channels:2 * channels]
        count = sums[2 * channels]
        bessel = _bessel(count) if self.flat_input else 1.0
        g_mean = g_mean_bn / count
        g_var = g_var_bn * bessel / count
        return (g_mean + 2.0 * (mean_in - mean_bn) * g_var,
                g_var.expand_as(mean_in))


def distributed_world_size(
        process_group: Optional[dist.ProcessGroup] = None) -> int:
    """World size of ``process_group``, 1 without an initialized group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)
