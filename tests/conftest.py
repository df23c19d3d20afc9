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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip, saying so, where torch sees no CUDA device (each has a CPU counterpart)."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if gpu:
        import torch
        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("qsft_robot measurements")
        for line in _REPORT:
            terminalreporter.write_line(line)
