"""Hook that recomputes SN population statistics during training.

Needed for SN layers built with ``using_moving_average=False`` (the
authors' "batch average" mode), whose running buffers are not updated while
training. The hook runs before checkpointing (priority ABOVE_NORMAL, the
checkpoint hook is VERY_LOW), so saved checkpoints and validation both see
fresh statistics.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..population import _switchable_layers, recompute_population_stats


def _forward_features(model: torch.nn.Module, data: Any) -> None:
    data = model.data_preprocessor(data, False)
    if isinstance(data, dict):
        model(**data, mode='tensor')
    else:
        model(*data, mode='tensor')


@HOOKS.register_module()
class PopulationStatsHook(Hook):
    """Recompute SN running statistics from training batches.

    Args:
        num_batches: batches per recomputation (authors: ~200).
        interval: every ``interval`` epochs (``by_epoch``) or iterations,
            and always at the end of training.
        by_epoch: follow epochs or iterations.
        only_batch_average: only layers with ``using_moving_average=False``.

    Config::

        custom_hooks = [dict(type='PopulationStatsHook', num_batches=200)]
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches: int = 200, interval: int = 1,
                 by_epoch: bool = True,
                 only_batch_average: bool = True) -> None:
        if num_batches < 1 or interval < 1:
            raise ValueError('PopulationStatsHook: num_batches and interval '
                             f'must be >= 1, got {num_batches}, {interval}')
        self.num_batches = num_batches
        self.interval = interval
        self.by_epoch = by_epoch
        self.only_batch_average = only_batch_average

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval)
                              or self.is_last_train_epoch(runner)):
            self.recompute(runner)

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[Any] = None,
                         outputs: Optional[Any] = None) -> None:
        if not self.by_epoch and (
                self.every_n_train_iters(runner, self.interval)
                or runner.iter + 1 >= runner.max_iters):
            self.recompute(runner)

    def recompute(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        used = recompute_population_stats(
            model, runner.train_dataloader, _forward_features,
            self.num_batches, self.only_batch_average)
        if used and get_world_size() > 1:
            # Pool first and second moments over ranks.
            for layer in _switchable_layers(model, self.only_batch_average):
                local_mean = layer.running_mean.clone()
                all_reduce(layer.running_mean, op='mean')
                spread = layer.running_var + (
                    local_mean - layer.running_mean).square()
                all_reduce(spread, op='mean')
                layer.running_var.copy_(spread)
        runner.logger.info(f'PopulationStatsHook: recomputed SN statistics '
                           f'from {used} batches')
