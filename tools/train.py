"""Train a detector, segmentor or recognizer from an OpenMMLab config.

Same interface as mmdet's ``tools/train.py``; the config's ``default_scope``
(mmdet, mmseg or mmaction) decides the toolkit. Distributed runs use nccl
on GPUs and gloo on CPU-only machines (see ``mmnorm/engine/launch.py``).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher LAUNCHER]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

import mmnorm  # noqa: E402,F401  (layers, hooks, checkpoint and sync guards)
from mmnorm.compat.checkpoint import refuse_unsafe_checkpoints  # noqa: E402
from mmnorm.engine.launch import LAUNCHERS  # noqa: E402
from mmnorm.engine.optim_wrapper import amp_optim_wrapper_type  # noqa: E402
from mmnorm.engine.toolkits import build_runner, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision (GPU only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or from the latest one in the '
        'work dir if no path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none')
    parser.add_argument('--dist-backend', choices=('nccl', 'gloo', 'mpi'),
                        help='default: nccl with CUDA, gloo without')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a GPU: mmengine\'s AmpOptimWrapper '
                             'does not run on CPU')
        # mmnorm's lambda-clipping wrapper has its own AMP variant (one
        # unscale_ before any clipping); plain wrappers get mmengine's
        try:
            cfg.optim_wrapper.type = amp_optim_wrapper_type(
                cfg.optim_wrapper.get('type'))
        except ValueError as err:
            raise SystemExit(str(err)) from None
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit('--auto-scale-lr needs auto_scale_lr.'
                             'base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    runner = build_runner(cfg, args.launcher, args.dist_backend)
    with refuse_unsafe_checkpoints():
        runner.train()


if __name__ == '__main__':
    main()
