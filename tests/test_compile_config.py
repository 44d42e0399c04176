"""``compile=True`` through ``tools/train.py``: the demo's Mask R-CNN with SN
everywhere beside the same model with BN (slow: minutes of compilation).

mmengine compiles the whole ``train_step`` (optimizer included); the demo's
fused AdamW does not compile under Dynamo with BN either, so these runs use
SGD. Graph breaks inside mmdet are allowed (mmengine compiles without
``fullgraph``); the mmnorm layers themselves compile with ``fullgraph`` in
tests/test_compile.py.
"""
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo',
                    'mask-rcnn_r18-sn_fpn-sn_synthetic-coco.py')


def _config(tmp_path, norm: str, compiled: bool) -> str:
    mode = 'compiled' if compiled else 'eager'
    path = tmp_path / f'mask-rcnn_{norm}_{mode}.py'
    norm_cfg = f"dict(type='{norm}')"
    path.write_text(f'''_base_ = {DEMO!r}
norm = {norm_cfg}
model = dict(
    backbone=dict(norm_cfg=norm), neck=dict(norm_cfg=norm),
    roi_head=dict(bbox_head=dict(norm_cfg=norm),
                  mask_head=dict(norm_cfg=norm)))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.005, momentum=0.9,
                                    weight_decay=1e-4))
param_scheduler = []
train_cfg = dict(max_epochs=1, val_interval=100)
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=100))
compile = {compiled}
''')
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize('norm', ['BN', 'SN'])
def test_compile_true_trains_the_demo_model(tmp_path, norm):
    pytest.importorskip('mmdet')
    from mmnorm.datasets import ensure_synthetic_coco
    data = ensure_synthetic_coco(str(tmp_path / 'coco'), seed=0,
                                 num_train=8, num_val=2)
    ann = os.path.join(data, 'annotations', 'instances_val2017.json')
    options = ['--cfg-options',
               f'train_dataloader.dataset.data_root={data}/',
               f'val_dataloader.dataset.data_root={data}/',
               f'test_dataloader.dataset.data_root={data}/',
               f'val_evaluator.ann_file={ann}',
               f'test_evaluator.ann_file={ann}',
               'train_dataloader.batch_size=2']
    times = {}
    for compiled in (False, True):
        work = str(tmp_path / f'work_{compiled}')
        start = time.time()
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
             _config(tmp_path, norm, compiled), '--work-dir', work,
             *options],
            env=dict(os.environ, OMP_NUM_THREADS='2',
                     PYTHONPATH=ROOT), capture_output=True, text=True,
            timeout=1500, cwd=ROOT)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        if compiled:
            assert 'has been "compiled"' in log
        losses = [float(v) for v in re.findall(r' loss: ([0-9.]+)', log)]
        assert len(losses) == 4 and all(v == v for v in losses), log[-2000:]
        iters = [float(v) for v in re.findall(r' time: ([0-9.]+)', log)]
        times[compiled] = (time.time() - start, iters)
    # for docs/compile.md: wall time of each run and seconds per iteration
    print(f'\n{norm}: eager {times[False][0]:.0f} s {times[False][1]}, '
          f'compiled {times[True][0]:.0f} s {times[True][1]}')
