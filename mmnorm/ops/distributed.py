"""Switchable statistics with the BN branch shared across processes.

Only the BN branch of SN looks across samples, and SN derives it from the
per-sample IN moments, so synchronizing SN means all-reducing small
per-channel sums, not activations. One all-reduce per direction:

forward
    every process reduces its ``n`` samples' IN moments to a count, a
    centred second moment and a mean, ``m_r = mean_n mean_in`` and
    ``M2_r = sum_n (var_in + (mean_in - m_r)^2)``, and all-reduces the
    float64 payload ``[n, n m_r, M2_r + n m_r^2]`` (``2C + 1`` numbers).
    With the sums ``N``, ``S1``, ``S2``: ``mean_bn = S1 / N`` and
    ``var_bn = S2 / N - mean_bn^2``. Float64 keeps the subtraction exact
    enough (relative error about ``1e-16 (mean / std)^2``, ``1e-8`` at a
    mean ``1e4`` standard deviations from zero), where the same payload in
    float32 would lose the variance to cancellation (``4e-2`` at 300).
backward
    the ``(C,)`` gradients of ``mean_bn`` and ``var_bn`` are summed over
    processes (one all-reduce, with the sample count), since every process
    normalizes with the same statistics.

Every sample counts once, so processes with different batch sizes (and
different spatial sizes) are exact. The result equals single-process SN on
the concatenated batch, outputs and gradients alike. When no process has a
sample (a mask head without a positive RoI anywhere) the statistics are
zeros flagged invalid (``batch_stats_with_valid``), never 0/0. Nothing is
read back to the host, and every collective runs on the statistics'
device: works with ``gloo`` (CPU) and ``nccl``.
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

    def batch_stats_with_valid(self, mean_in: Tensor, var_in: Tensor
                               ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean_bn, var_bn, valid)``: the BN statistics over all
        processes' samples (``(C,)``, dtype of ``mean_in``) and a 0-dim
        bool tensor, false when no process has a sample (the statistics
        are then 0). One all-reduce."""
        count, channels = mean_in.shape
        mean64, var64 = mean_in.double(), var_in.double()
        sum_mean = mean64.sum(0)
        local_mean = sum_mean / max(count, 1)
        centred_m2 = (var64 + (mean64 - local_mean).square()).sum(0)
        payload = self._all_reduce(torch.cat([
            sum_mean.new_full((1,), count), sum_mean,
            centred_m2 + sum_mean * local_mean]))
        total = payload[0]
        valid = total > 0
        total_safe = total.clamp(min=1)
        mean_bn = payload[1:channels + 1] / total_safe
        var_bn = (payload[channels + 1:] / total_safe
                  - mean_bn.square()).clamp(min=0)
        if self.flat_input:
            var_bn = var_bn * _bessel(total)
        return mean_bn.to(mean_in.dtype), var_bn.to(mean_in.dtype), valid

    def batch_stats(self, mean_in: Tensor, var_in: Tensor
                    ) -> tuple[Tensor, Tensor]:
        mean_bn, var_bn, _ = self.batch_stats_with_valid(mean_in, var_in)
        return mean_bn, var_bn

    def batch_stats_backward(self, mean_in: Tensor, mean_bn: Tensor,
                             grad_mean_bn: Tensor, grad_var_bn: Tensor
                             ) -> tuple[Tensor, Tensor]:
        channels = mean_in.shape[1]
        sums = self._all_reduce(torch.cat([
            grad_mean_bn, grad_var_bn,
            grad_mean_bn.new_full((1,), mean_in.shape[0])]))
        g_mean_bn, g_var_bn = sums[:channels], sums[channels:2 * channels]
        count = sums[2 * channels]
        bessel = _bessel(count) if self.flat_input else 1.0
        # no sample anywhere: every gradient is 0, not 0/0
        count = count.clamp(min=1)
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
