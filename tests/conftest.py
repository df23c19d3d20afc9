"""Shared fixtures: offline hub, a `report` fixture whose lines land in the pytest summary."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
if "QSFT_ROBOT_CACHE" not in os.environ:  # the frozen-tower feature cache: one fresh folder per test session
    import tempfile
    os.environ["QSFT_ROBOT_CACHE"] = tempfile.mkdtemp(prefix="qsft_robot_cache_")

import pytest  # noqa: E402

_REPORT: list[str] = []


@pytest.fixture
def report():
    """Numbers a test measured, printed at the end of the run (the notes quote them)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("qsft_robot measurements")
        for line in _REPORT:
            terminalreporter.write_line(line)
