"""mmaction2 1.2.0 imports through mmnorm's entry point."""
import subprocess
import sys

import pytest

pytest.importorskip('mmcv.ops')


def _run(code: str) -> str:
    return subprocess.run([sys.executable, '-c', code], check=True,
                          capture_output=True, text=True).stdout


def test_plain_import_of_mmaction_models_is_broken_upstream():
    result = subprocess.run(
        [sys.executable, '-c', 'import mmaction.models'],
        capture_output=True, text=True)
    # If this starts passing, upstream fixed the package: drop the shim.
    assert result.returncode != 0
    assert 'drn' in result.stderr or 'importlib_metadata' in result.stderr


def test_entry_point_makes_mmaction_importable_and_explains_drn():
    out = _run(
        'import mmnorm.mmaction\n'
        'from mmaction.models import Recognizer3D, ResNet3d\n'
        'from mmaction.models.localizers import DRN\n'
        'try:\n'
        '    DRN()\n'
        'except ImportError as e:\n'
        '    print(e)\n')
    assert 'DRN is not available' in out and '2714' in out


def test_make_importable_reports_what_it_fixed():
    out = _run('from mmnorm.compat.mmaction import make_importable\n'
               'print(make_importable()); print(make_importable())')
    first, second = out.strip().splitlines()
    assert 'drn' in first and second == '[]'
