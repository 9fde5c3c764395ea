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


def assert_masks_follow_seed(m, x):
    """A module in training mode draws its masks from torch's generator: the same
    torch.manual_seed gives the same output, the next call other masks, and a call without
    autograd the masks of the same seed. Returns the output of seed 3."""
    import torch

    m.train()
    torch.manual_seed(3)
    y1 = m(x)[0]
    torch.manual_seed(3)
    y2 = m(x)[0]
    y3 = m(x)[0]
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)
    with torch.no_grad():
        torch.manual_seed(3)
        assert torch.equal(m(x)[0], y1)  # training mode without autograd: the same masks
    return y1


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
