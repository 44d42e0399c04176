"""Which mmnorm entry point a config needs, from its ``default_scope``."""
from __future__ import annotations

import importlib
from typing import Optional

ENTRY_POINTS = {'mmdet': 'mmnorm.mmdet', 'mmseg': 'mmnorm.mmseg',
                'mmaction': 'mmnorm.mmaction'}


def import_entry_point(default_scope: Optional[str]) -> Optional[str]:
    """Import mmnorm's entry point for the toolkit a config runs in.

    ``mmnorm.mmaction`` in particular must come before mmaction2's models
    (see :mod:`mmnorm.compat.mmaction`). Returns the module imported, or
    ``None`` for configs of other scopes.
    """
    module = ENTRY_POINTS.get(default_scope or '')
    if module is not None:
        importlib.import_module(module)
    return module


def load_config(path: str, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None):
    """A config with ``--cfg-options`` merged and ``work_dir`` set (default
    ``./work_dirs/<config name>``, as in the toolkits' tools)."""
    import os.path as osp

    from mmengine.config import Config
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(path))[0])
    return cfg


def build_runner(cfg, launcher: str, dist_backend: Optional[str] = None):
    """Import the toolkit's entry point, start the process group for
    ``launcher`` (gloo on CPU, nccl on GPU) and build the Runner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from .launch import configure_distributed, init_distributed
    import_entry_point(cfg.get('default_scope'))
    backend = init_distributed(launcher, dist_backend)
    configure_distributed(cfg, launcher, backend)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
