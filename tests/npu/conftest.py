"""Shared set-up of the torch_npu suite. It runs under `xpupool run` (see
scripts/run-npu-tests.sh), with tests/python's rule: with XPUPOOL_NO_SKIP=1 a
skipped test counts as a failure, so a missing package or server can never pass
silently."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "python_suite_conftest", Path(__file__).parents[1] / "python" / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
pytest_runtest_makereport = _shared.pytest_runtest_makereport
