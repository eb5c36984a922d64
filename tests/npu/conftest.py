"""Shared set-up of the Python suite. It runs under `xpupool run` (see
scripts/run-npu-tests.sh); with XPUPOOL_NO_SKIP=1 a skipped test counts as a
failure, so a missing package or server can never pass silently."""

import os

import pytest

LIMIT = int(os.environ.get("XPUPOOL_EXPECT_MEMORY_LIMIT", "0"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("XPUPOOL_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under XPUPOOL_NO_SKIP=1: {report.longrepr}"
