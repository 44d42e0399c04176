"""Hook that logs the mixing ratios of every SN/SSN layer during training.

Every ``interval`` iterations (and at the end of training) it writes one
JSON line to ``<work_dir>/sn_ratios.jsonl``::

    {"iter": 100, "epoch": 0, "layers": {"backbone.bn1": {"mean": {...},
     "var": {...}, "radius": null, "mean_fixed": null, ...}, ...}}

and sends the ratios as scalars (``sn_ratio/<layer>/<mean|var>/<in|ln|bn>``,
plus ``sn_radius`` and ``sn_fixed_layers`` for SSN) to the runner's
visualizer backends, e.g. TensorBoard when configured. Only the main
process writes.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...analysis.ratios import collect_ratios


@HOOKS.register_module()
class SNRatioLoggerHook(Hook):
    """Log SN/SSN mixing ratios.

    Args:
        interval: every ``interval`` training iterations.
        filename: JSON-lines file in the work dir.

    Config::

        custom_hooks = [dict(type='SNRatioLoggerHook', interval=50)]
    """

    priority = 'BELOW_NORMAL'

    def __init__(self, interval: int = 50,
                 filename: str = 'sn_ratios.jsonl') -> None:
        if interval < 1:
            raise ValueError('SNRatioLoggerHook: interval must be >= 1, got '
                             f'{interval}')
        self.interval = interval
        self.filename = filename

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[Any] = None,
                         outputs: Optional[Any] = None) -> None:
        if (self.every_n_train_iters(runner, self.interval)
                or runner.iter + 1 >= runner.max_iters):
            self.log(runner)

    @master_only
    def log(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        layers = collect_ratios(model)
        if not layers:
            return
        step = runner.iter + 1
        record = dict(iter=step, epoch=runner.epoch, layers=layers)
        with open(osp.join(runner.work_dir, self.filename), 'a') as f:
            f.write(json.dumps(record) + '\n')
        scalars = {}
        for name, layer in layers.items():
            for kind in ('mean', 'var'):
                for branch, value in layer[kind].items():
                    scalars[f'sn_ratio/{name}/{kind}/{branch}'] = value
        radii = [r['radius'] for r in layers.values()
                 if r['radius'] is not None]
        if radii:
            scalars['sn_radius'] = max(radii)
            scalars['sn_fixed_layers'] = sum(
                bool(r['mean_fixed'] and r['var_fixed'])
                for r in layers.values() if r['radius'] is not None)
        runner.visualizer.add_scalars(scalars, step=step)
