"""Recompute the population (inference) BN statistics of SN layers.

The authors' "batch average" mode (``using_moving_average=False``) does not
trust the moving average: after training it runs ~200 forward passes on
training data, averages every SN layer's batch means ``mu_bn`` and second
moments ``var_bn + mu_bn**2`` over those passes, and sets::

    running_mean = mean(mu_bn)
    running_var  = mean(var_bn + mu_bn**2) - running_mean**2

The authors' helper for this is lost; this module is mmnorm's. It works for
moving-average layers too (replacing the EMA by the exact average).
During the passes only the SN layers compute batch statistics; every other
module stays in eval mode, so plain BN layers and dropout are untouched.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..layers import SwitchableNorm


def pool_moments(means: torch.Tensor, variances: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the union of equally weighted groups.

    Args:
        means, variances: ``(K, C)`` per-group statistics.

    Returns:
        ``(C,)`` mean and variance: ``mean(var_k) + mean((mu_k - mu)^2)``,
        i.e. ``mean(var_k + mu_k^2) - mu^2`` without float cancellation.
    """
    mean = means.mean(0)
    return mean, variances.mean(0) + (means - mean).square().mean(0)


def _switchable_layers(model: nn.Module, only_batch_average: bool
                       ) -> list[SwitchableNorm]:
    return [m for m in model.modules()
            if isinstance(m, SwitchableNorm) and m.track_running_stats
            and not (only_batch_average and m.using_moving_average)]


@torch.no_grad()
def recompute_population_stats(
        model: nn.Module, batches: Iterable[Any],
        forward: Optional[Callable[[nn.Module, Any], Any]] = None,
        num_batches: int = 200, only_batch_average: bool = False) -> int:
    """Set the running statistics of SN layers from passes over ``batches``.

    Args:
        model: a model containing :class:`SwitchableNorm` layers.
        batches: an iterable of inputs, typically the training dataloader
            (preferably with test-time transforms).
        forward: ``forward(model, batch)``; default ``model(batch)``.
        num_batches: how many batches to use at most (authors: ~200).
        only_batch_average: touch only layers built with
            ``using_moving_average=False``.

    Returns:
        The number of batches used. With 0 batches nothing changes.
    """
    if num_batches < 1:
        raise ValueError('recompute_population_stats: num_batches must be '
                         f'>= 1, got {num_batches}')
    layers = _switchable_layers(model, only_batch_average)
    if not layers:
        return 0
    forward = forward or (lambda m, batch: m(batch))
    modes = {m: m.training for m in model.modules()}
    used = 0
    try:
        model.eval()
        for layer in layers:
            layer.train()
            layer._population = []
        for batch in batches:
            if used >= num_batches:
                break
            forward(model, batch)
            used += 1
        for layer in layers:
            # batches whose statistics are void (e.g. SyncSN with every
            # rank's batch empty) are left out
            valid = [bool(ok) for _, _, ok in layer._population or ()]
            if not any(valid):
                continue
            means = torch.stack([m for (m, _, _), ok
                                 in zip(layer._population, valid) if ok])
            variances = torch.stack([v for (_, v, _), ok
                                     in zip(layer._population, valid) if ok])
            mean, var = pool_moments(means, variances)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    finally:
        for layer in layers:
            layer._population = None
        for module, training in modes.items():
            module.training = training
    return used
