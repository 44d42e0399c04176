"""mmnorm.ops.triton_rows: the Triton row kernels for CUDA tensors.

Without a GPU (the default suite): every kernel runs under the Triton
interpreter on CPU tensors against a float64 reference
(``triton_checks/interpret_check.py``, in a subprocess because
``TRITON_INTERPRET`` is read when the kernels are defined), and every
kernel compiles to PTX and a cubin for sm_80 and sm_90
(``triton_checks/compile_check.py``, in a subprocess without it). With a
GPU the same cases run on CUDA tensors here. Skipped without Triton.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip('triton')

from triton_checks import cases  # noqa: E402

from mmnorm.ops import triton_rows  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU')


def _run(script, args=(), interpret=False):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               TRITON_DEFAULT_FP_FUSION='1',
               PYTHONPATH=os.pathsep.join(
                   [ROOT, os.environ.get('PYTHONPATH', '')]))
    env.pop('TRITON_INTERPRET', None)
    if interpret:
        env['TRITON_INTERPRET'] = '1'
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, 'triton_checks', script),
         *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert lines, f'{script} printed nothing:\n{proc.stderr[-4000:]}'
    return proc.returncode, json.loads(lines[-1]), proc.stderr


@pytest.fixture(scope='module')
def interpreted():
    return _run('interpret_check.py', interpret=True)


GROUPS = ([f'correctness/{d}' for d in cases.DTYPES]
          + ['looping_grid_int64', 'empty', 'errors', 'no_host_syncs',
             'precision/300', 'precision/10000'])


def test_is_available():
    assert triton_rows.is_available()


@pytest.mark.parametrize('group', GROUPS)
def test_interpreter(interpreted, group):
    """Each group of cases under the interpreter, against float64."""
    returncode, result, stderr = interpreted
    assert group in result['groups'], stderr[-4000:]
    assert result['groups'][group] == []


def test_interpreter_process(interpreted):
    """No other failure and a clean exit."""
    returncode, result, stderr = interpreted
    failures = {k: v for k, v in result['groups'].items() if v}
    assert returncode == 0 and not failures, (failures, stderr[-4000:])


@pytest.mark.parametrize('arch', [80, 90])
def test_compiles_for_gpu_targets(arch):
    """Every kernel and dtype specialization compiles to PTX and a cubin
    (Triton's LLVM and ptxas, no GPU needed): interpreter-only code would
    fail here."""
    returncode, result, stderr = _run('compile_check.py', [str(arch)])
    failed = [r for r in result['results'] if not r['ok']]
    assert returncode == 0 and not failed, failed
    kernels = {r['kernel'].split('[')[0] for r in result['results']}
    assert kernels == {'_moments_kernel', '_combine_moments_kernel',
                       '_grad_sums_kernel', '_affine_kernel',
                       '_grad_input_kernel'}


def test_int64_rule():
    """Offsets switch to int64 when a view spans or holds more than 2**31
    elements (checked on expanded views: no memory)."""
    small = torch.zeros(1, 1, 1)
    assert not triton_rows._needs_int64([small.expand(4, 1000, 1000)])
    assert triton_rows._needs_int64([small.expand(2**16, 2**8, 2**8)])
    wide = torch.empty_strided((2, 3, 2), (2**31, 1, 1), device='meta')
    assert triton_rows._needs_int64([wide])
    assert not triton_rows._needs_int64([wide[:1]])


def test_split_rule():
    """Long rows with few rows are split over programs; enough rows keep
    one program per row tile."""
    chunk, split = triton_rows._split(1, 1_000_000, 4096, target=528)
    assert split > 100 and (split - 1) * chunk < 1_000_000 <= split * chunk
    assert triton_rows._split(1000, 1_000_000, 4096, target=528)[1] == 1
    assert triton_rows._split(1, 4096, 4096, target=528) == (4096, 1)


# The same cases on CUDA tensors (the GPU check runs these).

@needs_cuda
def test_cuda_correctness():
    assert cases.correctness('cuda') == []


@needs_cuda
@pytest.mark.parametrize('ratio', [300.0, 1e4])
def test_cuda_precision(ratio):
    from mmnorm.ops import _kernel
    errors, report = cases.precision('cuda', _kernel.load(), ratio)
    assert errors == [], report


@needs_cuda
def test_cuda_empty_errors_and_syncs():
    assert cases.empty('cuda') == []
    assert cases.errors_raised('cuda') == []
    assert cases.no_host_syncs('cuda') == []


@needs_cuda
def test_cuda_large_rows_and_grids():
    """Shapes of real networks: FPN P2 rows, many short rows, 1x1 maps."""
    errors = []
    for shape in ((2, 256, 200 * 336), (2, 2, 1_000_000),
                  (64, 4096, 49), (512, 2048, 1)):
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(*shape, device='cuda', dtype=dtype)
            dy = torch.randn(*shape, device='cuda', dtype=dtype)
            errors += cases.check_all_passes(x, dy, f'{shape}/{dtype}')
    assert errors == []


@needs_cuda
@pytest.mark.slow
def test_cuda_beyond_int32():
    """More than 2**31 elements (float16, about 4.3 GB a tensor)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip('needs 24 GiB of free GPU memory')
    assert cases.beyond_int32('cuda') == []
