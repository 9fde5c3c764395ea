"""Shared by the Python tests.

The PyTorch layer's tests (test_torch*.py, test_ddp.py) need torch. Without it they are skipped
with a reason saying so, except where the environment variable CI is set (to anything but "", 0,
false or no): there a missing torch fails the run (the other tests still run first).
"""

import os

import pytest

TORCH_MISSING = None
try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    TORCH_MISSING = f"torch is missing ({e}); pip install torch to run the PyTorch layer's tests"


def in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_report_header(config):
    if TORCH_MISSING:
        return f"torch: missing{' (CI is set: the run fails)' if in_ci() else ''}"
    import torch

    return f"torch: {torch.__version__}"


def pytest_sessionfinish(session, exitstatus):
    if TORCH_MISSING and in_ci():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TORCH_MISSING and in_ci():
        terminalreporter.write_line(f"ERROR: CI is set and {TORCH_MISSING}: the PyTorch layer was not tested", red=True)
