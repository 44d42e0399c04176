"""Test (and evaluate) a checkpoint on an OpenMMLab config.

Same interface as mmdet's ``tools/test.py``; the config's ``default_scope``
decides the toolkit. Checkpoints load with ``weights_only=True``.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher ...] [--tta]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))

from mmengine.config import Config, DictAction  # noqa: E402

import mmnorm  # noqa: E402,F401
from mmnorm.compat.checkpoint import refuse_unsafe_checkpoints  # noqa: E402
from mmnorm.engine.launch import LAUNCHERS  # noqa: E402
from mmnorm.engine.toolkits import build_runner, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the metrics')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show-dir', help='save visualized predictions')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (config tta_model)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none')
    parser.add_argument('--dist-backend', choices=('nccl', 'gloo', 'mpi'))
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Turn on the toolkit's visualization hook, saving to ``show_dir``."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise SystemExit('--show-dir needs default_hooks.visualization in '
                         'the config')
    scope = cfg.get('default_scope')
    if scope == 'mmaction':
        hook.enable = True
        hook.out_dir = show_dir
    else:
        hook.draw = True
        if scope == 'mmdet':
            hook.test_out_dir = show_dir
        else:
            cfg.visualizer.save_dir = show_dir


def build_cfg(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('--tta needs tta_model and tta_pipeline in the '
                             'config')
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    runner = build_runner(cfg, args.launcher, args.dist_backend)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must be a .pkl or .pickle file')
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    with refuse_unsafe_checkpoints():
        runner.test()


if __name__ == '__main__':
    main()
