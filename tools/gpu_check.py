"""The prepared GPU check: CUDA tests and benchmarks, each stage time-boxed.

Run by ``tools/gpu_check.sh OUTDIR`` (which installs the carried wheels
first) on a bare machine with PyTorch, Triton and CUDA and no mmcv or
internet. Stages, in order of what matters most if time runs short:

1. ``env``: versions, the GPU, whether ``import mmnorm`` works;
2. ``build``: build/load mmnorm's compiled library (needed by the
   ``triton`` dispatch path) and report the backend for a CUDA tensor;
3. ``cuda_tests``: ``tests/test_cuda.py`` and the CUDA tests of
   ``tests/test_ops_triton.py`` and ``tests/test_host_syncs.py``;
4. ``bench_layers``: ``benchmark_norms.py --device cuda`` in fp32, fp16
   and bf16;
5. ``bench_network``: the ResNet-50 training step (SN vs GN vs BN);
6. ``bench_whitening``: ``benchmark_whitening.py`` with the same device
   and dtypes, where that script exists;
7. ``cpu_tests``: the pure-PyTorch tests (toolkit-dependent ones are
   reported as skipped: see ``gpu_check_plugin.py``).

Each stage runs under ``timeout`` (``STAGES`` gives the seconds, 460 in
all), so one hang costs only its own stage. Writes ``OUTDIR/report.json``
(per stage: status, seconds, test counts and failures; the benchmark
verdicts), ``OUTDIR/gpu_check.log`` (everything every stage printed) and
the benchmarks' JSON files, and prints a short summary last.

``--cpu-smoke`` runs the same stages on the CPU with tiny shapes, to
prove the script end to end without a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'tools', 'analysis_tools', 'benchmark_norms.py')
#: stage -> seconds (GPU run; 460 s in all, inside the 8-minute budget)
STAGES = dict(env=15, build=90, cuda_tests=150, bench_layers=100,
              bench_network=50, bench_whitening=25, cpu_tests=30)
WHITENING = os.path.join(ROOT, 'tools', 'analysis_tools',
                         'benchmark_whitening.py')
#: files whose tests with 'cuda' in their id need a GPU
CUDA_TESTS = ['tests/test_cuda.py', 'tests/test_ops_triton.py',
              'tests/test_host_syncs.py']
#: pure-PyTorch test files worth running there (CPU tensors, torch 2.11)
CPU_TESTS = ['tests/test_layers_sn.py', 'tests/test_layers_ssn.py',
             'tests/test_ops_sparsestmax.py', 'tests/test_ops_kernel.py',
             'tests/test_host_syncs.py', 'tests/test_engine_optim.py',
             'tests/test_benchmark_tool.py']

ENV_SNIPPET = r'''
import json, platform, sys
info = dict(python=sys.version.split()[0], platform=platform.platform())
import torch
info.update(torch=torch.__version__, cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, sm=f'{p.major}.{p.minor}',
                memory_gib=round(p.total_memory / 2 ** 30, 1))
for name in ('triton', 'mmengine', 'cv2', 'numpy', 'torchvision', 'mmcv'):
    try:
        info[name] = __import__(name).__version__
    except Exception as err:
        info[name] = f'absent ({type(err).__name__})'
import mmnorm
info['mmnorm'] = mmnorm.__version__
print('ENV ' + json.dumps(info))
'''

BUILD_SNIPPET = r'''
import json, time, torch
t0 = time.time()
import mmnorm
from mmnorm import SwitchableNorm
from mmnorm.ops import _kernel
SwitchableNorm(4)  # constructing a layer loads (builds) the library
info = dict(library=_kernel.get() is not None, seconds=time.time() - t0)
try:
    from mmnorm.ops import dispatch
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    info['backend'] = dispatch.backend_for(torch.ones(1, device=device))
    info['triton_available'] = dispatch.triton_available()
except ImportError as err:
    info['backend'] = f'no dispatch ({err})'
print('BUILD ' + json.dumps(info))
'''


def _run_stage(name: str, cmd: list[str], seconds: int, log,
               env: dict) -> dict:
    """Run ``cmd`` under ``timeout``; log everything; return the outcome."""
    log.write(f'\n===== {name} (limit {seconds} s): {" ".join(cmd)}\n')
    log.flush()
    start = time.time()
    proc = subprocess.run(['timeout', '-k', '10', str(seconds), *cmd],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          errors='replace')
    took = time.time() - start
    log.write(proc.stdout)
    status = ('timeout' if proc.returncode in (124, 137)
              else 'ok' if proc.returncode == 0 else 'failed')
    log.write(f'===== {name}: {status} (rc {proc.returncode}) in '
              f'{took:.1f} s\n')
    log.flush()
    print(f'[gpu_check] {name}: {status} in {took:.0f} s', flush=True)
    return dict(status=status, rc=proc.returncode, seconds=round(took, 1),
                output=proc.stdout)


def _junit(path: str) -> dict:
    """Counts and failures of a pytest junit file."""
    if not os.path.exists(path):
        return dict(junit='missing')
    root = ET.parse(path).getroot()
    counts = dict(passed=0, failed=0, skipped=0, errors=0)
    failures = []
    for case in root.iter('testcase'):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find('failure') is not None:
            counts['failed'] += 1
            failures.append(dict(test=name, message=(
                case.find('failure').get('message') or '')[:400]))
        elif case.find('error') is not None:
            counts['errors'] += 1
            failures.append(dict(test=name, message=(
                case.find('error').get('message') or '')[:400]))
        elif case.find('skipped') is not None:
            counts['skipped'] += 1
        else:
            counts['passed'] += 1
    return dict(counts=counts, failures=failures[:40])


def _tagged_json(output: str, tag: str) -> dict:
    for line in output.splitlines():
        if line.startswith(tag + ' '):
            return json.loads(line[len(tag) + 1:])
    return {}


def _bench_summary(path: str) -> dict:
    if not os.path.exists(path):
        return dict(json='missing')
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):  # benchmark_whitening.py: a row list
        return dict(rows=len(data))
    rows = []
    for r in data.get('results', []):
        for key, t in r['targets'].items():
            rows.append(dict(case=f"{r['name']} {r['dtype']} {key}",
                             value=round(t['value'], 3), target=t['target'],
                             passed=t['passed']))
    for r in data.get('network', []):
        for key, t in r['targets'].items():
            rows.append(dict(case=f"resnet50 {r['setting']} {r['dtype']} "
                             f"{key}", value=round(t['value'], 3),
                             target=t['target'], passed=t['passed']))
    return dict(complete=data.get('complete'), judged=data.get('judged'),
                met=data.get('met'), targets=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('outdir')
    parser.add_argument('--cpu-smoke', action='store_true',
                        help='tiny shapes on the CPU: prove the script runs')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter for the stages')
    parser.add_argument('--skip', nargs='*', default=[], choices=STAGES,
                        help='stages to leave out')
    args = parser.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    py = args.python.split()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (ROOT, env.get('PYTHONPATH')) if p)
    env.setdefault('MMNORM_BUILD_DIR', os.path.join(
        tempfile.gettempdir(), 'mmnorm_gpu_check_build'))
    scratch = tempfile.mkdtemp(prefix='mmnorm_gpu_check_')
    plugin = ['-p', 'gpu_check_plugin']
    env['PYTHONPATH'] += os.pathsep + os.path.join(ROOT, 'tools')
    pytest = [*py, '-m', 'pytest', '-q', '-o', 'addopts=',
              '-m', 'not slow', '-p', 'no:cacheprovider', *plugin]
    if args.cpu_smoke:
        device, dtypes, net_dtypes = 'cpu', ['float32'], ['float32']
        layers = ['--shapes', '2x32x4x4', '2x32x2x2x2', '--repeats', '1',
                  '--warmup', '0']
        network = ['--network-settings', '2x32', '--network-repeats', '1',
                   '--warmup', '0']
        whitening = ['--shape', '2', '32', '4', '4', '--repeats', '1']
        cpu_tests = ['tests/test_benchmark_tool.py']
        limits = {k: 4 * v for k, v in STAGES.items()}  # 2 shared cores
    else:
        device, dtypes = 'cuda', ['float32', 'float16', 'bfloat16']
        net_dtypes = ['float32', 'bfloat16']  # bf16: autocast, as --amp
        layers = ['--repeats', '10', '--warmup', '3']
        network = ['--network-repeats', '5', '--warmup', '2']
        whitening = ['--repeats', '10']
        cpu_tests = CPU_TESTS
        if importlib.util.find_spec('xdist') is not None:
            cpu_tests = ['-n', '8', *cpu_tests]  # 16 cores there
        limits = dict(STAGES)
    stages = {
        'env': [*py, '-c', ENV_SNIPPET],
        'build': [*py, '-c', BUILD_SNIPPET],
        'cuda_tests': [*pytest, '--junitxml',
                       os.path.join(scratch, 'cuda_tests.xml'),
                       *[t for t in CUDA_TESTS
                         if os.path.exists(os.path.join(ROOT, t))],
                       '-k', 'cuda'],
        'bench_layers': [*py, BENCH, '--device', device, '--dtype', *dtypes,
                         *layers, '--no-whitening', '--out',
                         os.path.join(args.outdir, 'bench_layers.json')],
        'bench_network': [*py, BENCH, '--device', device, '--dtype',
                          *net_dtypes, '--network-only',
                          '--no-whitening', *network, '--out',
                          os.path.join(args.outdir, 'bench_network.json')],
        'bench_whitening': [*py, WHITENING, '--device', device, '--dtype',
                            *dtypes, *whitening, '--out',
                            os.path.join(args.outdir,
                                         'bench_whitening.json')],
        'cpu_tests': [*pytest, '--continue-on-collection-errors',
                      '-k', 'not cuda',
                      '--junitxml', os.path.join(scratch, 'cpu_tests.xml'),
                      *[t for t in cpu_tests if not t.endswith('.py')
                        or os.path.exists(os.path.join(ROOT, t))]],
    }
    if not os.path.exists(WHITENING):
        del stages['bench_whitening']
    report: dict = dict(mode='cpu-smoke' if args.cpu_smoke else 'gpu',
                        started=time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                              time.gmtime()),
                        limits=limits, stages={})
    log_path = os.path.join(args.outdir, 'gpu_check.log')
    with open(log_path, 'w') as log:
        for name, cmd in stages.items():
            if name in args.skip:
                report['stages'][name] = dict(status='skipped')
                continue
            outcome = _run_stage(name, cmd, limits[name], log, env)
            output = outcome.pop('output')
            if name == 'env':
                outcome['info'] = _tagged_json(output, 'ENV')
            elif name == 'build':
                outcome['info'] = _tagged_json(output, 'BUILD')
            elif name.endswith('_tests'):
                outcome.update(_junit(os.path.join(scratch,
                                                   f'{name}.xml')))
            else:
                outcome.update(_bench_summary(
                    os.path.join(args.outdir, f'{name}.json')))
            report['stages'][name] = outcome
            with open(os.path.join(args.outdir, 'report.json'), 'w') as f:
                json.dump(report, f, indent=2)
    report['finished'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    ok = all(s['status'] in ('ok', 'skipped')
             for s in report['stages'].values())
    report['all_stages_ok'] = ok
    with open(os.path.join(args.outdir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2)
    print(summary(report), flush=True)
    return 0 if ok else 1


def summary(report: dict) -> str:
    """A few lines: each stage, test counts, target verdicts."""
    lines = [f"# mmnorm GPU check ({report['mode']}) "
             f"{report['started']} .. {report.get('finished', '?')}"]
    info = report['stages'].get('env', {}).get('info', {})
    if info:
        lines.append('  ' + ', '.join(
            f'{k} {info[k]}' for k in ('gpu', 'torch', 'cuda', 'triton',
                                       'mmengine', 'python') if k in info))
    for name, stage in report['stages'].items():
        text = f"  {name}: {stage['status']}"
        if 'seconds' in stage:
            text += f" ({stage['seconds']:.0f} s)"
        if 'counts' in stage:
            text += ' ' + ', '.join(f'{k} {v}' for k, v in
                                    stage['counts'].items())
        if 'info' in stage and name == 'build':
            text += f" backend {stage['info'].get('backend')}"
        if 'targets' in stage:
            judged = [t for t in stage['targets'] if t['passed'] is not None]
            text += (f" targets met {sum(t['passed'] for t in judged)}/"
                     f"{len(judged)}")
            missed = [t['case'] for t in judged if not t['passed']]
            if missed:
                text += ' (missed: ' + '; '.join(missed[:6]) + ')'
        lines.append(text)
        for failure in stage.get('failures', [])[:5]:
            lines.append(f"    FAIL {failure['test']}: "
                         f"{failure['message'][:120]}")
    lines.append(f"  all stages ok: {report.get('all_stages_ok')}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
