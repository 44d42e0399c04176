"""Hook that chains the KN layers of necks and heads before training and
logs how the KN layers used their predictions."""
from __future__ import annotations

from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...layers.kn import KalmanNorm
from ...models.kalman_chain import wire_kalman_chains


@HOOKS.register_module()
class KalmanChainHook(Hook):
    """Wire ``norm_cfg=dict(type='KN')`` ConvModules (FPN, RPN/RoI heads,
    decode heads) into data-flow chains with
    :func:`mmnorm.models.kalman_chain.wire_kalman_chains` when training
    starts, and every ``interval`` iterations log the share of KN layers
    whose last forward combined observation and prediction
    (``kn/combined``) or fell back to the observation because the
    prediction diverged (``kn/diverged``). KN backbones (``ResNetKN``) are
    chained by themselves.

    Config::

        custom_hooks = [dict(type='KalmanChainHook')]
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) \
                or interval < 1:
            raise ValueError(f'KalmanChainHook: interval must be a positive '
                             f'int, got {interval!r}')
        self.interval = interval

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        wired = wire_kalman_chains(self._model(runner))
        total = sum(isinstance(m, KalmanNorm)
                    for m in self._model(runner).modules())
        runner.logger.info(f'KalmanChainHook: {total} KN layers, {wired} in '
                           f'ConvModules chained by data flow')

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        layers = [m for m in self._model(runner).modules()
                  if isinstance(m, KalmanNorm)]
        if not layers:
            return
        for kind in ('combined', 'diverged'):
            share = sum(m.kn_last_prior == kind for m in layers) / len(layers)
            runner.message_hub.update_scalar(f'train/kn/{kind}', share)
