"""Build (once) and load mmnorm's CPU row kernels, ``mmnorm/ops/csrc``.

The kernels are compiled just in time, on the first normalization that
needs them, with the C++ compiler against the headers of the torch that is
running (no ninja, no pybind: the library registers plain ``torch.ops``
operators). The shared library is cached in ``build/mmnorm_ops/`` of the
repository (git-ignored; ``~/.cache/mmnorm/ops`` when mmnorm is not an
editable checkout, or ``$MMNORM_BUILD_DIR``) under a name that hashes the
source, the compiler flags and the torch build, so a change of any of them
rebuilds it and a stale library is never loaded. Concurrent processes
(e.g. distributed training) wait on a file lock while one of them builds.
``tools/setup_env.sh`` builds it too, so a set-up machine never compiles at
run time.

Without a working compiler (or with ``MMNORM_NO_KERNEL=1``) :func:`get`
returns ``None`` and mmnorm falls back to its composed PyTorch path, with
one warning per process.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import warnings
from typing import Any, Optional

import torch
from torch.utils import cpp_extension

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
_SOURCES = [os.path.join(_CSRC, name)
            for name in ('moment_norm.cpp', 'sparsestmax.cpp')]
#: hashed with the sources: a change rebuilds the library
_HEADERS = [os.path.join(_CSRC, 'once_differentiable.h')]
_LIB_PREFIX = 'mmnorm_ops_'

#: Set to False (or the environment variable ``MMNORM_NO_KERNEL=1``) to
#: use the composed PyTorch path; tests switch it per test.
ENABLED = os.environ.get('MMNORM_NO_KERNEL', '') in ('', '0')

_lock = threading.Lock()
_state: dict[str, Any] = {}


def build_dir() -> str:
    """Where the compiled library is cached."""
    configured = os.environ.get('MMNORM_BUILD_DIR')
    if configured:
        return os.path.abspath(configured)
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkout = os.path.dirname(package_dir)
    if (os.path.isfile(os.path.join(checkout, 'setup.py'))
            and os.access(checkout, os.W_OK)):
        return os.path.join(checkout, 'build', 'mmnorm_ops')
    return os.path.join(os.path.expanduser('~'), '.cache', 'mmnorm', 'ops')


def _compile_flags() -> list[str]:
    # The vectorized paths of at::vec need the instruction set chosen at
    # compile time; AVX2 is enough for these memory-bound loops.
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ('AVX2', 'AVX512'):
        isa = ['-mavx2', '-mfma', '-DCPU_CAPABILITY=AVX2',
               '-DCPU_CAPABILITY_AVX2']
    else:
        isa = ['-DCPU_CAPABILITY=DEFAULT']
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # -fno-math-errno (as torch's own build) lets sqrt vectorize.
    return ['-O3', '-std=c++20', '-shared', '-fPIC', '-fopenmp', '-w',
            '-fno-math-errno', '-fno-trapping-math',
            f'-D_GLIBCXX_USE_CXX11_ABI={abi}', *isa]


def _library_path(source: bytes, flags: list[str]) -> str:
    key = hashlib.sha256()
    for part in (source, ' '.join(flags).encode(), torch.__version__.encode(),
                 str(torch.version.git_version).encode()):
        key.update(part)
        key.update(b'\0')
    return os.path.join(build_dir(),
                        f'{_LIB_PREFIX}{key.hexdigest()[:16]}.so')


def _compiler() -> Optional[str]:
    for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(library: str, flags: list[str]) -> None:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError('no C++ compiler found (set CXX or install g++)')
    os.makedirs(os.path.dirname(library), exist_ok=True)
    torch_libs = cpp_extension.library_paths()
    command = [compiler, *_SOURCES, *flags]
    command += [f'-I{path}' for path in cpp_extension.include_paths()]
    command += [f'-L{path}' for path in torch_libs]
    command += [f'-Wl,-rpath,{path}' for path in torch_libs]
    partial = f'{library}.{os.getpid()}.partial'
    command += ['-ltorch', '-ltorch_cpu', '-lc10', '-o', partial]
    sys.stderr.write(f'mmnorm: compiling its CPU kernel once into '
                     f'{os.path.dirname(library)} (about a minute)\n')
    done = subprocess.run(command, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        if os.path.exists(partial):
            os.remove(partial)
        log = library[:-len('.so')] + '.log'
        with open(log, 'w') as f:
            f.write(' '.join(command) + '\n\n' + done.stdout)
        raise RuntimeError(f'{os.path.basename(compiler)} failed, see {log}')
    os.replace(partial, library)


def _build_locked(library: str, flags: list[str]) -> None:
    """Build ``library`` unless another process did so meanwhile, or a
    build of this very source already failed (not retried by every
    process; delete the log to retry)."""
    log = library[:-len('.so')] + '.log'
    if os.path.isfile(log):
        raise RuntimeError(f'an earlier build failed, see {log} (delete '
                           f'it to try again)')
    os.makedirs(os.path.dirname(library), exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename must do
        fcntl = None
    with open(os.path.join(os.path.dirname(library), '.lock'), 'a') as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(library) and not os.path.isfile(log):
            _build(library, flags)
    if not os.path.isfile(library):
        raise RuntimeError(f'the build failed, see {log}')


def _load() -> Any:
    source = b''
    for path in (*_SOURCES, *_HEADERS):
        with open(path, 'rb') as f:
            source += f.read() + b'\0'

    flags = _compile_flags()
    library = _library_path(source, flags)
    if not os.path.isfile(library):
        _build_locked(library, flags)
    torch.ops.load_library(library)
    from . import library as registrations
    registrations.register()  # fakes and CUDA kernels of the ops
    return torch.ops.mmnorm


def load(strict: bool = False) -> Any:
    """Build if needed and load the kernels; ``torch.ops.mmnorm`` or None.

    Args:
        strict: raise the build error instead of warning and returning
            ``None`` (used by ``tools/setup_env.sh``).
    """
    with _lock:
        if 'ops' not in _state:
            try:
                _state['ops'] = _load()
            except Exception as error:  # any failure falls back
                _state['ops'] = None
                if strict:
                    raise
                warnings.warn(
                    f'mmnorm: could not build or load its CPU kernel '
                    f'({error}); normalization layers use the slower '
                    f'composed PyTorch path.', RuntimeWarning, stacklevel=3)
        return _state['ops']


def get() -> Any:
    """The loaded kernels, or ``None`` when disabled or unavailable."""
    if not ENABLED:
        return None
    ops = _state.get('ops', _state)
    if ops is _state:
        ops = load()
    return ops
