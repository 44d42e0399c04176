"""pytest plugin of the GPU check: a test that fails only because an
OpenMMLab toolkit (mmcv, mmdet, mmseg, mmaction) is not installed is
reported as skipped, not failed, since the GPU machine has none of them.

Used as ``pytest -p gpu_check_plugin`` with ``tools/`` on ``PYTHONPATH``.
"""
from __future__ import annotations

import pytest

TOOLKITS = ('mmcv', 'mmdet', 'mmseg', 'mmaction')


def _missing_toolkit(excinfo) -> str | None:
    if excinfo is None or not excinfo.errisinstance(ImportError):
        return None
    name = (getattr(excinfo.value, 'name', None) or '').split('.')[0]
    if name in TOOLKITS:
        return name
    text = str(excinfo.value)
    return next((t for t in TOOLKITS if f"'{t}" in text), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    missing = _missing_toolkit(call.excinfo) if report.failed else None
    if missing:
        report.outcome = 'skipped'
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f'gpu_check: needs {missing}')


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.failed and getattr(report, 'longrepr', None) is not None:
        text = str(report.longrepr)
        missing = next((t for t in TOOLKITS
                        if f"No module named '{t}" in text), None)
        if missing:
            report.outcome = 'skipped'
            report.longrepr = (str(collector.path), 0,
                               f'gpu_check: needs {missing}')
