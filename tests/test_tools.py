"""The train/test tools, run as a user runs them (CPU, gloo)."""
import os
import socket
import subprocess
import sys

import pytest

from mmnorm.engine.launch import (
    choose_backend,
    configure_distributed,
    slurm_env,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
CONFIG = os.path.join(FIXTURES, 'toy_config.py')


def _env(**extra):
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([FIXTURES, ROOT]),
               OMP_NUM_THREADS='1')
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    env.update(extra)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def _run(cmd, **extra):
    result = subprocess.run(cmd, env=_env(**extra), capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + \
        result.stderr[-3000:]
    return result.stdout + result.stderr


def test_choose_backend():
    assert choose_backend('gloo') == 'gloo'
    assert choose_backend() in ('gloo', 'nccl')
    with pytest.raises(ValueError, match='nccl, gloo or mpi'):
        choose_backend('tcp')


def test_slurm_env_maps_srun_variables():
    env = slurm_env(dict(SLURM_PROCID='3', SLURM_NTASKS='16',
                         SLURM_NODELIST='node[1-2]', SLURM_LOCALID='3'),
                    hostname_of=lambda nodes: 'node1')
    assert env == dict(RANK='3', WORLD_SIZE='16', LOCAL_RANK='3',
                       MASTER_ADDR='node1', MASTER_PORT='29500')
    with pytest.raises(RuntimeError, match='SLURM_NTASKS'):
        slurm_env(dict(SLURM_PROCID='0', SLURM_NODELIST='n'))


def test_configure_distributed_cpu_wrapper():
    from mmengine.config import Config
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    configure_distributed(cfg, 'pytorch', 'gloo')
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.broadcast_buffers is False


def test_shell_scripts_build_the_expected_commands():
    out = _run(['bash', os.path.join(TOOLS, 'dist_train.sh'), 'cfg.py', '4',
                '--amp'], PYTHON='echo', NNODES='2', NODE_RANK='1',
               PORT='1234', MASTER_ADDR='10.0.0.1')
    assert ('-m torch.distributed.run --nnodes=2 --node_rank=1 '
            '--master_addr=10.0.0.1 --nproc_per_node=4 --master_port=1234 '
            f'{TOOLS}/train.py cfg.py --launcher pytorch --amp') in out
    out = _run(['bash', os.path.join(TOOLS, 'dist_test.sh'), 'cfg.py',
                'ck.pth', '2', '--out', 'r.pkl'], PYTHON='echo')
    assert (f'{TOOLS}/test.py cfg.py ck.pth --launcher pytorch --out r.pkl'
            in out)
    out = _run(['bash', os.path.join(TOOLS, 'slurm_train.sh'), 'part',
                'job', 'cfg.py', 'wd', '--resume'], SRUN='echo', GPUS='16')
    assert '-p part --job-name=job --gres=gpu:8 --ntasks=16' in out
    assert f'{TOOLS}/train.py cfg.py --work-dir=wd --launcher slurm ' \
        '--resume' in out
    out = _run(['bash', os.path.join(TOOLS, 'slurm_test.sh'), 'part', 'job',
                'cfg.py', 'ck.pth'], SRUN='echo')
    assert f'{TOOLS}/test.py cfg.py ck.pth --launcher slurm' in out


def test_amp_on_cpu_is_refused_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG, '--amp',
         '--work-dir', str(tmp_path)], env=_env(), capture_output=True,
        text=True, timeout=300)
    assert result.returncode != 0 and '--amp needs a GPU' in result.stderr


def test_two_process_cpu_training_resume_and_test(tmp_path):
    import torch
    work = str(tmp_path / 'work')
    log = _run(['bash', os.path.join(TOOLS, 'dist_train.sh'),
                os.path.join(FIXTURES, 'toy_config_dump.py'), '2',
                '--work-dir', work], PORT=_free_port())
    assert 'Distributed training: True' in log
    assert os.path.exists(os.path.join(work, 'epoch_2.pth'))
    ranks = [torch.load(os.path.join(work, f'final_rank{r}.pt'),
                        weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        if name.endswith(('weight', 'bias')):  # parameters (and lambdas)
            assert torch.equal(value, ranks[1][name]), name
    # resume (weights-only safe loading) and train one more epoch
    log = _run([sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG,
                '--work-dir', work, '--resume',
                '--cfg-options', 'train_cfg.max_epochs=3'])
    assert 'resumed epoch: 2' in log
    assert os.path.exists(os.path.join(work, 'epoch_3.pth'))
    # test, single process and 2 processes
    out = str(tmp_path / 'preds.pkl')
    log = _run([sys.executable, os.path.join(TOOLS, 'test.py'), CONFIG,
                os.path.join(work, 'epoch_3.pth'), '--work-dir', work,
                '--out', out])
    assert 'accuracy' in log and os.path.exists(out)
    log = _run(['bash', os.path.join(TOOLS, 'dist_test.sh'), CONFIG,
                os.path.join(work, 'epoch_3.pth'), '2', '--work-dir', work],
               PORT=_free_port())
    assert 'accuracy' in log


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    import torch
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    train = [sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG]
    _run(train + ['--work-dir', straight])
    dying = subprocess.run(
        [sys.executable, os.path.join(TOOLS, 'train.py'),
         os.path.join(FIXTURES, 'toy_config_die.py'), '--work-dir', killed],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert dying.returncode == 17
    assert not os.path.exists(os.path.join(killed, 'epoch_2.pth'))
    _run(train + ['--work-dir', killed, '--resume'])
    a = torch.load(os.path.join(straight, 'epoch_2.pth'))['state_dict']
    b = torch.load(os.path.join(killed, 'epoch_2.pth'))['state_dict']
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    import torch
    work = str(tmp_path / 'work')
    _run([sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG,
          '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1'])
    marker = tmp_path / 'payload_ran'
    evil = os.path.join(work, 'epoch_1.pth')
    checkpoint = torch.load(evil)
    checkpoint['meta']['note'] = _Payload(str(marker))
    torch.save(checkpoint, evil)
    for cmd in ([sys.executable, os.path.join(TOOLS, 'test.py'), CONFIG,
                 evil, '--work-dir', work],
                [sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG,
                 '--work-dir', work, '--resume', evil, '--cfg-options',
                 'train_cfg.max_epochs=2']):
        result = subprocess.run(cmd, env=_env(), capture_output=True,
                                text=True, timeout=600, cwd=ROOT)
        assert result.returncode != 0
        assert 'refused to load' in result.stderr
        assert 'system' in result.stderr  # names the offending global
        assert not marker.exists()


def test_collapse_norms_tool_reports_each_fixed_layer(tmp_path):
    import json
    work = str(tmp_path / 'work')
    _run([sys.executable, os.path.join(TOOLS, 'train.py'), CONFIG,
          '--work-dir', work])
    report = str(tmp_path / 'report.json')
    out = _run([sys.executable,
                os.path.join(TOOLS, 'deployment', 'collapse_norms.py'),
                CONFIG, os.path.join(work, 'epoch_2.pth'), '--harden-sn',
                '--report', report, '--out', str(tmp_path / 'c.pth')])
    rows = {r['name']: r for r in json.load(open(report))}
    # radius reached 7/8 > sqrt(2/3): the SSN layer froze during training
    assert rows['norm2']['source'] == 'SSN (fixed)'
    assert rows['norm2']['max_abs_diff'] < 1e-4
    assert rows['norm1']['source'] == 'SN (hardened)'
    assert '| norm2 |' in out


def test_real_mmdet_mask_rcnn_config_trains_and_tests_on_synthetic_coco(
        tmp_path):
    from mmnorm.datasets import ensure_synthetic_coco
    data = ensure_synthetic_coco(str(tmp_path / 'coco'), seed=0,
                                 num_train=4, num_val=2)
    config = os.path.join(ROOT, 'configs', 'demo',
                          'mask-rcnn_r18-sn_fpn-sn_synthetic-coco.py')
    ann = os.path.join(data, 'annotations', 'instances_val2017.json')
    options = ['--cfg-options',
               f'train_dataloader.dataset.data_root={data}/',
               f'val_dataloader.dataset.data_root={data}/',
               f'test_dataloader.dataset.data_root={data}/',
               f'val_evaluator.ann_file={ann}',
               f'test_evaluator.ann_file={ann}',
               'train_cfg.max_epochs=1', 'train_cfg.val_interval=1']
    work = str(tmp_path / 'work')
    log = _run([sys.executable, os.path.join(TOOLS, 'train.py'), config,
                '--work-dir', work, *options])
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    out = str(tmp_path / 'preds.pkl')
    log = _run([sys.executable, os.path.join(TOOLS, 'test.py'), config,
                os.path.join(work, 'epoch_1.pth'), '--work-dir', work,
                '--out', out, *options])
    assert 'coco/segm_mAP' in log and os.path.exists(out)
