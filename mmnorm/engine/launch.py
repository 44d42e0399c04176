"""Start distributed runs on GPUs (nccl) and on CPU-only machines (gloo).

mmengine 0.10.7's own launcher cannot start on a machine without CUDA: its
``init_dist`` calls ``torch.cuda.set_device`` and the Runner wraps DDP with
``device_ids=[LOCAL_RANK]``. mmnorm's tools initialise the process group
themselves (mmengine then skips its own init) with the backend that fits the
machine, and on CPU ask for a DDP wrapper without device ids and with
``broadcast_buffers=False`` (mmengine's GPU default), so that CPU runs
behave like GPU runs.
"""
from __future__ import annotations

import os
import subprocess
from typing import Mapping, Optional

import torch
import torch.distributed as dist

LAUNCHERS = ('none', 'pytorch', 'slurm')


def choose_backend(override: Optional[str] = None) -> str:
    """``override`` (or ``$DIST_BACKEND``), else nccl with CUDA, else gloo."""
    backend = override or os.environ.get('DIST_BACKEND')
    if backend:
        if backend not in ('nccl', 'gloo', 'mpi'):
            raise ValueError(f'distributed backend must be nccl, gloo or '
                             f'mpi, got {backend!r}')
        return backend
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def slurm_env(env: Mapping[str, str], port: Optional[int] = None,
              hostname_of=None) -> dict[str, str]:
    """torch.distributed's env:// variables from a slurm job's variables.

    Args:
        env: the environment (``SLURM_PROCID``, ``SLURM_NTASKS``,
            ``SLURM_NODELIST``, ``SLURM_LOCALID``; ``MASTER_ADDR``,
            ``MASTER_PORT`` win when set).
        port: master port when ``MASTER_PORT`` is unset (default 29500).
        hostname_of: function turning a node list into its first host
            (default: ``scontrol show hostnames``).
    """
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
               if k not in env]
    if missing:
        raise RuntimeError(f'--launcher slurm needs {missing} from srun')
    if 'MASTER_ADDR' in env:
        addr = env['MASTER_ADDR']
    else:
        addr = (hostname_of or _first_slurm_host)(env['SLURM_NODELIST'])
    return dict(
        RANK=env['SLURM_PROCID'], WORLD_SIZE=env['SLURM_NTASKS'],
        LOCAL_RANK=env.get('SLURM_LOCALID', '0'), MASTER_ADDR=addr,
        MASTER_PORT=env.get('MASTER_PORT', str(port or 29500)))


def _first_slurm_host(nodelist: str) -> str:
    out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def init_distributed(launcher: str, backend: Optional[str] = None,
                     port: Optional[int] = None) -> str:
    """Initialise the default process group for ``launcher``.

    ``pytorch`` reads torchrun's variables; ``slurm`` derives them from
    srun's. Returns the backend used. Does nothing for ``none`` or when a
    group exists already.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'--launcher must be one of {LAUNCHERS}, '
                         f'got {launcher!r}')
    backend = choose_backend(backend)
    if launcher == 'none' or dist.is_initialized():
        return backend
    if launcher == 'slurm':
        os.environ.update(slurm_env(os.environ, port))
    if backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend=backend)
    return backend


def configure_distributed(cfg, launcher: str, backend: str) -> None:
    """Make a toolkit config run with ``launcher`` on this machine."""
    cfg.launcher = launcher
    if launcher == 'none':
        return
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg.backend = backend
    if backend != 'nccl' and cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                     device_ids=None,
                                     broadcast_buffers=False)
